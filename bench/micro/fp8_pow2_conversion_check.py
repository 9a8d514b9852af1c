#!/usr/bin/env python3
"""CPU check of kernels/fp8.cuh's fp8_pair_to_bf16x2_pow2 and its four prmt selectors (fp8x4_to_bf16x4_pow2,
fp8x4_to_bf16x4_interleaved_pow2): for every pair of e4m3 codes in every byte position, the bf16 halves the
prmt / shift / mask sequence produces must equal code * 2^-120 exactly, sign of zero included. PTX's prmt in its
default mode: a selector nibble's low 3 bits pick one of the 8 bytes of {b, a}, its high bit replicates that byte's
sign over the result byte (PTX ISA, "prmt"). Session 17's first draft had two selectors wrong; this caught them.
Run: python3 bench/micro/fp8_pow2_conversion_check.py (exit 0: all exact)."""
import math
import struct
import sys

# (selector, which bytes of the word land in the low and high half) as kernels/fp8.cuh uses them
SELECTORS = [(0x9180, (0, 1)), (0xB3A2, (2, 3)), (0xA280, (0, 2)), (0xB391, (1, 3))]


def prmt(a: int, b: int, sel: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    r = 0
    for i in range(4):
        n = (sel >> (4 * i)) & 0xF
        byte = src[n & 7]
        if n & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        r |= byte << (8 * i)
    return r


def bf16(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def e4m3(c: int):
    sign = -1.0 if c & 0x80 else 1.0
    e, m = (c >> 3) & 15, c & 7
    if e == 15 and m == 7:
        return None  # NaN: the cache never holds it
    return sign * ((8 + m) * 2.0 ** (e - 10) if e else m * 2.0 ** -9)


def main() -> int:
    bad = checked = 0
    for c0 in range(256):
        for c1 in range(256):
            word = c0 | (c1 << 8) | ((c0 ^ 0x5A) << 16) | ((c1 ^ 0xA5) << 24)
            codes = [(word >> (8 * i)) & 0xFF for i in range(4)]
            for sel, (lo, hi) in SELECTORS:
                w = ((prmt(word, 0, sel) << 4) & 0xFFFFFFFF) & 0x87F087F0
                for half, k in ((w & 0xFFFF, lo), (w >> 16, hi)):
                    ref = e4m3(codes[k])
                    if ref is None:
                        continue
                    got = bf16(half) * 2.0 ** 120
                    checked += 1
                    if got != ref or math.copysign(1, got) != math.copysign(1, ref):
                        bad += 1
                        if bad <= 5:
                            print(f"selector {sel:#06x} byte {k} code {codes[k]:#04x}: {got} != {ref}")
    print(f"{checked} conversions checked, {bad} wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

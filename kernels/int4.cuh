// INT4 weight helpers (AWQ checkpoints and --quantize int4): 4-bit codes q in 0..15 with, per output row and group of
// G inputs, an fp16 scale s and a zero point z in 0..15; w = (q - z) * s, as AutoAWQ defines it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// ---- the int4 code layout -------------------------------------------------------------------------------------------
// Like the fp8 layout (fp8.cuh), codes are stored in the tensor-core GEMV's fragment order so that a warp's 16-row
// tile is one contiguous stream of 512-byte loads (gemv_int4.cu). For each 16-row tile and 64-k chunk, 512 bytes:
// lane (g, t4) = 4 * (row % 8) + (k % 64) / 16 owns 16 bytes at lane * 16, holding k 16·t4 .. 16·t4 + 15 of rows
// g and g + 8 as four 32-bit words. Word 2·h + e / 8 (h = (row % 16) / 8, e = k % 16) holds elements e and e + 1 of
// its row in the nibbles at bits 4·((e % 8) / 2) and 16 + 4·((e % 8) / 2): one shift and one LOP3 then put a pair
// of consecutive k in the low halves of a bf16x2, which is what the mma's A fragment wants.
//   byte offset of the word: tile · 8k + chunk · 512 + lane · 16 + word · 4
// k must be a multiple of 64; rows of the last tile past n are padding.
__device__ __host__ __forceinline__ size_t int4_word_offset(int row, int kk, int k) {
    const int tile = row >> 4, r = row & 15, chunk = kk >> 6, w = kk & 63, e = w & 15;
    const int lane = (r & 7) * 4 + (w >> 4), word = 2 * (r >> 3) + (e >> 3);
    return (size_t)tile * 8 * (size_t)k + (size_t)chunk * 512 + lane * 16 + word * 4;
}
// Bit position of element kk inside its word.
__device__ __host__ __forceinline__ int int4_bit(int kk) {
    const int e = kk & 15;
    return 4 * ((e & 7) >> 1) + 16 * (e & 1);
}

// ---- scales and zero points -----------------------------------------------------------------------------------------
// One 32-bit word per (group, row), group-major ([groups, rows padded to 16]) so a tile's 16 rows of one group are 64
// contiguous bytes: the fp16 scale in the low half, and in the high half the bf16 bits of -(128 + z) (exact: bf16 holds
// 128..143). The GEMV makes (128 + q) from a nibble with one LOP3 and adds -(128 + z) to it with one bf16x2 add, which
// gives (q - z) exactly.
__device__ __host__ __forceinline__ uint32_t int4_pack_scale_zero(uint16_t scale_fp16_bits, int zero) {
    // bf16 of -(128 + z): sign 1, exponent 127 + 7, mantissa z << 3 (7 mantissa bits, ulp 1 at 128)
    return (uint32_t)scale_fp16_bits | ((uint32_t)(0xC300 | zero) << 16);
}
__device__ __forceinline__ int int4_zero(uint32_t sz) { return (int)((sz >> 16) & 0xFu); }

// The bf16x2 pair (-(128 + z), -(128 + z)).
__device__ __forceinline__ uint32_t int4_neg_zero_pair(uint32_t sz) { return __byte_perm(sz, 0, 0x3232); }
__device__ __forceinline__ float int4_scale(uint32_t sz) {
    return __half2float(__ushort_as_half((unsigned short)(sz & 0xFFFFu)));
}

// Word of 8 codes -> 4 bf16x2 pairs (128 + q) (exact): pair p holds the nibbles at bits 4p and 16 + 4p.
// (v >> 4p) & 0x000F000F | 0x43004300 is one LOP3 (lut 0xEA = (a & b) | c), but a LOP3 takes one immediate: written in
// C, ptxas emitted an AND and then an OR for every pair (34 LOP3 a 64-k chunk in the 1..8-row GEMV, whose ALU pipe ncu
// found 65% busy: session 20). Written as one lop3 with the bias in a register, it stays one instruction.
__device__ __forceinline__ void int4x8_to_bf16x8_biased(uint32_t v, uint32_t (&out)[4]) {
    const uint32_t bias = 0x43004300u;
#pragma unroll
    for (int p = 0; p < 4; ++p)
        asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out[p]) : "r"(v >> (4 * p)), "n"(0x000F000F), "r"(bias));
}

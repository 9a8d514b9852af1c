#!/usr/bin/env python3
# The error an e4m3 KV cache costs one attention over random K and V, whatever the kernel: why the fp8 KV cache's
# full-width fidelity test (Fp8KvCacheGpuTests.FullWidthLogitsStayNearTheBf16KvRun) cannot hold random weights to 3e-2.
# Each K and V row is quantized as kernels/rope.cu does (scale = amax / 448, round to nearest e4m3, subnormals below
# 2^-6 included), one query attends over n keys at a given score spread, and the output is compared with the exact one.
# Plain python3 (no numpy); about a minute. Session 8 printed:
#   score std 0.5: K+V 0.032  K only 0.014  V only 0.028
#   score std 1: K+V 0.042  K only 0.033  V only 0.029
#   score std 2: K+V 0.048  K only 0.037  V only 0.027
# V alone costs ~2.8% at any spread: random values do not average e4m3's rounding (3 mantissa bits) away, and per-row
# scaling cannot help, since a value's relative rounding error does not depend on its scale in e4m3's normal range.
import math
import random


def e4m3_row(x):
    s = max(abs(a) for a in x) / 448.0
    out = []
    for a in x:
        y = a / s
        if abs(y) < 2**-6:  # subnormals: steps of 2^-9
            r = round(y * 2**9) / 2**9
        else:
            m, e = math.frexp(y)  # y = m 2^e, 0.5 <= |m| < 1: 4 significant bits are 1 implicit + 3 stored
            r = math.ldexp(round(m * 16) / 16, e)
        out.append(r * s)
    return out


def attend(q, keys, values):
    s = [sum(a * b for a, b in zip(q, k)) for k in keys]
    top = max(s)
    p = [math.exp(x - top) for x in s]
    z = sum(p)
    return [sum(p[j] * values[j][i] for j in range(len(keys))) / z for i in range(len(q))]


def rel(o, r):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(o, r))) / math.sqrt(sum(b * b for b in r))


def main(d=128, n=512, trials=3):
    random.seed(0)
    for spread in [0.5, 1, 2]:
        both = k_only = v_only = 0.0
        for _ in range(trials):
            q = [random.gauss(0, 1) * spread / math.sqrt(d) for _ in range(d)]  # scores ~ N(0, spread^2)
            keys = [[random.gauss(0, 1) for _ in range(d)] for _ in range(n)]
            values = [[random.gauss(0, 1) for _ in range(d)] for _ in range(n)]
            kq = [e4m3_row(k) for k in keys]
            vq = [e4m3_row(v) for v in values]
            exact = attend(q, keys, values)
            both += rel(attend(q, kq, vq), exact) / trials
            k_only += rel(attend(q, kq, values), exact) / trials
            v_only += rel(attend(q, keys, vq), exact) / trials
        print(f"score std {spread}: K+V {both:.3f}  K only {k_only:.3f}  V only {v_only:.3f}", flush=True)


if __name__ == "__main__":
    main()

// A candidate for the 1..8-row int4 GEMV (kernels/gemv_int4.cu, gemv_int4_tile_body), included by int4_gemv.cu after
// the engine's kernel: the same plan (a block of 8 warps per 16-row tile, 4-chunk batches in turn, group 128) with the
// weights turned into f16 instead of bf16 and x read as f16, so that a nibble needs no shift of its own.
//
// Why (bench/NOTES.md, sessions 20-21): the engine's kernel is bound by its integer instructions (ALU the busiest pipe,
// ~61%). Per 32-bit word of 8 codes it runs 3 shifts and 4 LOP3 (pair p = the nibbles at bits 4p and 16 + 4p, moved to
// bits 0 and 16 and OR-ed with bf16's 128.0): bf16 has 7 mantissa bits, so a nibble must sit in bits 0-3. f16 has 10:
// a nibble at bits 4-7 is still inside the mantissa, so (FasterTransformer's and Marlin's trick)
//   LOP3(v,      0x000F000F, 0x64006400) = f16x2 (1024 + q0, 1024 + q1)        pair 0
//   LOP3(v,      0x00F000F0, 0x64006400) = f16x2 (1024 + 16 q2, 1024 + 16 q3)  pair 1
//   LOP3(v >> 8, 0x000F000F, 0x64006400), LOP3(v >> 8, 0x00F000F0, ...)       pairs 2 and 3
// one shift a word instead of three (-8 ALU instructions of the ~49 a warp-chunk ran in session 20's count), and the
// zero point goes with one f16x2 op a pair as before: HADD2 with -(1024 + z) for pairs 0 and 2, HFMA2 by 1/16 with
// -(64 + z) for pairs 1 and 3 (both exact: the results are the integers q - z).
// What it costs the engine: x in f16. Here x is converted once outside the timing (values in [-2, 2), exact in f16), so
// this measures the kernel alone; the engine would need its producers (the norm, the attention, SiLU·mul) to write an
// f16 copy (with a per-row power-of-two scale where |x| can pass f16's range) or a conversion launch per product
// (~2 us each, 256 a step: more than the gain), so it is worth building only if the kernel gains clearly.
// Checked like every candidate against the engine's kernel (harness.cuh, 1e-4 relative).
#pragma once
#include <cuda_fp16.h>

namespace int4f16 {

// Word of 8 codes -> 4 f16x2 pairs: pairs 0 and 2 (1024 + q), pairs 1 and 3 (1024 + 16 q); one shift a word.
__device__ __forceinline__ void int4x8_to_f16x8_biased(uint32_t v, uint32_t (&out)[4]) {
    const uint32_t bias = 0x64006400u, v8 = v >> 8;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out[0]) : "r"(v), "n"(0x000F000F), "r"(bias));
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out[1]) : "r"(v), "n"(0x00F000F0), "r"(bias));
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out[2]) : "r"(v8), "n"(0x000F000F), "r"(bias));
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out[3]) : "r"(v8), "n"(0x00F000F0), "r"(bias));
}

// The zero point's two f16x2 constants for a row (z from the packed scale word, int4.cuh): -(1024 + z) (sign 1,
// exponent 15 + 10, mantissa z: ulp 1 at 1024) and -(64 + z) (exponent 15 + 6, mantissa z << 4: ulp 1/16 at 64).
struct Zero { uint32_t lo, hi; };
__device__ __forceinline__ Zero zero_pairs(uint32_t sz) {
    const uint32_t z = (uint32_t)int4_zero(sz);
    return Zero{0xE400E400u | (z * 0x00010001u), 0xD400D400u | ((z << 4) * 0x00010001u)};
}

__device__ __forceinline__ uint32_t hadd2_u(uint32_t a, uint32_t b) {
    __half2 r = __hadd2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t hfma2_u(uint32_t a, uint32_t b, uint32_t c) {
    __half2 r = __hfma2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b),
                        *reinterpret_cast<const __half2*>(&c));
    return *reinterpret_cast<uint32_t*>(&r);
}

// (q - z) for the 4 words' 16 pairs: words 0, 1 row g (za), words 2, 3 row g + 8 (zb).
__device__ __forceinline__ void subtract_zero(uint32_t (&a)[4][4], Zero za, Zero zb) {
    const uint32_t sixteenth = 0x2C002C00u;  // f16x2 (1/16, 1/16)
#pragma unroll
    for (int wd = 0; wd < 4; ++wd) {
        const Zero z = wd < 2 ? za : zb;
        a[wd][0] = hadd2_u(a[wd][0], z.lo);
        a[wd][1] = hfma2_u(a[wd][1], sixteenth, z.hi);
        a[wd][2] = hadd2_u(a[wd][2], z.lo);
        a[wd][3] = hfma2_u(a[wd][3], sixteenth, z.hi);
    }
}

// gemv_int4_tile_body with the f16 conversion; xh: f16 [m, k] (the same layout as the engine's bf16 x).
template <int CPG>
__device__ __forceinline__ void tile_body(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,
                                          const __half* __restrict__ xh, float* __restrict__ y, float* __restrict__ part,
                                          int* __restrict__ tickets, int n, int k, int m) {
    constexpr int U = kTileUnroll;
    static_assert(U % CPG == 0, "a batch of chunks holds whole groups");
    __shared__ float red[kTileWarps][128];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x, splits = gridDim.y;
    const int row0 = tile * 16, n_pad = (n + 15) & ~15;
    const uint8_t* wl = w + (size_t)tile * 8 * k + lane * 16;
    const uint32_t* sza = sz + row0 + g;
    const bool xok = g < m;
    const uint16_t* xg = reinterpret_cast<const uint16_t*>(xh) + (size_t)(xok ? g : 0) * k + 16 * t4;
    const int groups = k / (64 * CPG);
    const int c_begin = (int)((long)groups * blockIdx.y / splits) * CPG, c_end = (int)((long)groups * (blockIdx.y + 1) / splits) * CPG;
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (c_begin + warp * U + u < c_end) prefetch_l2(wl + (size_t)(c_begin + warp * U + u) * 512);
    if (c_begin + warp * U < c_end && t4 == 0) prefetch_l2(sza + (size_t)((c_begin + warp * U) / CPG) * n_pad);
    kernel_entry_barrier();

    float acc[2][4], c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[h][e] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // sa, sb and the zero constants: with a group's first chunk only (the constants once a group, not once a chunk)
    struct Chunk { uint4 q; uint32_t sa, sb; Zero za, zb; };
    auto load = [&](int ch, Chunk& v, bool group_start) {
        v.q = ld_stream_u4(wl + (size_t)ch * 512);
        if (group_start) {
            const uint32_t* s = sza + (size_t)(ch / CPG) * n_pad;
            v.sa = __ldg(s);
            v.sb = __ldg(s + 8);
        }
    };
    auto math = [&](const Chunk& v, const Chunk& gs, int ch, bool group_end) {
        uint32_t a[4][4];
        int4x8_to_f16x8_biased(v.q.x, a[0]);
        int4x8_to_f16x8_biased(v.q.y, a[1]);
        int4x8_to_f16x8_biased(v.q.z, a[2]);
        int4x8_to_f16x8_biased(v.q.w, a[3]);
        subtract_zero(a, gs.za, gs.zb);
        const size_t off = (size_t)ch * 64;
        const uint4 xv[2] = {xok ? ld_ro_u4(xg + off) : zero, xok ? ld_ro_u4(xg + off + 8) : zero};
#pragma unroll
        for (int st = 0; st < 4; ++st) {
            const int h = st >> 1, p = (st & 1) * 2;
            const uint32_t aq[4] = {a[h][p], a[2 + h][p], a[h][p + 1], a[2 + h][p + 1]};
            const uint4& X = xv[h];
            mma::mma_f16_16816(acc[st & 1], aq, (st & 1) ? X.z : X.x, (st & 1) ? X.w : X.y);
        }
        if (group_end) {
            const float sa = int4_scale(gs.sa), sb = int4_scale(gs.sb);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                c[e] = fmaf(e < 2 ? sa : sb, acc[0][e] + acc[1][e], c[e]);
                acc[0][e] = acc[1][e] = 0.f;
            }
        }
    };
    int b = c_begin + warp * U;
    for (; b + U <= c_end; b += kTileWarps * U) {
        Chunk v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) load(b + u, v[u], u % CPG == 0);
#pragma unroll
        for (int u = 0; u < U; u += CPG) { v[u].za = zero_pairs(v[u].sa); v[u].zb = zero_pairs(v[u].sb); }
#pragma unroll
        for (int u = 0; u < U; ++u) math(v[u], v[u - u % CPG], b + u, u % CPG == CPG - 1);
    }
    for (; b < c_end; b += CPG) {
        Chunk v[CPG];
#pragma unroll
        for (int u = 0; u < CPG; ++u) load(b + u, v[u], u == 0);
        v[0].za = zero_pairs(v[0].sa);
        v[0].zb = zero_pairs(v[0].sb);
#pragma unroll
        for (int u = 0; u < CPG; ++u) math(v[u], v[0], b + u, u == CPG - 1);
    }

#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][e * 32 + lane] = c[e];
    __syncthreads();
    if (warp != 0) return;
    float cc[1][4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        float s = 0.f;
#pragma unroll
        for (int q = 0; q < kTileWarps; ++q) s += red[q][e * 32 + lane];
        cc[0][e] = s;
    }
    if (!mma::combine_splits<1>(cc, part, tickets, tile, blockIdx.y, splits, lane)) return;
    mma::store_tile<1>(cc, y, nullptr, row0, lane, n, m, 0);
}

}  // namespace int4f16

// The candidate's entry, as the micro's Fn type takes it (x passed as the f16 copy, typed as bf16 to share the type).
__global__ void __launch_bounds__(kTileWarps * 32, 3) f16x_k(const uint8_t* w, const uint32_t* sz, const __nv_bfloat16* x,
                                                             float* y, float* part, int* tickets, int n, int k, int m) {
    int4f16::tile_body<2>(w, sz, reinterpret_cast<const __half*>(x), y, part, tickets, n, k, m);
}

// bf16 [count] -> f16 [count] (the micro's x, once; exact for its values in [-2, 2)).
__global__ void bf16_to_f16_k(const __nv_bfloat16* in, __half* out, long long count) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
        out[i] = __float2half_rn(__bfloat162float(in[i]));
}

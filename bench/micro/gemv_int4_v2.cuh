// Candidate replacements for the int4 GEMV (kernels/gemv_int4.cu) at 1..8 rows of x, timed and checked by
// int4_gemv.cu. One template, each parameter one change from the current kernel, group size 128 (CPG = 2 chunks):
//   U       chunks (64 k, 512 bytes per warp) loaded per batch
//   W       warps per block
//   KW      warps sharing one 16-row tile: 1 = a warp per tile (the current plan); KW > 1 = they take turns over the
//           tile's k range, U chunks at a time, and their sums meet in shared memory in warp order (the fp8 tile GEMV's
//           plan, kernels/gemv_fp8.cu, which gained 2-7% on the small products)
//   CHAINS  1 = every mma of a chunk adds into one fragment (the current kernel: 8 dependent mmas per chunk with the
//           zero-point mma); 2 = consecutive k-steps alternate between two fragments (two independent chains of 4;
//           a k-step's zero-point mma joins its own chain, so each chain's sum stays as small as the current one's)
//   ZERO    0 = zero point through a second mma (the current kernel at <= 8 rows); 1 = (q - z) formed first with one
//           exact bf16x2 add per pair (half the mmas, 16 more adds per chunk)
//   PIPE    register double buffer: the next batch's loads are issued before this batch's math
//   MINB    __launch_bounds__ minimum blocks per SM (register budget)
// Why: on the H200 the int4 decode step (9.34 ms at batch 1, 2026-11-28) runs at 48% of its weight-streaming floor
// while fp8 runs at 78%, and int4 barely gained from the H100 (10.07 ms) although the H200 streams 1.4x faster: the
// kernel is bound by something other than DRAM. Candidates: the single chain of 8 dependent mmas per chunk (latency,
// ~30 cycles each), no loads in flight while a warp does its math, or the few warps per SM (16 at MINB 4).
#pragma once

namespace int4v2 {

struct Chunk {
    uint4 q;
    uint32_t sa, sb;
};

template <int U, int W, int KW, int CHAINS, int ZERO, int PIPE, int MINB>
__global__ void __launch_bounds__(W * 32, MINB)
gemv_int4_v2(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz, const __nv_bfloat16* __restrict__ x,
             float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m) {
    constexpr int CPG = 2;
    static_assert(U % CPG == 0, "a batch holds whole groups");
    static_assert(W % KW == 0, "whole tiles per block");
    __shared__ float red[KW > 1 ? W : 1][128];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x * (W / KW) + warp / KW, kw = warp % KW, splits = gridDim.y;
    const int row0 = tile * 16;
    const bool live = row0 < n;
    const int n_pad = (n + 15) & ~15;
    const uint8_t* wl = w + (size_t)(live ? tile : 0) * 8 * k + lane * 16;
    const uint32_t* sza = sz + (live ? row0 : 0) + g;
    const mma::XRows<1> xr(x, k, m, g, t4);
    const int groups = k / (64 * CPG);
    const int c_begin = (int)((long)groups * blockIdx.y / splits) * CPG;
    const int c_end = live ? (int)((long)groups * (blockIdx.y + 1) / splits) * CPG : c_begin;
    kernel_entry_barrier();

    float acc[CHAINS][4], c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int h = 0; h < CHAINS; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[h][e] = 0.f;
    // A batch of N chunks starting at a group boundary: N code words, and one scale word pair per group (loaded with
    // the group's first chunk, not with every chunk as the current kernel does).
    auto load = [&](int ch, Chunk& v, bool group_start) {
        v.q = ld_stream_u4(wl + (size_t)ch * 512);
        if (group_start) {
            const uint32_t* s = sza + (size_t)(ch / CPG) * n_pad;
            v.sa = __ldg(s);
            v.sb = __ldg(s + 8);
        }
    };
    // One chunk; zsrc: the chunk holding its group's scale words; at the group's last chunk its sum is scaled into c.
    auto math = [&](const Chunk& v, const Chunk& zsrc, int ch, bool group_end) {
        uint32_t a[4][4];
        int4x8_to_bf16x8_biased(v.q.x, a[0]);
        int4x8_to_bf16x8_biased(v.q.y, a[1]);
        int4x8_to_bf16x8_biased(v.q.z, a[2]);
        int4x8_to_bf16x8_biased(v.q.w, a[3]);
        const uint32_t za = int4_neg_zero_pair(zsrc.sa), zb = int4_neg_zero_pair(zsrc.sb);
        const uint32_t az[4] = {za, zb, za, zb};
        if constexpr (ZERO == 1) int4_subtract_zero(a, za, zb);  // kernels/gemv_int4.cu
        uint4 xv[2];
        xr.chunk(0, ch, xv);
#pragma unroll
        for (int st = 0; st < 4; ++st) {
            const int h = st >> 1, p = (st & 1) * 2;
            const uint32_t aq[4] = {a[h][p], a[2 + h][p], a[h][p + 1], a[2 + h][p + 1]};
            const uint4& X = xv[h];
            const uint32_t b0 = (st & 1) ? X.z : X.x, b1 = (st & 1) ? X.w : X.y;
            mma::mma_bf16_16816(acc[st % CHAINS], aq, b0, b1);
            if constexpr (ZERO == 0) mma::mma_bf16_16816(acc[st % CHAINS], az, b0, b1);  // same chain: its sum stays small
        }
        if (group_end) {
            const float sa = int4_scale(zsrc.sa), sb = int4_scale(zsrc.sb);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float s = acc[0][e];
#pragma unroll
                for (int h = 1; h < CHAINS; ++h) s += acc[h][e];
                c[e] = fmaf(e < 2 ? sa : sb, s, c[e]);
#pragma unroll
                for (int h = 0; h < CHAINS; ++h) acc[h][e] = 0.f;
            }
        }
    };

    // Whole batches first (no per-chunk bounds tests: the current kernel's loop shape), then what is left of this
    // warp's last batch, a group at a time (c_end is a group boundary).
    int b = c_begin + kw * U;
    if constexpr (PIPE) {
        Chunk cur[U];
        if (b + U <= c_end) {
#pragma unroll
            for (int u = 0; u < U; ++u) load(b + u, cur[u], u % CPG == 0);
        }
        for (; b + U <= c_end; b += KW * U) {
            Chunk nxt[U];
            const int bn = b + KW * U;
            if (bn + U <= c_end) {
#pragma unroll
                for (int u = 0; u < U; ++u) load(bn + u, nxt[u], u % CPG == 0);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) math(cur[u], cur[u - u % CPG], b + u, u % CPG == CPG - 1);
#pragma unroll
            for (int u = 0; u < U; ++u) cur[u] = nxt[u];
        }
    } else {
        for (; b + U <= c_end; b += KW * U) {
            Chunk v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) load(b + u, v[u], u % CPG == 0);
#pragma unroll
            for (int u = 0; u < U; ++u) math(v[u], v[u - u % CPG], b + u, u % CPG == CPG - 1);
        }
    }
    for (; b < c_end; b += CPG) {
        Chunk v[CPG];
#pragma unroll
        for (int u = 0; u < CPG; ++u) load(b + u, v[u], u == 0);
#pragma unroll
        for (int u = 0; u < CPG; ++u) math(v[u], v[0], b + u, u == CPG - 1);
    }

    if constexpr (KW > 1) {  // the tile's warps add their k shares in warp order
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][e * 32 + lane] = c[e];
        __syncthreads();
        if (kw != 0) return;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float s = 0.f;
#pragma unroll
            for (int q = 0; q < KW; ++q) s += red[warp + q][e * 32 + lane];
            c[e] = s;
        }
    }
    if (!live) return;
    float cc[1][4] = {{c[0], c[1], c[2], c[3]}};
    if (!mma::combine_splits<1>(cc, part, tickets, tile, blockIdx.y, splits, lane)) return;
    mma::store_tile<1>(cc, y, nullptr, row0, lane, n, m, 0);
}

}  // namespace int4v2

// Batch-1 (and small-batch) decode GEMV: y[m, n] (+)= sum_k W[n, k] * x[m, k].
// This is the decode hot path: every weight byte of the model goes through here once per token, so the
// kernel is written to stream W at DRAM bandwidth:
//   * one warp owns ROWS consecutive output rows and walks K with 16-byte loads: lane l reads bytes
//     [16l, 16l+16) of each 512-byte segment, so every warp-wide load is 512 contiguous bytes per row;
//   * UNROLL segments are loaded before any math, giving ROWS*UNROLL independent 16-byte loads in flight
//     per thread (8 for the M=1 kernel) to cover DRAM latency;
//   * W uses ld.global.nc.L1::no_allocate (read once), x uses __ldg so it stays in L1 and is re-read from
//     there by every warp of the SM (x is at most 27648 bf16 = 54 KB; no shared-memory staging, so no
//     48 KB static limit and no __syncthreads);
//   * fp32 accumulation, warp-shuffle reduction, lane 0 writes (or adds into) y.
// Requirements (checked on the host): K % 8 == 0, W / x 16-byte aligned (row stride K*2 is then a
// multiple of 16 as well).
#include "common.cuh"
#include "mma.cuh"

namespace {

constexpr int kGemvWarps = 4;  // warps per block (128 threads): small blocks keep the tail of short grids even
constexpr int kSegment = 32 * 8;  // elements covered by one warp-wide 16-byte load

// M: rows of x (batch), ROWS: output rows per warp, UNROLL: 512-byte segments loaded per iteration.
template <int M, int ROWS, int UNROLL>
__device__ __forceinline__ void gemv_body(const __nv_bfloat16* __restrict__ w,  // [n, k]
                                          const __nv_bfloat16* __restrict__ x,  // [M, k]
                                          float* __restrict__ y,                // [M, n]
                                          int n, int k, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int warp_global = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
    const int row0 = warp_global * ROWS;
    if (row0 >= n) return;  // touches nothing: needs no barrier

    const uint16_t* wbits = reinterpret_cast<const uint16_t*>(w);
    const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x);

    // Rows past the end alias row0 (valid memory) and are simply not written.
    const uint16_t* wrow[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = (row0 + r < n) ? row0 + r : row0;
        wrow[r] = wbits + (size_t)row * (size_t)k;
    }

    float acc[M][ROWS];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.0f;

    const int lane_off = lane * 8;
    // The main loop's first UNROLL segments of every row, into L2 while the previous kernel finishes (one lane per
    // 128-byte line); the loads below then start from L2, not DRAM.
    if ((lane & 7) == 0) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (u * kSegment + lane_off < k) prefetch_l2(wrow[r] + u * kSegment + lane_off);
    }
    kernel_entry_barrier();

    int k0 = 0;
    // Main loop: UNROLL full segments per iteration, all W loads issued before any use.
    for (; k0 + UNROLL * kSegment <= k; k0 += UNROLL * kSegment) {
        uint4 wv[ROWS][UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wv[r][u] = ld_stream_u4(wrow[r] + k0 + u * kSegment + lane_off);

#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int m = 0; m < M; ++m) {
                float xf[8];
                unpack_bf16x8(ld_ro_u4(xbits + (size_t)m * k + k0 + u * kSegment + lane_off), xf);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    float wf[8];
                    unpack_bf16x8(wv[r][u], wf);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[m][r] = fmaf(wf[j], xf[j], acc[m][r]);
                }
            }
        }
    }
    // Tail: remaining whole or partial segments (k % 8 == 0 so each lane's 8-element chunk is all-or-nothing).
    for (; k0 < k; k0 += kSegment) {
        const int kk = k0 + lane_off;
        if (kk < k) {
            uint4 wv[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wv[r] = ld_stream_u4(wrow[r] + kk);
#pragma unroll
            for (int m = 0; m < M; ++m) {
                float xf[8];
                unpack_bf16x8(ld_ro_u4(xbits + (size_t)m * k + kk), xf);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    float wf[8];
                    unpack_bf16x8(wv[r], wf);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[m][r] = fmaf(wf[j], xf[j], acc[m][r]);
                }
            }
        }
    }

#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[m][r] = warp_sum(acc[m][r]);

    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const int row = row0 + r;
                if (row < n) {
                    float* dst = y + (size_t)m * n + row;
                    *dst = accumulate ? *dst + acc[m][r] : acc[m][r];
                }
            }
    }
}

}  // namespace

// Launch: block = 128 threads (kGemvWarps warps), grid.x = ceil(n / (kGemvWarps * ROWS)) with ROWS = 2.
// The min-blocks hint (8 x 128 threads -> <= 64 registers) matters: without it ptxas interleaves the W loads
// with the FMAs (2 loads in flight instead of 8), which starves DRAM on short grids (n = 5120 -> 640 blocks).
extern "C" __global__ void __launch_bounds__(kGemvWarps * 32, 8)
gemv_bf16(const __nv_bfloat16* __restrict__ w,  // [n, k] row-major
          const __nv_bfloat16* __restrict__ x,  // [k]
          float* __restrict__ y,                // [n]; read too when accumulate != 0
          int n, int k, int accumulate) {
    gemv_body<1, 2, 4>(w, x, y, n, k, accumulate);  // calls kernel_entry_barrier after prefetching its weights
}

// Small-batch variants (speculative / short prefill): x [M, k], y [M, n]; each W load is reused M times.
// Same launch geometry as gemv_bf16 (2 rows per warp).
#define QWQ_GEMV_M(MM, UU)                                                                           \
    extern "C" __global__ void __launch_bounds__(kGemvWarps * 32, 4)                                \
    gemv_m##MM##_bf16(const __nv_bfloat16* __restrict__ w, /* [n, k] */                             \
                      const __nv_bfloat16* __restrict__ x, /* [MM, k] */                            \
                      float* __restrict__ y,               /* [MM, n] */                            \
                      int n, int k, int accumulate) {                                               \
        gemv_body<MM, 2, UU>(w, x, y, n, k, accumulate);                                            \
    }

QWQ_GEMV_M(2, 4)
QWQ_GEMV_M(3, 2)
QWQ_GEMV_M(4, 2)
QWQ_GEMV_M(5, 2)
QWQ_GEMV_M(6, 2)
QWQ_GEMV_M(7, 2)
QWQ_GEMV_M(8, 2)

// ---- Tensor-core small-batch GEMV: y[m, n] (+)= sum_k W[n, k] * x[m, k] for m < M <= 8 -------------------------
// Past ~4 rows of x the CUDA-core kernels above run out of FMA issue slots before DRAM runs out of bandwidth
// (8 rows x 2 FLOP per weight). Here the weights go through mma.m16n8k16 instead: a warp owns 16 output rows (the
// mma's M) and the batch rows are its N = 8 (rows >= M are zero), so the math is ~free and W streams at bandwidth.
//   * No shared memory staging: lane (g, t4) loads 16 contiguous k of W rows g and g+8 (two 16-byte loads each per
//     64-k chunk, so a row's 128 bytes come from 4 lanes) and 16 k of x row g. Any permutation of k is fine for a dot
//     product as long as W and x use the same one: k-step s takes elements 4s..4s+3 of each lane's 16, as the A
//     fragment's (2t4, 2t4+1) and (2t4+8, 2t4+9) columns and the B fragment's matching rows.
//   * The 4 warps of a block split a tile's k range; blockIdx.y splits it further across blocks when the tile count
//     alone cannot fill the GPU (o_proj, down_proj: 320 tiles). Partials are combined deterministically: the warps
//     through shared memory, the blocks through a workspace where the last block of a tile (atomic ticket) adds the
//     splits in order, so a replay gives bit-identical results.
// Requirements (host-checked): k % 64 == 0, W / x 16-byte aligned.
namespace {
constexpr int kMmaWarps = 4;
constexpr int kMmaUnroll = 4;  // 64-k chunks loaded before the math: 16 x 16-byte W loads in flight per lane
}  // namespace

// Launch: grid (ceil(n / 16), splits), block kMmaWarps * 32. With splits > 1, part is fp32 [tiles, splits, 16 * 8]
// and tickets int32 [tiles], all zero before the first launch (every launch leaves them zero).
extern "C" __global__ void __launch_bounds__(kMmaWarps * 32, 3)
gemv_mma_bf16(const __nv_bfloat16* __restrict__ w,  // [n, k]
              const __nv_bfloat16* __restrict__ x,  // [m, k]
              float* __restrict__ y,                // [m, n]; read too when accumulate != 0
              float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m, int accumulate) {
    kernel_entry_barrier();
    __shared__ float red[kMmaWarps][16 * 8];
    __shared__ int last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x, splits = gridDim.y;
    const int row0 = tile * 16;
    const int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);  // rows past n alias a valid one, unwritten
    const mma::XRows<1> xr(x, k, m, g, t4);
    const uint16_t* wa = reinterpret_cast<const uint16_t*>(w) + (size_t)ra * k + 16 * t4;
    const uint16_t* wb = reinterpret_cast<const uint16_t*>(w) + (size_t)rb * k + 16 * t4;

    const int chunks = k / 64, parts = splits * kMmaWarps, p = blockIdx.y * kMmaWarps + warp;
    const int c_begin = (int)((long)chunks * p / parts), c_end = (int)((long)chunks * (p + 1) / parts);
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    int ch = c_begin;
    for (; ch + kMmaUnroll <= c_end; ch += kMmaUnroll) {
        uint4 va[kMmaUnroll][2], vb[kMmaUnroll][2], xv[kMmaUnroll][2];
#pragma unroll
        for (int u = 0; u < kMmaUnroll; ++u) {
            const size_t off = (size_t)(ch + u) * 64;
            va[u][0] = ld_stream_u4(wa + off);
            va[u][1] = ld_stream_u4(wa + off + 8);
            vb[u][0] = ld_stream_u4(wb + off);
            vb[u][1] = ld_stream_u4(wb + off + 8);
        }
#pragma unroll
        for (int u = 0; u < kMmaUnroll; ++u) xr.chunk(0, ch + u, xv[u]);
#pragma unroll
        for (int u = 0; u < kMmaUnroll; ++u) mma::mma_chunk64(c, va[u], vb[u], xv[u]);
    }
    for (; ch < c_end; ++ch) {
        const size_t off = (size_t)ch * 64;
        uint4 va[2] = {ld_stream_u4(wa + off), ld_stream_u4(wa + off + 8)};
        uint4 vb[2] = {ld_stream_u4(wb + off), ld_stream_u4(wb + off + 8)};
        uint4 xv[2];
        xr.chunk(0, ch, xv);
        mma::mma_chunk64(c, va, vb, xv);
    }

    // C fragment: c0, c1 = (row g, batch 2t4, 2t4+1), c2, c3 = (row g+8, same batches). red[warp][row * 8 + batch].
    red[warp][g * 8 + 2 * t4] = c[0];
    red[warp][g * 8 + 2 * t4 + 1] = c[1];
    red[warp][(g + 8) * 8 + 2 * t4] = c[2];
    red[warp][(g + 8) * 8 + 2 * t4 + 1] = c[3];
    __syncthreads();
    const int i = threadIdx.x;  // one (row, batch) per thread: 128 = 16 x 8
    float sum = 0.f;
#pragma unroll
    for (int wi = 0; wi < kMmaWarps; ++wi) sum += red[wi][i];
    const int row = row0 + (i >> 3), b = i & 7;
    if (splits > 1) {
        float* mine = part + ((size_t)tile * splits + blockIdx.y) * 128;
        mine[i] = sum;
        __threadfence();
        __syncthreads();
        if (i == 0) last = atomicAdd(tickets + tile, 1) == splits - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        sum = 0.f;
        const float* all = part + (size_t)tile * splits * 128 + i;
        for (int s = 0; s < splits; ++s) sum += __ldcg(all + (size_t)s * 128);  // in split order: deterministic
        if (i == 0) tickets[tile] = 0;  // ready for the next launch (and graph replay)
    }
    if (b < m && row < n) {
        float* dst = y + (size_t)b * n + row;
        *dst = accumulate ? *dst + sum : sum;
    }
}

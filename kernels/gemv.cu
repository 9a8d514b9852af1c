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
    if (row0 >= n) return;

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
    gemv_body<1, 2, 4>(w, x, y, n, k, accumulate);
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

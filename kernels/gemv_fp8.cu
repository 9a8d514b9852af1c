// Decode products with FP8 (E4M3) weights and one fp32 scale per output row (per-channel, as llm-compressor's
// FP8 checkpoints and --quantize fp8 store them): y[m, n] (+)= scale[n] * sum_k W[n, k] * x[m, k], x bf16, fp32
// accumulation. Same plan as gemv.cu's bf16 kernels — stream W once at DRAM bandwidth — with half the bytes:
//   * gemv_fp8_m1..m4: CUDA cores. A warp owns 2 rows; lane l reads bytes [16l, 16l+16) of each 512-byte segment
//     (16 weights per 16-byte load), converts them exactly to bf16 (fp8.cuh) and then to fp32 for the FMAs.
//   (5..32 rows of x go to the tensor cores: gemv_tc.cu.)
// The scale multiplies the finished dot product, so W's 8-bit codes are all the kernel reads per weight.
// Requirements (host-checked): k % 16 == 0; W, x 16-byte aligned.
#include "common.cuh"
#include "fp8.cuh"

namespace {

constexpr int kWarps = 4;
constexpr int kSegment8 = 32 * 16;  // fp8 elements covered by one warp-wide 16-byte load

template <int M, int ROWS, int UNROLL>
__device__ __forceinline__ void gemv_fp8_body(const uint8_t* __restrict__ w, const float* __restrict__ scale,
                                              const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int n, int k,
                                              int accumulate) {
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * ROWS;
    if (row0 >= n) return;
    const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x);
    const uint8_t* wrow[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) wrow[r] = w + (size_t)(row0 + r < n ? row0 + r : row0) * (size_t)k;

    float acc[M][ROWS];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.0f;

    // 16 weights of each row against the same 16 elements of every x row.
    auto step = [&](const uint4 (&wv)[ROWS], int kk) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float wf[ROWS][8];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                uint4 lo8, hi8;
                fp8x16_to_bf16x16(wv[r], lo8, hi8);
                unpack_bf16x8(half ? hi8 : lo8, wf[r]);
            }
#pragma unroll
            for (int m = 0; m < M; ++m) {
                float xf[8];
                unpack_bf16x8(ld_ro_u4(xbits + (size_t)m * k + kk + 8 * half), xf);
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[m][r] = fmaf(wf[r][j], xf[j], acc[m][r]);
            }
        }
    };

    const int lane_off = lane * 16;
    int k0 = 0;
    for (; k0 + UNROLL * kSegment8 <= k; k0 += UNROLL * kSegment8) {
        uint4 wv[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wv[u][r] = ld_stream_u4(wrow[r] + k0 + u * kSegment8 + lane_off);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) step(wv[u], k0 + u * kSegment8 + lane_off);
    }
    for (; k0 < k; k0 += kSegment8) {  // k % 16 == 0: each lane's 16-element piece is all or nothing
        const int kk = k0 + lane_off;
        if (kk < k) {
            uint4 wv[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) wv[r] = ld_stream_u4(wrow[r] + kk);
            step(wv, kk);
        }
    }

#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[m][r] = warp_sum(acc[m][r]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const int row = row0 + r;
            if (row >= n) continue;
            const float s = scale[row];
#pragma unroll
            for (int m = 0; m < M; ++m) {
                float* dst = y + (size_t)m * n + row;
                *dst = accumulate ? *dst + s * acc[m][r] : s * acc[m][r];
            }
        }
    }
}

}  // namespace

// Launch: block 128 threads, grid.x = ceil(n / 8) (4 warps x 2 rows). x [M, k] bf16, y [M, n] fp32.
#define QWQ_GEMV_FP8(MM, UU)                                                                                       \
    extern "C" __global__ void __launch_bounds__(kWarps * 32, 8)                                                  \
    gemv_fp8_m##MM(const uint8_t* __restrict__ w, const float* __restrict__ scale,                                \
                   const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int n, int k, int accumulate) {    \
        gemv_fp8_body<MM, 2, UU>(w, scale, x, y, n, k, accumulate);                                               \
    }

QWQ_GEMV_FP8(1, 4)
QWQ_GEMV_FP8(2, 4)
QWQ_GEMV_FP8(3, 2)
QWQ_GEMV_FP8(4, 2)

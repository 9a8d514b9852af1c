// CUDA-core GEMV over FP8 weights for 1..4 rows of x: y[m, n] (+)= scale[n] * sum_k W[n, k] * x[m, k], W e4m3 in the
// tile layout (fp8.cuh) with one fp32 scale per row, x bf16, fp32 FMAs. At one row the tensor-core GEMV spends most
// of its mma on zero rows; here each weight is converted once and multiplied into each row of x on the CUDA cores.
// Same streaming plan as gemv_tc.cu: a warp owns a 16-row tile (one contiguous stream of 512-byte loads), the 4 warps
// of a block walk the same k range so x is fetched from L2 once per block, blockIdx.y splits k, and split partials
// are added by the tile's last warp in a fixed order (deterministic). Lane (g, t4) holds rows g and g + 8 of the
// tile at k 16·t4 .. 16·t4 + 15 of each 64-k chunk; the 4 lanes of a row add their sums with two shuffles.
// Requirements (host-checked): k % 64 == 0, x 16-byte aligned.
#include "common.cuh"
#include "fp8.cuh"

namespace {
constexpr int kWarps = 4;

// acc[m][0..1] (rows g and g + 8 of a tile, row m of x) += one 64-k chunk: va / vb are this lane's 16 codes of each
// of the two rows (one 16-byte load each), x read as bf16 through L1. Eight weights of each row at a time (fewer live
// registers: the 64-register budget of 8 blocks per SM). Shared by both GEMVs below.
template <int M>
__device__ __forceinline__ void fp8_chunk_fma(float (&acc)[M][2], const uint4& va, const uint4& vb,
                                              const uint16_t* __restrict__ xbits, int k, int ch) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float wa[8], wb[8];
        fp8x4_to_f32x4(h ? va.z : va.x, wa);
        fp8x4_to_f32x4(h ? va.w : va.y, wa + 4);
        fp8x4_to_f32x4(h ? vb.z : vb.x, wb);
        fp8x4_to_f32x4(h ? vb.w : vb.y, wb + 4);
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float xf[8];
            unpack_bf16x8(ld_ro_u4(xbits + (size_t)m * k + (size_t)ch * 64 + 8 * h), xf);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                acc[m][0] = fmaf(wa[j], xf[j], acc[m][0]);
                acc[m][1] = fmaf(wb[j], xf[j], acc[m][1]);
            }
        }
    }
}

// The 4 lanes of a row (same g) add their k pieces: lane (g, 0) then holds rows g and g + 8.
template <int M>
__device__ __forceinline__ void fp8_quad_sum(float (&acc)[M][2]) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            acc[m][r] += __shfl_xor_sync(0xFFFFFFFFu, acc[m][r], 1);
            acc[m][r] += __shfl_xor_sync(0xFFFFFFFFu, acc[m][r], 2);
        }
}

template <int M, int UNROLL>
__device__ __forceinline__ void gemv_fp8_body(const uint8_t* __restrict__ w, const float* __restrict__ scale,
                                              const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                              float* __restrict__ part, int* __restrict__ tickets, int n, int k,
                                              int accumulate) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x * kWarps + warp, splits = gridDim.y;
    const int row0 = tile * 16;
    if (row0 >= n) return;  // no block-wide barriers below
    const uint8_t* wt = w + (size_t)tile * 16 * k + lane * 16;
    const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x) + 16 * t4;
    const int chunks = k / 64;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);
    // This split's first UNROLL chunks, into L2 while the previous kernel finishes (constants; see
    // kernel_entry_barrier): the main loop's first loads then start from L2, not DRAM.
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        if (c_begin + u < c_end) {
            prefetch_l2(wt + (size_t)(c_begin + u) * 1024);
            prefetch_l2(wt + (size_t)(c_begin + u) * 1024 + 512);
        }
    kernel_entry_barrier();

    float acc[M][2];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = 0.f;

    auto math = [&](const uint4& va, const uint4& vb, int c) { fp8_chunk_fma<M>(acc, va, vb, xbits, k, c); };
    int ch = c_begin;
    for (; ch + UNROLL <= c_end; ch += UNROLL) {
        uint4 va[UNROLL], vb[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            va[u] = ld_stream_u4(wt + (size_t)(ch + u) * 1024);
            vb[u] = ld_stream_u4(wt + (size_t)(ch + u) * 1024 + 512);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) math(va[u], vb[u], ch + u);
    }
    for (; ch < c_end; ++ch) math(ld_stream_u4(wt + (size_t)ch * 1024), ld_stream_u4(wt + (size_t)ch * 1024 + 512), ch);

    fp8_quad_sum<M>(acc);
    // lane (g, 0) now holds rows g and g + 8; result index (m, r, g) -> m * 16 + r * 8 + g
    if (splits > 1) {
        float* mine = part + ((size_t)tile * splits + blockIdx.y) * (16 * M);
        if (t4 == 0) {
#pragma unroll
            for (int m = 0; m < M; ++m) {
                mine[m * 16 + g] = acc[m][0];
                mine[m * 16 + 8 + g] = acc[m][1];
            }
        }
        if (!warp_takes_last_ticket(tickets + tile, splits)) return;
        const float* all = part + (size_t)tile * splits * (16 * M);
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float s = 0.f;
                for (int sp = 0; sp < splits; ++sp) s += __ldcg(all + (size_t)sp * 16 * M + m * 16 + r * 8 + g);  // in split order
                acc[m][r] = s;
            }
        if (lane == 0) tickets[tile] = 0;  // ready for the next launch (and graph replay)
    }
    if (t4 == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + g + 8 * r;
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

// Launch: grid (ceil(n / 64), splits), block 128 threads. part: fp32 [tiles, splits, 16 * M] and tickets int32 [tiles],
// zero before the first launch (every launch leaves them zero).
#define QWQ_GEMV_FP8(MM, UU)                                                                                        \
    extern "C" __global__ void __launch_bounds__(kWarps * 32, 8)                                                    \
    gemv_fp8_m##MM(const uint8_t* __restrict__ w, const float* __restrict__ scale,                                  \
                   const __nv_bfloat16* __restrict__ x, float* __restrict__ y, float* __restrict__ part,            \
                   int* __restrict__ tickets, int n, int k, int accumulate) {                                       \
        gemv_fp8_body<MM, UU>(w, scale, x, y, part, tickets, n, k, accumulate);                                     \
    }

QWQ_GEMV_FP8(1, 4)
QWQ_GEMV_FP8(2, 4)
QWQ_GEMV_FP8(3, 2)
QWQ_GEMV_FP8(4, 2)

// ---- One block per tile: for the products whose tiles are too few to fill the GPU with one warp each --------------
// QwQ's qkv (448 tiles at TP1, 224 at TP2) and o_proj (320) give 4-warp blocks of the kernel above one tile per warp:
// far fewer warps than 132 SMs can keep loading, so it needs k splits, and then a second pass over their partials.
// Here the 8 warps of a block share one 16-row tile and split its k range into 8 even contiguous runs (session 21: it
// had been U chunks at a time in turn, which left some warps a batch more), U chunks (U KB) a batch, so every tile has
// 8 warps' loads in flight, with no split partials: the warps' sums meet in shared memory, added in warp order
// (deterministic). Measured in
// bench/micro/fp8_gemv.cu (variant kw8-w8, H100, session 8), one row: TP1 qkv 17.7 -> 16.8 us, o 14.4 -> 13.3,
// gate_up 100.2 -> 97.6, down 52.6 -> 52.2; TP2 qkv 12.1 -> 11.3, o 10.3 -> 9.2; two rows similar; slower from 4 rows
// (registers). Which kernel runs a product is the decode tuner's choice (LinearOps.TuneDecodeBatches).
namespace {
constexpr int kTileWarps = 8;
constexpr int kTileUnroll = 4;

template <int M>
__device__ __forceinline__ void gemv_fp8_tile_body(const uint8_t* __restrict__ w, const float* __restrict__ scale,
                                                   const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int n,
                                                   int k, int accumulate) {
    constexpr int U = kTileUnroll;
    __shared__ float red[kTileWarps][16 * M];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x;  // grid = tiles: every block has a tile (barriers below)
    const uint8_t* wt = w + (size_t)tile * 16 * k + lane * 16;
    const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x) + 16 * t4;
    const int chunks = k / 64;
    // This warp's share: a contiguous run of chunks, dealt evenly (within one). The block ends with a barrier, so its
    // slowest warp sets its time: dealt U chunks at a time in turn, QwQ's k = 5120 (80 chunks) gave warps 0-3 12 chunks
    // and warps 4-7 8 (the int4 tile GEMV's warps stalled 15% of their cycles on that barrier under ncu, session 21).
    const int w_begin = chunks * warp / kTileWarps, w_end = chunks * (warp + 1) / kTileWarps;
#pragma unroll
    for (int u = 0; u < U; ++u)  // this warp's first batch into L2 while the previous kernel finishes
        if (w_begin + u < w_end) {
            prefetch_l2(wt + (size_t)(w_begin + u) * 1024);
            prefetch_l2(wt + (size_t)(w_begin + u) * 1024 + 512);
        }
    kernel_entry_barrier();

    float acc[M][2];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = 0.f;
    for (int b = w_begin; b < w_end; b += U) {
        uint4 va[U], vb[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (b + u < w_end) {
                va[u] = ld_stream_u4(wt + (size_t)(b + u) * 1024);
                vb[u] = ld_stream_u4(wt + (size_t)(b + u) * 1024 + 512);
            } else {
                va[u] = vb[u] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (b + u < w_end) fp8_chunk_fma<M>(acc, va[u], vb[u], xbits, k, b + u);
    }
    fp8_quad_sum<M>(acc);  // lane (g, 0): rows g and g + 8 of this warp's share
    if (t4 == 0) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
            red[warp][m * 16 + g] = acc[m][0];
            red[warp][m * 16 + 8 + g] = acc[m][1];
        }
    }
    __syncthreads();
    if (warp != 0 || t4 != 0) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = tile * 16 + g + 8 * r;
        if (row >= n) continue;
        const float s = scale[row];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float sum = 0.f;
#pragma unroll
            for (int q = 0; q < kTileWarps; ++q) sum += red[q][m * 16 + r * 8 + g];  // in warp order
            float* dst = y + (size_t)m * n + row;
            *dst = accumulate ? *dst + s * sum : s * sum;
        }
    }
}
}  // namespace

// Launch: grid ceil(n / 16) (one block per tile), block 256 threads, no workspace. Same y as gemv_fp8_m*.
#define QWQ_GEMV_FP8_TILE(MM)                                                                                      \
    extern "C" __global__ void __launch_bounds__(kTileWarps * 32, 4)                                               \
    gemv_fp8_tile_m##MM(const uint8_t* __restrict__ w, const float* __restrict__ scale,                            \
                        const __nv_bfloat16* __restrict__ x, float* __restrict__ y, int n, int k, int accumulate) {  \
        gemv_fp8_tile_body<MM>(w, scale, x, y, n, k, accumulate);                                                  \
    }

QWQ_GEMV_FP8_TILE(1)
QWQ_GEMV_FP8_TILE(2)

// Tensor-core GEMV for 1..32 rows of x: y[m, n] (+)= scale[n] * sum_k W[n, k] * x[m, k], W bf16 or fp8 (E4M3, with
// one fp32 scale per output row; bf16 has none), x bf16, fp32 accumulation. Decode batches past ~4 rows run out of
// CUDA-core FMA issue slots before DRAM runs out of bandwidth; the mma does the math for free.
//   * A warp owns one 16-row tile of W (the mma's M; MT tiles in the wide entry) and the batch is the mma's N, in NB
//     tiles of 8 rows.
//   * The 4 warps of a block own consecutive tiles and walk the SAME k range, so each x chunk is fetched from L2
//     once per block and the other three warps hit L1 (with a warp per k range instead, every tile re-reads all of
//     x from L2: at 32 rows that is several times the weight bytes). blockIdx.y splits k further across blocks.
//   * Lane (g, t4) loads 16 contiguous k of W rows g and g+8 per 64-k chunk (fp8: 16 bytes, converted exactly to bf16
//     in registers; bf16: 32 bytes) and the same 16 k of x row 8j + g; mma::mma_chunk64 says why any k order works.
//     bf16 weights are row-major (cuBLAS reads the same copy for prefill); fp8 weights are stored in this very
//     fragment order (fp8.cuh), so a warp's tile is one contiguous stream of 512-byte loads.
//   * Split partials are combined deterministically: each warp writes its fragment to the workspace, and the last
//     warp of a tile (atomic ticket) adds the splits in order, so a replay is bit-identical.
// Requirements (host-checked): k % 64 == 0, W / x 16-byte aligned.
#include "common.cuh"
#include "fp8.cuh"
#include "mma.cuh"

namespace {
constexpr int kTcWarps = 4;

// MT: 16-row tiles per warp (1, or 4 for the "wide" entry): each x fragment a lane loads then feeds MT tiles' mma,
// so the x traffic through L1 per weight byte falls by MT (at 32 rows it is 4x the weights' with MT = 1).
// DB: double-buffered, the next UNROLL chunks' weight loads are issued before this batch's math, so the warp keeps
// loads in flight while it converts and multiplies (at 32 rows that math is long: NB x 16 mma per chunk).
// F16 (fp8 only): x arrives as f16 with a power-of-two scale per row (xscale; gemv_tc_x_to_f16 below), the weights
// are converted to f16 by the hardware cvt and the mma runs in f16: the bf16 route spends ~2 ALU instructions per
// weight on the conversion, which at 16-32 rows is what bounds the kernel (ncu: ALU pipe 50% busy on gate_up).
template <bool FP8, int NB, int UNROLL, int MT = 1, bool DB = false, bool F16 = false>
__device__ __forceinline__ void gemv_tc_body(const void* __restrict__ w, const float* __restrict__ scale,
                                             const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                             float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m,
                                             int accumulate, const float* __restrict__ xscale = nullptr) {
    static_assert(FP8 || !F16, "the fp16 route is for fp8 weights");
    constexpr int kBytes = FP8 ? 1 : 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile0 = (blockIdx.x * kTcWarps + warp) * MT, splits = gridDim.y;
    if (tile0 * 16 >= n) return;  // no block-wide barriers below: a warp past the end may leave
    // bf16: row-major rows g and g + 8 of each tile (rows past n alias a valid one, unwritten). fp8: the tile layout
    // (fp8.cuh), where this lane's two pieces of each chunk sit at lane * 16 and 512 + lane * 16 of the chunk's
    // kilobyte. A tile past n (MT > 1) aliases the last one: computed, never stored.
    const uint8_t* wa[MT];
    const uint8_t* wb[MT];
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const int tile = min(tile0 + t, (n - 1) / 16), row0 = tile * 16;
        const int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);
        wa[t] = FP8 ? static_cast<const uint8_t*>(w) + (size_t)tile * 16 * k + lane * 16
                    : static_cast<const uint8_t*>(w) + ((size_t)ra * k + 16 * t4) * kBytes;
        wb[t] = FP8 ? wa[t] + 512 : static_cast<const uint8_t*>(w) + ((size_t)rb * k + 16 * t4) * kBytes;
    }
    constexpr size_t kChunkBytes = FP8 ? 1024 : 64 * kBytes;  // distance between chunks along a lane's stream
    const mma::XRows<NB> xr(x, k, m, g, t4);
    const int chunks = k / 64;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);
    // This split's first UNROLL chunks of every tile, into L2 while the previous kernel finishes (the weights are
    // constants; see kernel_entry_barrier); the main loop's first loads then start from L2, not DRAM.
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        if (c_begin + u < c_end) {
            const size_t off = (size_t)(c_begin + u) * kChunkBytes;
#pragma unroll
            for (int t = 0; t < MT; ++t) {
                prefetch_l2(wa[t] + off);
                prefetch_l2(wb[t] + off);
            }
        }
    kernel_entry_barrier();

    float c[MT][NB][4];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < NB; ++j) c[t][j][0] = c[t][j][1] = c[t][j][2] = c[t][j][3] = 0.f;
    // W of one chunk for rows g and g + 8 of each tile: one 16-byte word each (fp8) or two (bf16).
    struct Chunk { uint4 a[MT][FP8 ? 1 : 2], b[MT][FP8 ? 1 : 2]; };
    auto load = [&](int ch, Chunk& v) {
        const size_t off = (size_t)ch * kChunkBytes;
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int h = 0; h < (FP8 ? 1 : 2); ++h) {
                v.a[t][h] = ld_stream_u4(wa[t] + off + 16 * h);
                v.b[t][h] = ld_stream_u4(wb[t] + off + 16 * h);
            }
    };
    auto math = [&](const Chunk& v, int ch) {
        uint4 A[MT][2], B[MT][2];
#pragma unroll
        for (int t = 0; t < MT; ++t) {
            if constexpr (F16) {
                fp8x16_to_f16x16(v.a[t][0], A[t][0], A[t][1]);
                fp8x16_to_f16x16(v.b[t][0], B[t][0], B[t][1]);
            } else if constexpr (FP8) {
                fp8x16_to_bf16x16(v.a[t][0], A[t][0], A[t][1]);
                fp8x16_to_bf16x16(v.b[t][0], B[t][0], B[t][1]);
            } else {
                A[t][0] = v.a[t][0]; A[t][1] = v.a[t][1]; B[t][0] = v.b[t][0]; B[t][1] = v.b[t][1];
            }
        }
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            uint4 xv[2];
            xr.chunk(j, ch, xv);
#pragma unroll
            for (int t = 0; t < MT; ++t) mma::mma_chunk64<F16>(c[t][j], A[t], B[t], xv);  // one x fragment, MT tiles
        }
    };
    int ch = c_begin;
    if constexpr (DB) {
        Chunk cur[UNROLL], nxt[UNROLL];
        if (ch + UNROLL <= c_end)
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) load(ch + u, cur[u]);
        for (; ch + UNROLL <= c_end; ch += UNROLL) {
            const bool more = ch + 2 * UNROLL <= c_end;
            if (more)
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) load(ch + UNROLL + u, nxt[u]);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) math(cur[u], ch + u);
            if (more)
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) cur[u] = nxt[u];
        }
    } else {
        for (; ch + UNROLL <= c_end; ch += UNROLL) {
            Chunk v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) load(ch + u, v[u]);
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) math(v[u], ch + u);
        }
    }
    for (; ch < c_end; ++ch) {
        Chunk v;
        load(ch, v);
        math(v, ch);
    }

#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const int tile = tile0 + t;
        if (tile * 16 >= n) break;  // the aliased tiles past n
        if (mma::combine_splits<NB>(c[t], part, tickets, tile, blockIdx.y, splits, lane))
            mma::store_tile<NB>(c[t], y, scale, tile * 16, lane, n, m, accumulate, F16 ? xscale : nullptr);
    }
}
}  // namespace

// Launch: grid (ceil(n / (64 * MT)), splits), block 128 threads; m <= 8 * NB. part: fp32 [tiles, splits, 128 * NB] and
// tickets int32 [tiles] (tiles = ceil(n / 16)), all zero before the first launch (every launch leaves them zero).
// MINB: blocks per SM the registers must allow; the "lite" fp8 variant trades unrolling for twice the warps.
// Measured on the H200 (bench/micro/tc_gemv.cu, 2026-11-28, fp8 at 32 rows, best split each): double buffering with
// 2 chunks a batch against 4 without took qkv 31.3 -> 29.9 us, o 26.5 -> 25.9, gate_up 141.5 -> 126.1, down
// 82.3 -> 78.9 (at 16 rows it gained nothing, so n16 keeps its plan); the wide entry (4 tiles a warp) took gate_up to
// 117.7 us but lost on the three narrow shapes (too few warps), so the load-time tuner picks it per shape. The fp16
// route (fp8h_*) then: gate_up 94.3 us (wide), down 70.7, qkv 26.7, o 23.6 at 32 rows; 8-24% at 16 rows.
#define QWQ_GEMV_TC(SUFFIX, FP8, NB, UNROLL, MINB, MT, DB)                                                          \
    extern "C" __global__ void __launch_bounds__(kTcWarps * 32, MINB)                                               \
    gemv_tc_##SUFFIX(const void* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x, \
                     float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m,   \
                     int accumulate) {                                                                              \
        gemv_tc_body<FP8, NB, UNROLL, MT, DB>(w, scale, x, y, part, tickets, n, k, m, accumulate);                  \
    }
// The fp16 route: x is f16 [m, k] (its bits behind the bf16 pointer type) and xscale fp32 [m], from gemv_tc_x_to_f16.
#define QWQ_GEMV_TC_F16(SUFFIX, NB, UNROLL, MINB, MT, DB)                                                           \
    extern "C" __global__ void __launch_bounds__(kTcWarps * 32, MINB)                                               \
    gemv_tc_##SUFFIX(const void* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x, \
                     const float* __restrict__ xscale, float* __restrict__ y, float* __restrict__ part,              \
                     int* __restrict__ tickets, int n, int k, int m, int accumulate) {                              \
        gemv_tc_body<true, NB, UNROLL, MT, DB, true>(w, scale, x, y, part, tickets, n, k, m, accumulate, xscale);   \
    }

//          suffix         FP8    NB UNROLL MINB MT DB
QWQ_GEMV_TC(fp8_n8,        true,  1, 8,     4,   1, false)
QWQ_GEMV_TC(fp8_n8_lite,   true,  1, 4,     8,   1, false)
QWQ_GEMV_TC(fp8_n16,       true,  2, 8,     4,   1, false)
QWQ_GEMV_TC(fp8_n32,       true,  4, 2,     4,   1, true)
QWQ_GEMV_TC(fp8_n32_wide,  true,  4, 1,     2,   4, false)
QWQ_GEMV_TC(bf16_n8,       false, 1, 4,     4,   1, false)
QWQ_GEMV_TC(bf16_n16,      false, 2, 4,     4,   1, false)
QWQ_GEMV_TC(bf16_n32,      false, 4, 4,     4,   1, false)
//              suffix          NB UNROLL MINB MT DB
QWQ_GEMV_TC_F16(fp8h_n16,       2, 8,     4,   1, false)
QWQ_GEMV_TC_F16(fp8h_n32,       4, 2,     4,   1, true)
QWQ_GEMV_TC_F16(fp8h_n32_wide,  4, 1,     2,   4, false)

// x (bf16 [m, k]) -> xh (f16 [m, k]) and xscale (fp32 [m]) with x = xh * xscale, for the fp16 route. Each row is
// divided by 2^e, e >= 0 the least that brings its largest |x| under 2^16 (the largest bf16 below 2^16 is 65280, within
// f16's 65504), so every bf16 value converts exactly but those under 2^-24 * 2^e (subnormal in f16, or zero): at most
// 2^-40 of the row's largest, nothing a dot product can show. Grid m blocks (one row each), 1024 threads; k % 8 == 0,
// k <= 32768. A thread holds its (at most 4) 16-byte words of the row in registers between the max and the
// conversion, so the row is read once and all its loads are in flight together: the kernel sits between two GEMVs
// on the decode path, where its latency, not its bytes, is the cost (a 256-thread, two-pass version took 6.7 us).
// PERMUTED: each 64-k chunk of the row is stored in the order the sm_90a build reads it (kernels/sm90a/
// gemv_tc_sm90a.cu): the 8 inputs of a thread's word at chunk offset 8w go as four pairs to columns c, c + 8, c + 16,
// c + 24 with c = 32 (w % 2) + 2 (w / 2).
constexpr int kXToF16Threads = 1024, kXToF16Words = 4;  // 4 x 8 x 1024 = 32768 inputs
template <bool PERMUTED>
__device__ __forceinline__ void x_to_f16_body(const __nv_bfloat16* __restrict__ x, __half* __restrict__ xh,
                                              float* __restrict__ xscale, int k) {
    kernel_entry_barrier();
    const int words = k / 8;
    const uint4* src = reinterpret_cast<const uint4*>(x) + (size_t)blockIdx.x * words;
    uint4* dst = reinterpret_cast<uint4*>(xh) + (size_t)blockIdx.x * words;
    uint4 v[kXToF16Words];
    float mx = 0.f;
#pragma unroll
    for (int i = 0; i < kXToF16Words; ++i) {
        const int at = threadIdx.x + i * kXToF16Threads;
        v[i] = at < words ? src[at] : make_uint4(0, 0, 0, 0);
        const uint32_t p[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) mx = fmaxf(mx, fmaxf(fabsf(bf16_lo(p[j])), fabsf(bf16_hi(p[j]))));
    }
    __shared__ float warp_max[kXToF16Threads / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = warp_max[threadIdx.x & 31];  // 32 warps: lane i takes warp i's max, then one more warp reduction
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const int e = mx >= 65536.f ? min(ilogbf(mx) - 15, 126) : 0;  // mx * 2^-e < 2^16
    const float down = ldexpf(1.f, -e);
    if (threadIdx.x == 0) xscale[blockIdx.x] = ldexpf(1.f, e);
#pragma unroll
    for (int i = 0; i < kXToF16Words; ++i) {
        const int at = threadIdx.x + i * kXToF16Threads;
        if (at >= words) break;
        const uint32_t p[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        uint32_t q[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const __half2 h = __floats2half2_rn(bf16_lo(p[j]) * down, bf16_hi(p[j]) * down);
            q[j] = *reinterpret_cast<const uint32_t*>(&h);
        }
        if constexpr (PERMUTED) {
            const int w8 = at & 7, col = 32 * (w8 & 1) + 2 * (w8 >> 1);  // halves from the chunk's start
            uint32_t* chunk = reinterpret_cast<uint32_t*>(dst + (at - w8));
#pragma unroll
            for (int j = 0; j < 4; ++j) chunk[(col + 8 * j) / 2] = q[j];
        } else {
            dst[at] = make_uint4(q[0], q[1], q[2], q[3]);
        }
    }
}
extern "C" __global__ void __launch_bounds__(kXToF16Threads) gemv_tc_x_to_f16(const __nv_bfloat16* __restrict__ x,
                                                                              __half* __restrict__ xh,
                                                                              float* __restrict__ xscale, int k) {
    x_to_f16_body<false>(x, xh, xscale, k);
}
extern "C" __global__ void __launch_bounds__(kXToF16Threads) gemv_tc_x_to_f16_wg(const __nv_bfloat16* __restrict__ x,
                                                                                 __half* __restrict__ xh,
                                                                                 float* __restrict__ xscale, int k) {
    x_to_f16_body<true>(x, xh, xscale, k);
}

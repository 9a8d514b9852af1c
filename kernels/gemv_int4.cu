// Tensor-core GEMV for 1..32 rows of x over INT4 weights (AWQ checkpoints, --quantize int4):
// y[m, n] (+)= sum_k (q[n, k] - z[n, k / G]) * s[n, k / G] * x[m, k], x bf16, fp32 accumulation.
// What every entry shares is the weight's handling:
//   * Lane (g, t4) loads one 16-byte word per 64-k chunk: 16 k of rows g and g + 8 as nibbles, in the int4 layout of
//     int4.cuh, so a warp reads 512 contiguous bytes per chunk (half of fp8's, a quarter of bf16's).
//   * A nibble becomes the bf16 (128 + q) with one shift and one LOP3, exactly, and one bf16x2 add of -(128 + z) per
//     pair gives (q - z), exactly; the mma adds (q - z) · x over the chunk in fp32. The sum is scaled by the group's s
//     per row once per group: splits start on group boundaries, and groups are whole chunks (G = 64 · CPG).
// Two plans:
//   * 1..8 rows (gemv_int4_n8_*, n8r_*): a block of 8 warps per 16-row tile, the warps sharing the tile's k range (4
//     chunks at a time in turn, or n8r: even contiguous runs), their sums meeting in shared memory in warp order (the
//     fp8 tile GEMV's plan, gemv_fp8.cu).
//   * 9..32 rows (n16, n32): gemv_tc.cu's plan: a warp owns a 16-row tile, the block's 4 warps walk the same k range
//     so x comes from L2 once per block.
// Both split k over blockIdx.y, added deterministically through tickets.
// Requirements (host-checked): k % 64 == 0, G % 64 == 0, W / x 16-byte aligned, sz [k / G, n rounded up to 16].
#include "common.cuh"
#include "int4.cuh"
#include "mma.cuh"

namespace {
constexpr int kInt4Warps = 4;

// (q - z) as one exact bf16x2 add per pair of the 4 words' 16 pairs: a[word][pair] += -(128 + z) of its row.
__device__ __forceinline__ void int4_subtract_zero(uint32_t (&a)[4][4], uint32_t za, uint32_t zb) {
#pragma unroll
    for (int wd = 0; wd < 4; ++wd)
#pragma unroll
        for (int p = 0; p < 4; ++p) {  // (128 + q) + -(128 + z): exact
            const uint32_t nz = wd < 2 ? za : zb;
            __nv_bfloat162 r = __hadd2(*reinterpret_cast<const __nv_bfloat162*>(&a[wd][p]),
                                       *reinterpret_cast<const __nv_bfloat162*>(&nz));
            a[wd][p] = *reinterpret_cast<uint32_t*>(&r);
        }
}

// The warp-per-tile plan, 9..32 rows (NB batch tiles of 8).
template <int NB, int UNROLL, int CPG>
__device__ __forceinline__ void gemv_int4_body(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,
                                               const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                               float* __restrict__ part, int* __restrict__ tickets, int n, int k,
                                               int m, int accumulate) {
    static_assert(UNROLL % CPG == 0, "a batch of chunks holds whole groups");
    static_assert(NB >= 2, "1..8 rows take gemv_int4_tile_body");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x * kInt4Warps + warp, splits = gridDim.y;
    const int row0 = tile * 16;
    if (row0 >= n) return;  // no block-wide barriers below: a warp past the end may leave
    const int n_pad = (n + 15) & ~15;
    const uint8_t* wl = w + (size_t)tile * 8 * k + lane * 16;  // this lane's word of chunk 0
    const uint32_t* sza = sz + row0 + g;                       // group 0, rows g and g + 8 (padding rows exist)
    const uint16_t* xg[NB];
    bool xok[NB];
#pragma unroll
    for (int j = 0; j < NB; ++j) {
        xok[j] = 8 * j + g < m;
        xg[j] = reinterpret_cast<const uint16_t*>(x) + (size_t)(xok[j] ? 8 * j + g : 0) * k + 16 * t4;
    }
    const int groups = k / (64 * CPG);
    const int c_begin = (int)((long)groups * blockIdx.y / splits) * CPG, c_end = (int)((long)groups * (blockIdx.y + 1) / splits) * CPG;
    // This split's first UNROLL chunks and their scale words, into L2 while the previous kernel finishes (constants;
    // see kernel_entry_barrier): the main loop's first loads then start from L2, not DRAM.
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        if (c_begin + u < c_end) prefetch_l2(wl + (size_t)(c_begin + u) * 512);
    if (c_begin < c_end && t4 == 0) prefetch_l2(sza + (size_t)(c_begin / CPG) * n_pad);
    kernel_entry_barrier();

    float c[NB][4], cg[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[j][e] = cg[j][e] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    struct Chunk { uint4 q; uint32_t sa, sb; };
    auto load = [&](int ch) {
        Chunk v;
        v.q = ld_stream_u4(wl + (size_t)ch * 512);
        const uint32_t* s = sza + (size_t)(ch / CPG) * n_pad;
        v.sa = __ldg(s);
        v.sb = __ldg(s + 8);
        return v;
    };
    // One chunk into cg; at the group's last chunk, cg scaled into c.
    auto math = [&](const Chunk& v, int ch, bool group_end) {
        uint32_t a[4][4];  // [word][pair]: words 0, 1 row g (k 0-7, 8-15 of the lane's 16), words 2, 3 row g + 8
        int4x8_to_bf16x8_biased(v.q.x, a[0]);
        int4x8_to_bf16x8_biased(v.q.y, a[1]);
        int4x8_to_bf16x8_biased(v.q.z, a[2]);
        int4x8_to_bf16x8_biased(v.q.w, a[3]);
        int4_subtract_zero(a, int4_neg_zero_pair(v.sa), int4_neg_zero_pair(v.sb));
        const size_t off = (size_t)ch * 64;
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const uint4 xv[2] = {xok[j] ? ld_ro_u4(xg[j] + off) : zero, xok[j] ? ld_ro_u4(xg[j] + off + 8) : zero};
            // k-step st takes elements 4st..4st+3 of the lane's 16 (mma::mma_chunk64's order)
#pragma unroll
            for (int st = 0; st < 4; ++st) {
                const int h = st >> 1, p = (st & 1) * 2;
                const uint32_t aq[4] = {a[h][p], a[2 + h][p], a[h][p + 1], a[2 + h][p + 1]};
                const uint4& X = xv[h];
                const uint32_t b0 = (st & 1) ? X.z : X.x, b1 = (st & 1) ? X.w : X.y;
                mma::mma_bf16_16816(cg[j], aq, b0, b1);
            }
        }
        if (group_end) {
            const float sa = int4_scale(v.sa), sb = int4_scale(v.sb);
#pragma unroll
            for (int j = 0; j < NB; ++j) {
                // c0, c1: row g; c2, c3: row g + 8
                c[j][0] = fmaf(sa, cg[j][0], c[j][0]);
                c[j][1] = fmaf(sa, cg[j][1], c[j][1]);
                c[j][2] = fmaf(sb, cg[j][2], c[j][2]);
                c[j][3] = fmaf(sb, cg[j][3], c[j][3]);
                cg[j][0] = cg[j][1] = cg[j][2] = cg[j][3] = 0.f;
            }
        }
    };
    int ch = c_begin;
    for (; ch + UNROLL <= c_end; ch += UNROLL) {
        Chunk v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) v[u] = load(ch + u);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) math(v[u], ch + u, (u + 1) % CPG == 0);
    }
    for (; ch < c_end; ch += CPG) {
        Chunk v[CPG];
#pragma unroll
        for (int u = 0; u < CPG; ++u) v[u] = load(ch + u);
#pragma unroll
        for (int u = 0; u < CPG; ++u) math(v[u], ch + u, u == CPG - 1);
    }

    if (!mma::combine_splits<NB>(c, part, tickets, tile, blockIdx.y, splits, lane)) return;
    mma::store_tile<NB>(c, y, nullptr, row0, lane, n, m, accumulate);
}

// The block-per-tile plan, 1..8 rows. Measured against the warp-per-tile kernel at 8 rows and below (which added
// -(128 + z) · x through a second mma instead of the subtraction), each at its best split count, in
// bench/micro/int4_gemv.cu (H200, 2026-11-28, variant kw8-sub-u4-b4): 1 row qkv 15.8 -> 11.9 us, o 13.2 -> 9.9,
// gate_up 61.3 -> 58.6, down 37.8 -> 33.8; 8 rows alike. With 4 warps per block on 4 different tiles, qkv's 448 and
// o's 320 tiles gave too few warps in flight without splits, and the splits a second pass; 8 warps of one tile keep
// 8 x 4 chunks of it in flight at once. The k-steps alternate between two fragments, so a chunk's mmas form two
// independent chains of 2 rather than one of 4, and the scale words load once per group, not per chunk.
// How the 8 warps share the tile's k range is the template's RUNS:
//   * false: batches of U chunks in turn (warp, warp + 8, ...), so the block reads one contiguous stretch at a time. At
//     QwQ's k = 5120 (80 chunks) warps 0-3 get three batches and 4-7 two, and the block waits for its slowest warp.
//   * true: each warp one contiguous run of whole groups, the split's groups dealt evenly (within one). Session 21
//     measured it against the batches in turn for every row count (H200): int4 batch 1 +3.3%, batch 8 -2.1% (at 8 rows,
//     every lane loading x, 8 separate streams of the tile cost more than the balance gains). Both are built and the
//     decode tuner times them per product and row count (TensorCoreVariant.EvenRuns).
constexpr int kTileWarps = 8;
constexpr int kTileUnroll = 4;

template <int CPG, bool RUNS>
__device__ __forceinline__ void gemv_int4_tile_body(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,
                                                    const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                                    float* __restrict__ part, int* __restrict__ tickets, int n, int k,
                                                    int m, int accumulate) {
    constexpr int U = kTileUnroll;
    static_assert(U % CPG == 0, "a batch of chunks holds whole groups");
    __shared__ float red[kTileWarps][128];  // each warp's C fragment, [element][lane]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x, splits = gridDim.y;  // grid.x = tiles: every block has one (barrier below)
    const int row0 = tile * 16, n_pad = (n + 15) & ~15;
    const uint8_t* wl = w + (size_t)tile * 8 * k + lane * 16;  // this lane's word of chunk 0
    const uint32_t* sza = sz + row0 + g;                       // group 0, rows g and g + 8 (padding rows exist)
    const bool xok = g < m;                                    // lane (g, t4) supplies x row g to the mma
    const uint16_t* xg = reinterpret_cast<const uint16_t*>(x) + (size_t)(xok ? g : 0) * k + 16 * t4;
    const int groups = k / (64 * CPG);
    const int c_begin = (int)((long)groups * blockIdx.y / splits) * CPG, c_end = (int)((long)groups * (blockIdx.y + 1) / splits) * CPG;
    // This warp's chunks: from `first`, batches of U every `stride` chunks, below `last` (a group boundary).
    const int split_groups = (c_end - c_begin) / CPG;
    const int first = RUNS ? c_begin + split_groups * warp / kTileWarps * CPG : c_begin + warp * U;
    const int last = RUNS ? c_begin + split_groups * (warp + 1) / kTileWarps * CPG : c_end;
    constexpr int stride = RUNS ? U : kTileWarps * U;
    // This warp's first batch and its scale words, into L2 while the previous kernel finishes (constants; see
    // kernel_entry_barrier).
#pragma unroll
    for (int u = 0; u < U; ++u)
        if (first + u < last) prefetch_l2(wl + (size_t)(first + u) * 512);
    if (first < last && t4 == 0) prefetch_l2(sza + (size_t)(first / CPG) * n_pad);
    kernel_entry_barrier();

    float acc[2][4], c[4] = {0.f, 0.f, 0.f, 0.f};  // acc: this group's sum, in two chains; c: scaled sums
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[h][e] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    struct Chunk { uint4 q; uint32_t sa, sb; };  // sa, sb: loaded with a group's first chunk only
    auto load = [&](int ch, Chunk& v, bool group_start) {
        v.q = ld_stream_u4(wl + (size_t)ch * 512);
        if (group_start) {
            const uint32_t* s = sza + (size_t)(ch / CPG) * n_pad;
            v.sa = __ldg(s);
            v.sb = __ldg(s + 8);
        }
    };
    // Chunk ch into acc (gs: the chunk holding its group's scale words); at the group's last chunk, acc scaled into c.
    auto math = [&](const Chunk& v, const Chunk& gs, int ch, bool group_end) {
        uint32_t a[4][4];  // [word][pair]: words 0, 1 row g (k 0-7, 8-15 of the lane's 16), words 2, 3 row g + 8
        int4x8_to_bf16x8_biased(v.q.x, a[0]);
        int4x8_to_bf16x8_biased(v.q.y, a[1]);
        int4x8_to_bf16x8_biased(v.q.z, a[2]);
        int4x8_to_bf16x8_biased(v.q.w, a[3]);
        int4_subtract_zero(a, int4_neg_zero_pair(gs.sa), int4_neg_zero_pair(gs.sb));
        const size_t off = (size_t)ch * 64;
        const uint4 xv[2] = {xok ? ld_ro_u4(xg + off) : zero, xok ? ld_ro_u4(xg + off + 8) : zero};
#pragma unroll
        for (int st = 0; st < 4; ++st) {  // k-step st takes elements 4st..4st+3 of the lane's 16 (mma_chunk64's order)
            const int h = st >> 1, p = (st & 1) * 2;
            const uint32_t aq[4] = {a[h][p], a[2 + h][p], a[h][p + 1], a[2 + h][p + 1]};
            const uint4& X = xv[h];
            mma::mma_bf16_16816(acc[st & 1], aq, (st & 1) ? X.z : X.x, (st & 1) ? X.w : X.y);
        }
        if (group_end) {
            const float sa = int4_scale(gs.sa), sb = int4_scale(gs.sb);
#pragma unroll
            for (int e = 0; e < 4; ++e) {  // c0, c1: row g; c2, c3: row g + 8
                c[e] = fmaf(e < 2 ? sa : sb, acc[0][e] + acc[1][e], c[e]);
                acc[0][e] = acc[1][e] = 0.f;
            }
        }
    };
    // Whole batches first (no per-chunk bounds tests), then what is left of this warp's last batch, a group at a
    // time (last is a group boundary).
    int b = first;
    for (; b + U <= last; b += stride) {
        Chunk v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) load(b + u, v[u], u % CPG == 0);
#pragma unroll
        for (int u = 0; u < U; ++u) math(v[u], v[u - u % CPG], b + u, u % CPG == CPG - 1);
    }
    for (; b < last; b += CPG) {
        Chunk v[CPG];
#pragma unroll
        for (int u = 0; u < CPG; ++u) load(b + u, v[u], u == 0);
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
        for (int q = 0; q < kTileWarps; ++q) s += red[q][e * 32 + lane];  // in warp order
        cc[0][e] = s;
    }
    if (!mma::combine_splits<1>(cc, part, tickets, tile, blockIdx.y, splits, lane)) return;
    mma::store_tile<1>(cc, y, nullptr, row0, lane, n, m, accumulate);
}
}  // namespace

// Launch (n16, n32): grid (ceil(n / 64), splits), block 128 threads; m <= 8 * NB; splits <= k / G. part / tickets as
// gemv_tc.cu's (the same workspace serves both). One entry per group size G = 64 · CPG (64, 128, 256).
#define QWQ_GEMV_INT4(SUFFIX, NB, UNROLL, CPG)                                                                       \
    extern "C" __global__ void __launch_bounds__(kInt4Warps * 32, 3)                                                 \
    gemv_int4_##SUFFIX(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,                               \
                       const __nv_bfloat16* __restrict__ x, float* __restrict__ y, float* __restrict__ part,         \
                       int* __restrict__ tickets, int n, int k, int m, int accumulate) {                            \
        gemv_int4_body<NB, UNROLL, CPG>(w, sz, x, y, part, tickets, n, k, m, accumulate);                           \
    }
// Launch (n8, n8r): grid (ceil(n / 16), splits) (a block per tile), block 256 threads; m <= 8; the same workspace.
// n8r: the warps on even contiguous runs (RUNS above).
#define QWQ_GEMV_INT4_TILE(SUFFIX, CPG, RUNS)                                                                        \
    extern "C" __global__ void __launch_bounds__(kTileWarps * 32, 3)                                                 \
    gemv_int4_##SUFFIX(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,                               \
                       const __nv_bfloat16* __restrict__ x, float* __restrict__ y, float* __restrict__ part,         \
                       int* __restrict__ tickets, int n, int k, int m, int accumulate) {                            \
        gemv_int4_tile_body<CPG, RUNS>(w, sz, x, y, part, tickets, n, k, m, accumulate);                            \
    }

QWQ_GEMV_INT4_TILE(n8_g64, 1, false)
QWQ_GEMV_INT4_TILE(n8r_g64, 1, true)
QWQ_GEMV_INT4(n16_g64, 2, 8, 1)
QWQ_GEMV_INT4(n32_g64, 4, 4, 1)
QWQ_GEMV_INT4_TILE(n8_g128, 2, false)
QWQ_GEMV_INT4_TILE(n8r_g128, 2, true)
QWQ_GEMV_INT4(n16_g128, 2, 8, 2)
QWQ_GEMV_INT4(n32_g128, 4, 4, 2)
QWQ_GEMV_INT4_TILE(n8_g256, 4, false)
QWQ_GEMV_INT4_TILE(n8r_g256, 4, true)
QWQ_GEMV_INT4(n16_g256, 2, 8, 4)
QWQ_GEMV_INT4(n32_g256, 4, 4, 4)

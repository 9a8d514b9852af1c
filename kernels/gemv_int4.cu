// Tensor-core GEMV for 1..32 rows of x over INT4 weights (AWQ checkpoints, --quantize int4):
// y[m, n] (+)= sum_k (q[n, k] - z[n, k / G]) * s[n, k / G] * x[m, k], x bf16, fp32 accumulation.
// The structure is gemv_tc.cu's (a warp owns a 16-row tile, the block's 4 warps walk the same k range so x comes from
// L2 once per block, blockIdx.y splits k, deterministic split-k through tickets); what differs is the weight:
//   * Lane (g, t4) loads one 16-byte word per 64-k chunk: 16 k of rows g and g + 8 as nibbles, in the int4 layout of
//     int4.cuh, so a warp reads 512 contiguous bytes per chunk (half of fp8's, a quarter of bf16's).
//   * Codes become bf16 (q - z) exactly in registers (one shift, one LOP3, one bf16x2 add per pair), the mma adds up
//     (q - z) · x over the chunk in fp32, and the chunk's sum is scaled by its group's s per row: group sizes that are
//     multiples of 64 (AWQ's 128, or 64) never split a chunk.
// Requirements (host-checked): k % 64 == 0, G % 64 == 0, W / x 16-byte aligned, sz [k / G, n rounded up to 16].
#include "common.cuh"
#include "int4.cuh"
#include "mma.cuh"

namespace {
constexpr int kInt4Warps = 4;

template <int NB, int UNROLL>
__device__ __forceinline__ void gemv_int4_body(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,
                                               const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                               float* __restrict__ part, int* __restrict__ tickets, int n, int k,
                                               int m, int chunks_per_group, int accumulate) {
    constexpr int kOut = 16 * 8 * NB;  // (row, batch) results of a tile
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
    const int chunks = k / 64;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);

    float c[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    struct Chunk { uint4 q; uint32_t sa, sb; };
    auto load = [&](int ch) {
        Chunk v;
        v.q = ld_stream_u4(wl + (size_t)ch * 512);
        const uint32_t* s = sza + (size_t)(ch / chunks_per_group) * n_pad;
        v.sa = __ldg(s);
        v.sb = __ldg(s + 8);
        return v;
    };
    auto math = [&](const Chunk& v, int ch) {
        uint4 A[2], B[2];
        const uint32_t nza = int4_neg_zero_pair(v.sa), nzb = int4_neg_zero_pair(v.sb);
        {
            uint32_t t[4];
            int4x8_to_bf16x8(v.q.x, nza, t); A[0] = make_uint4(t[0], t[1], t[2], t[3]);
            int4x8_to_bf16x8(v.q.y, nza, t); A[1] = make_uint4(t[0], t[1], t[2], t[3]);
            int4x8_to_bf16x8(v.q.z, nzb, t); B[0] = make_uint4(t[0], t[1], t[2], t[3]);
            int4x8_to_bf16x8(v.q.w, nzb, t); B[1] = make_uint4(t[0], t[1], t[2], t[3]);
        }
        const float sa = int4_scale(v.sa), sb = int4_scale(v.sb);
        const size_t off = (size_t)ch * 64;
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const uint4 xv[2] = {xok[j] ? ld_ro_u4(xg[j] + off) : zero, xok[j] ? ld_ro_u4(xg[j] + off + 8) : zero};
            float cg[4] = {0.f, 0.f, 0.f, 0.f};
            mma::mma_chunk64(cg, A, B, xv);
            // c0, c1: row g; c2, c3: row g + 8
            c[j][0] = fmaf(sa, cg[0], c[j][0]);
            c[j][1] = fmaf(sa, cg[1], c[j][1]);
            c[j][2] = fmaf(sb, cg[2], c[j][2]);
            c[j][3] = fmaf(sb, cg[3], c[j][3]);
        }
    };
    int ch = c_begin;
    for (; ch + UNROLL <= c_end; ch += UNROLL) {
        Chunk v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) v[u] = load(ch + u);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) math(v[u], ch + u);
    }
    for (; ch < c_end; ++ch) math(load(ch), ch);

    // C fragment of batch tile j: c0, c1 = (row g, batches 8j + 2t4, +1), c2, c3 = (row g + 8, same batches).
    if (splits > 1) {
        float* mine = part + ((size_t)tile * splits + blockIdx.y) * kOut;
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) mine[(j * 4 + e) * 32 + lane] = c[j][e];  // fragment order: coalesced
        if (!warp_takes_last_ticket(tickets + tile, splits)) return;
        const float* all = part + (size_t)tile * splits * kOut;
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float s = 0.f;
                for (int sp = 0; sp < splits; ++sp) s += __ldcg(all + (size_t)sp * kOut + (j * 4 + e) * 32 + lane);  // in split order
                c[j][e] = s;
            }
        if (lane == 0) tickets[tile] = 0;  // ready for the next launch (and graph replay)
    }
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = row0 + g + (e >= 2 ? 8 : 0), b = 8 * j + 2 * t4 + (e & 1);
            if (b < m && row < n) {
                float* dst = y + (size_t)b * n + row;
                *dst = accumulate ? *dst + c[j][e] : c[j][e];
            }
        }
}
}  // namespace

// Launch: grid (ceil(n / 64), splits), block 128 threads; m <= 8 * NB. part / tickets as gemv_tc.cu's (the same
// workspace serves both).
#define QWQ_GEMV_INT4(SUFFIX, NB, UNROLL)                                                                            \
    extern "C" __global__ void __launch_bounds__(kInt4Warps * 32, 4)                                                 \
    gemv_int4_##SUFFIX(const uint8_t* __restrict__ w, const uint32_t* __restrict__ sz,                               \
                       const __nv_bfloat16* __restrict__ x, float* __restrict__ y, float* __restrict__ part,         \
                       int* __restrict__ tickets, int n, int k, int m, int chunks_per_group, int accumulate) {       \
        gemv_int4_body<NB, UNROLL>(w, sz, x, y, part, tickets, n, k, m, chunks_per_group, accumulate);              \
    }

QWQ_GEMV_INT4(n8, 1, 8)
QWQ_GEMV_INT4(n16, 2, 8)
QWQ_GEMV_INT4(n32, 4, 4)

// Candidate replacements for the tensor-core GEMV (kernels/gemv_tc.cu) at 9..32 rows of x, timed and checked by
// tc_gemv.cu. Why: on the H200 fp8 batch 32 runs at 41% of its floor (24.7 ms a step, 2026-11-28) while bf16 batch 32
// (every product on cuBLASLt) runs at 20.3 ms with twice the weight bytes, and fp8 batch 16 is still at 15.1 ms: the
// fp8 products fall off at 32 rows. In gemv_tc_body a warp owns one 16-row tile and loads, per 64-k chunk, 1 KB of
// fp8 weights but NB x 1 KB of x (lane (g, t4) loads 16 k of x rows 8j + g for each batch tile j), and the block's 4
// warps load the same x again from L1: at 32 rows the load pipe carries 4x the x bytes of the weights. Here a warp
// owns MT consecutive tiles and uses each x fragment it loads for all of them, so the x traffic per weight byte falls
// by MT. Template parameters, each one change:
//   FP8     fp8 weights in the tile layout (fp8.cuh) with per-row scales, or bf16 row-major
//   NB      batch tiles of 8 rows of x (2: 16 rows, 4: 32)
//   UNROLL  chunks loaded per batch
//   MT      16-row tiles per warp (1 = the current plan)
//   MINB    __launch_bounds__ minimum blocks per SM (registers)
//   F16     x given as f16 (the same bits' buffer type is nominal), weights converted to f16 (fp8x16_to_f16x16), f16
//           mma: the fp16 route, landed as gemv_tc_fp8h_* (kernels/gemv_tc.cu says why)
//   DB      double-buffered: the next UNROLL chunks are loaded before this batch's math, so a warp always has weight
//           loads in flight (at 32 rows the math of a batch -- conversions, NB x 16 mma, NB x 2 x loads per chunk --
//           is long enough that a warp waiting on its next loads leaves DRAM idle; the profile gives gate_up 2.1x and
//           down 2.6x their streaming time at batch 32)
#pragma once

namespace tcv2 {
constexpr int kWarps = 4;

template <bool FP8, int NB, int UNROLL, int MT, int MINB, bool DB = false, bool F16 = false>
__global__ void __launch_bounds__(kWarps * 32, MINB)
gemv_tc_v2(const void* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x,
           float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m) {
    constexpr int kBytes = FP8 ? 1 : 2;
    constexpr size_t kChunkBytes = FP8 ? 1024 : 64 * kBytes;  // distance between chunks along a lane's stream
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile0 = (blockIdx.x * kWarps + warp) * MT, splits = gridDim.y;
    if (tile0 * 16 >= n) return;  // no block-wide barriers below
    const uint8_t* wa[MT];
    const uint8_t* wb[MT];
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const int tile = tile0 + t, row0 = min(tile, (n - 1) / 16) * 16;  // a tile past n aliases the last one, unwritten
        const int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);
        wa[t] = FP8 ? static_cast<const uint8_t*>(w) + (size_t)(row0 / 16) * 16 * k + lane * 16
                    : static_cast<const uint8_t*>(w) + ((size_t)ra * k + 16 * t4) * kBytes;
        wb[t] = FP8 ? wa[t] + 512 : static_cast<const uint8_t*>(w) + ((size_t)rb * k + 16 * t4) * kBytes;
    }
    const mma::XRows<NB> xr(x, k, m, g, t4);
    const int chunks = k / 64;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);
    kernel_entry_barrier();

    float c[MT][NB][4];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int j = 0; j < NB; ++j) c[t][j][0] = c[t][j][1] = c[t][j][2] = c[t][j][3] = 0.f;
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
            for (int t = 0; t < MT; ++t) {  // one x fragment, MT tiles
                mma::mma_chunk64<F16>(c[t][j], A[t], B[t], xv);
            }
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
        if (tile * 16 >= n) break;  // the aliased tiles past n: computed, never stored (nor their tickets taken)
        if (mma::combine_splits<NB>(c[t], part, tickets, tile, blockIdx.y, splits, lane))
            mma::store_tile<NB>(c[t], y, FP8 ? scale : nullptr, tile * 16, lane, n, m, 0);
    }
}

// The fp8 plan with the weights streamed through shared memory: each lane cp.async-copies its own two 16-byte pieces
// of each chunk into a per-warp ring of STAGES chunks (1 KB each), STAGES - 1 chunks ahead of the math, and reads them
// back itself (so no barrier: a lane only ever reads bytes it copied, after its own cp.async.wait_group). Why: the
// register plans above keep at most UNROLL (x2 when double-buffered) chunks in flight per warp and stall on them; the
// ring keeps STAGES - 1 in flight at no register cost. x is loaded (from L1) before the wait, for every batch tile.
template <int NB, int STAGES, int MINB>
__global__ void __launch_bounds__(kWarps * 32, MINB)
gemv_tc_async(const void* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x,
              float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m) {
    __shared__ __align__(16) uint4 ring[kWarps][STAGES][64];  // [warp][stage][piece a: lanes 0-31, piece b: 32-63]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x * kWarps + warp, splits = gridDim.y;
    if (tile * 16 >= n) return;  // no block-wide barriers below
    const uint8_t* wl = static_cast<const uint8_t*>(w) + (size_t)tile * 16 * k + lane * 16;
    const uint32_t mine = mma::smem_addr(&ring[warp][0][lane]);
    const mma::XRows<NB> xr(x, k, m, g, t4);
    const int chunks = k / 64;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);
    // one commit group per chunk, empty (zero-filled, nothing read) past the split's end, so wait_group counts match
    auto issue = [&](int ch, int st) {
        const bool valid = ch < c_end;
        const uint8_t* src = wl + (valid ? (size_t)ch * 1024 : 0);
        mma::cp_async16(mine + st * 1024, src, valid);
        mma::cp_async16(mine + st * 1024 + 512, src + 512, valid);
        mma::cp_async_commit();
    };
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) issue(c_begin + st, st);  // weights are constants: before the entry wait
    kernel_entry_barrier();

    float c[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    int st = 0;
    for (int ch = c_begin; ch < c_end; ++ch) {
        uint4 xv[NB][2];
#pragma unroll
        for (int j = 0; j < NB; ++j) xr.chunk(j, ch, xv[j]);
        mma::cp_async_wait<STAGES - 2>();  // this lane's copies of chunk ch have landed
        const uint4 va = ring[warp][st][lane], vb = ring[warp][st][32 + lane];
        issue(ch + STAGES - 1, st == 0 ? STAGES - 1 : st - 1);  // into chunk ch - 1's slot, already read
        uint4 A[2], B[2];
        fp8x16_to_bf16x16(va, A[0], A[1]);
        fp8x16_to_bf16x16(vb, B[0], B[1]);
#pragma unroll
        for (int j = 0; j < NB; ++j) mma::mma_chunk64(c[j], A, B, xv[j]);
        st = st + 1 == STAGES ? 0 : st + 1;
    }
    mma::cp_async_wait<0>();  // nothing left in flight into shared memory when the warp leaves

    if (mma::combine_splits<NB>(c, part, tickets, tile, blockIdx.y, splits, lane))
        mma::store_tile<NB>(c, y, scale, tile * 16, lane, n, m, 0);
}

}  // namespace tcv2

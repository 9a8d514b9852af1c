// Candidates for the tensor-core GEMV (kernels/gemv_tc.cu) at 9..32 rows of x, timed and checked by tc_gemv.cu.
// Why (2026-11-28, H200): fp8 batch 32 ran at 41% of its floor (24.7 ms a step) while bf16 batch 32 (every product
// on cuBLASLt) ran at 20.3 ms with twice the weight bytes. The plan's knobs now live in the engine's own
// gemv_tc_body (MT tiles a warp, double buffering, the fp16 route), so gemv_tc_v2 below instantiates that body with
// other settings: a candidate is the engine's code, not a copy of it. Template parameters, each one change:
//   FP8     fp8 weights in the tile layout (fp8.cuh) with per-row scales, or bf16 row-major
//   NB      batch tiles of 8 rows of x (2: 16 rows, 4: 32)
//   UNROLL  chunks loaded per batch
//   MT      16-row tiles per warp (1 = the plain plan): each x fragment a lane loads feeds MT tiles' mma
//   MINB    __launch_bounds__ minimum blocks per SM (registers)
//   DB      double-buffered: the next UNROLL chunks are loaded before this batch's math
//   F16     the fp16 route: x given as f16 (the buffer's bf16 type is nominal; unscaled here, x being small), weights
//           converted to f16 by the hardware cvt, f16 mma
// gemv_tc_async is a rejected plan kept for the record (the weights through a cp.async ring in shared memory).
#pragma once

namespace tcv2 {
constexpr int kWarps = kTcWarps;

template <bool FP8, int NB, int UNROLL, int MT, int MINB, bool DB = false, bool F16 = false>
__global__ void __launch_bounds__(kWarps * 32, MINB)
gemv_tc_v2(const void* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x,
           float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int m) {
    gemv_tc_body<FP8, NB, UNROLL, MT, DB, F16>(w, FP8 ? scale : nullptr, x, y, part, tickets, n, k, m, 0, nullptr);
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

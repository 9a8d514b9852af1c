// The fp8 tensor-core GEMV at 9..32 rows of x on Hopper's warpgroup MMA (wgmma, sm_90a only): the same product,
// arguments and workspace as the fp16 route of kernels/gemv_tc.cu (gemv_tc_fp8h_*), y[m, n] (+)= scale[n] * xscale[m] *
// sum_k W[n, k] * xh[m, k], with W e4m3 in the tile layout (fp8.cuh). The load-time tuner times it beside the
// portable builds (TensorCoreVariant.Warpgroup, WarpgroupDeep) and keeps whichever is fastest per shape.
//
// Why (ncu on the H200, gate_up at 32 rows, the wide fp16 build): 1.6 warps a scheduler, issue slots 27% busy, the
// top stalls an L1 scoreboard (every warp loads its own copy of x through L1) and fixed-latency dependencies (chains
// of mma.sync on one accumulator): bound by each warp's latency, not by DRAM (2.4 of 4.8 TB/s). Here the weights
// still stream into registers and are converted to f16 by the hardware cvt exactly as in the fp16 route, but feed
// wgmma.m64nNk16 as its A operand from registers (per warp the mma.m16n8k16 A fragment of its 16-row tile; the four
// warps of the warpgroup own four consecutive tiles), and x is the B operand from shared memory, copied once a block
// a chunk (cp.async, 128-byte swizzle) instead of once a warp. One asynchronous wgmma a k-step replaces NB mma.sync a
// warp, and the next chunk is converted while it runs. bench/micro/tc_gemv.cu -DQWQ_WGMMA, H200, best split each, 32 rows:
// qkv 26.7 -> 24.1 us, o 23.8 -> 21.7, gate_up 97.2 -> 89.3 (the deep build), down 71.2 -> 51.9; 16 rows: qkv, o,
// down 2-4% faster, gate_up 5% slower (the tuner keeps the portable build there).
//
// x arrives from gemv_tc_x_to_f16_wg (kernels/gemv_tc.cu) in the k order the weights' tile layout implies: in the tile
// layout lane (g, t4) holds k 16·t4 .. 16·t4 + 15 of its rows, and mma k-step s takes elements 4s .. 4s + 3 of them as
// the A fragment's columns (2t4, 2t4 + 1) and (2t4 + 8, 2t4 + 9) (mma::mma_chunk64). wgmma reads B from shared memory
// in its own k order, so each 64-k chunk of x is stored permuted: column L = 16s + j holds k = 16t + 4s + e for
// j = 2t + e (e < 2), and k = 16t + 4s + 2 + e for j = 8 + 2t + e.
//
// Shared memory: STAGES chunks of x, each N rows of 128 bytes (one 64-k chunk in f16 = one 128-byte swizzle row;
// K-major, canonical layout and descriptor as in attention_prefill_sm90a.cu), 1024-byte aligned.
// Requirements (host-checked): k % 64 == 0, k <= 32768 (the f16 x in the workspace), W / x 16-byte aligned.

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "kernels/sm90a needs the arch-specific target: nvcc -arch=compute_90a (wgmma); build.sh does this"
#endif

#include <cuda_fp16.h>

#include "../common.cuh"
#include "../fp8.cuh"
#include "../mma.cuh"
#include "../wgmma.cuh"

namespace gemv_tc_sm90a {
using namespace wg;

// wgmma_rs's four (shape, type) instructions differ only in those two strings and the operand numbering.
#define WGMMA_RS(SHAPE, TYPE, REGS, ACC, A_AND_B)                                                                   \
    asm volatile("wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " " REGS ", " A_AND_B ", 1, 1, 1, 0;\n" \
                 : ACC(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
// d (64 x N, fp32) += A (64 x 16, registers) * B (16 x N, shared, K-major: x [N rows][16 k]), N = 8 * NB; A and B
// f16, or bf16 (BF16).
template <int NB, bool BF16>
__device__ __forceinline__ void wgmma_rs(float (&d)[NB][4], const uint32_t (&a)[4], uint64_t desc_b) {
    static_assert(NB == 2 || NB == 4, "N = 16 or 32");
    if constexpr (NB == 4 && !BF16) WGMMA_RS("m64n32k16", "f16", WG_REGS16, WG_ACC16, "{%16, %17, %18, %19}, %20");
    else if constexpr (NB == 4)     WGMMA_RS("m64n32k16", "bf16", WG_REGS16, WG_ACC16, "{%16, %17, %18, %19}, %20");
    else if constexpr (!BF16)       WGMMA_RS("m64n16k16", "f16", WG_REGS8, WG_ACC8, "{%8, %9, %10, %11}, %12");
    else                            WGMMA_RS("m64n16k16", "bf16", WG_REGS8, WG_ACC8, "{%8, %9, %10, %11}, %12");
}
#undef WGMMA_RS

// BF16X: x is read as it is (bf16 [m, k], row-major) and staged into the shared ring by the block itself, permuted and
// times 2^64, instead of by a conversion kernel before the GEMV (gemv_tc_x_to_f16_wg: a launch a product, four a layer,
// ~2-3 us each inside a 32-row step of ~280 us a layer). The weights then go to bf16 as code * 2^-120 (fp8.cuh's
// three-instruction conversion) and the wgmma runs in bf16: the products are code * x * 2^-56, far from fp32's
// subnormals (x alone would put them there: code * 2^-120 * x), and the epilogue multiplies by 2^56, exactly. e4m3
// subnormal codes become bf16 subnormals (at most 2^-6 of a scale unit: fp8.cuh says why they cannot move a sum).
constexpr float kBf16xUndo = 0x1p56f;       // 2^(120 - 64)
constexpr uint32_t kBf16x2Pow64 = 0x5F805F80u;  // bf16x2 (2^64, 2^64)

// NB: batch tiles of 8 rows of x (the wgmma's N = 8 * NB). D: weight chunks in flight a warp (a register ring; even,
// so the A fragments alternate between two register sets). STAGES: x chunks in the shared ring. One warpgroup a
// block, 64 rows (four 16-row tiles); blockIdx.y splits k as in gemv_tc.cu.
template <int NB, int D, int STAGES, bool BF16X = false>
__device__ __forceinline__ void gemv_body(const void* __restrict__ w, const float* __restrict__ scale,
                                          const void* __restrict__ xp, const float* __restrict__ xscale,
                                          float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets,
                                          int n, int k, int m, int accumulate) {
    static_assert(NB == 2 || NB == 4, "N = 16 or 32");
    static_assert(D % 2 == 0 && STAGES >= 2, "an even register ring; at least a double-buffered x ring");
    constexpr int N = 8 * NB, kStage = N * 128;  // one x chunk: N rows of 128 bytes, a multiple of 1024
    constexpr int kThreads = 128;
    __shared__ __align__(1024) uint8_t ring_raw[STAGES * kStage + 1024];
    // The swizzle is a function of address bits [7, 10): the ring starts on a 1024-byte boundary.
    const uint32_t ring = (mma::smem_addr(ring_raw) + 1023u) & ~1023u;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int my_tile = blockIdx.x * 4 + warp;
    const int tile = min(my_tile, (n - 1) / 16);  // a warp past n computes the last tile (never stored): barriers below
    const uint8_t* wl = static_cast<const uint8_t*>(w) + (size_t)tile * 16 * k + lane * 16;
    const int chunks = k / 64, splits = gridDim.y;
    const int c_begin = (int)((long)chunks * blockIdx.y / splits), c_end = (int)((long)chunks * (blockIdx.y + 1) / splits);
    // Iterations padded to a multiple of D, so that no wgmma sits under a branch (ptxas would serialise them all): a
    // chunk past the split's end has zero weights and a zero-filled x slot, and adds exactly +0.
    const int iters = (c_end - c_begin + D - 1) / D * D;

    // This lane's two 16-byte pieces of chunk c (rows g and g + 8: fp8.cuh's tile layout), zeros past the split.
    auto load_w = [&](int c, uint4 (&v)[2]) {
        if (c < c_end) {
            v[0] = ld_stream_u4(wl + (size_t)c * 1024);
            v[1] = ld_stream_u4(wl + (size_t)c * 1024 + 512);
        } else {
            v[0] = v[1] = make_uint4(0, 0, 0, 0);
        }
    };
    // Chunk c of x rows 0..N-1 into a ring slot (zeros for rows past m or a chunk past the split), one commit group.
    auto issue_x = [&](int c, int slot) {
        const bool in = c < c_end;
#pragma unroll
        for (int p = tid; p < N * 8; p += kThreads) {
            const int r = p >> 3, q = p & 7;
            const bool valid = in && r < m;
            const __half* src = static_cast<const __half*>(xp) + (valid ? (size_t)r * k + (size_t)c * 64 + q * 8 : 0);
            mma::cp_async16(ring + slot * kStage + r * 128 + ((q ^ (r & 7)) << 4), src, valid);
        }
        mma::cp_async_commit();
    };
    // BF16X: this thread's 16-byte pieces of x chunk c (bf16, zeros past m or the split) into registers, then from
    // there into a ring slot: piece q of row r (k 8q .. 8q + 7, four pairs) goes as pair j to the slot's 4-byte unit
    // 16 (q % 2) + q / 2 + 4j of the row (gemv_tc_x_to_f16_wg's permutation), in the 128-byte swizzle, times 2^64.
    constexpr int XP = N * 8 / kThreads;  // pieces a thread
    static_assert(N * 8 % kThreads == 0, "whole pieces a thread");
    auto load_x = [&](int c, uint4 (&v)[XP]) {
        const bool in = c < c_end;
#pragma unroll
        for (int i = 0; i < XP; ++i) {
            const int p = tid + i * kThreads, r = p >> 3, q = p & 7;
            v[i] = in && r < m ? ld_ro_u4(static_cast<const __nv_bfloat16*>(xp) + (size_t)r * k + (size_t)c * 64 + q * 8)
                               : make_uint4(0, 0, 0, 0);
        }
    };
    auto store_x = [&](const uint4 (&v)[XP], int slot) {
        const uint32_t up_bits = kBf16x2Pow64;  // a register copy: device code cannot take a host constexpr's address
        const __nv_bfloat162 up = *reinterpret_cast<const __nv_bfloat162*>(&up_bits);
#pragma unroll
        for (int i = 0; i < XP; ++i) {
            const int p = tid + i * kThreads, r = p >> 3, q = p & 7;
            const uint32_t row = ring + slot * kStage + r * 128 + 4 * (q >> 1);
            const uint32_t pr[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const __nv_bfloat162 h = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&pr[j]), up);
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(row + (((4 * (q & 1) + j) ^ (r & 7)) << 4)),
                             "r"(*reinterpret_cast<const uint32_t*>(&h))
                             : "memory");
            }
        }
    };

    // The weights are constants: the first chunks head for L2 while the previous kernel finishes.
#pragma unroll
    for (int u = 0; u < D; ++u)
        if (c_begin + u < c_end) {
            prefetch_l2(wl + (size_t)(c_begin + u) * 1024);
            prefetch_l2(wl + (size_t)(c_begin + u) * 1024 + 512);
        }
    kernel_entry_barrier();  // x is the previous kernel's output

    uint4 wr[D][2];
#pragma unroll
    for (int u = 0; u < D; ++u) load_w(c_begin + u, wr[u]);
    uint4 xr[BF16X ? XP : 1];  // BF16X: x chunk i + STAGES - 1 on its way to the ring
    if constexpr (BF16X) {
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) {
            load_x(c_begin + st, xr);
            store_x(xr, st);
        }
        load_x(c_begin + STAGES - 1, xr);
    } else {
#pragma unroll
        for (int st = 0; st < STAGES - 1; ++st) issue_x(c_begin + st, st);
    }

    float acc[NB][4];  // per warp the mma.m16n8 C layout of NB n-tiles (attention_prefill_sm90a.cu), as gemv_tc.cu's c
#pragma unroll
    for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    uint32_t a[2][4][4];  // [parity of the chunk][k-step][A fragment]: the previous chunk's stay live until its wait

    for (int i0 = 0; i0 < iters; i0 += D) {
#pragma unroll
        for (int u = 0; u < D; ++u) {
            const int i = i0 + u, par = u & 1;
            uint4 ra[2], rb[2];  // rows g and g + 8: 16 f16 each (BF16X: bf16, times 2^-120)
            if constexpr (BF16X) {
                fp8x16_to_bf16x16_pow2(wr[u][0], ra[0], ra[1]);
                fp8x16_to_bf16x16_pow2(wr[u][1], rb[0], rb[1]);
            } else {
                fp8x16_to_f16x16(wr[u][0], ra[0], ra[1]);
                fp8x16_to_f16x16(wr[u][1], rb[0], rb[1]);
            }
#pragma unroll
            for (int s = 0; s < 4; ++s) {  // mma::mma_chunk64's fragments
                const uint4& A = ra[s >> 1];
                const uint4& B = rb[s >> 1];
                a[par][s][0] = (s & 1) ? A.z : A.x;
                a[par][s][1] = (s & 1) ? B.z : B.x;
                a[par][s][2] = (s & 1) ? A.w : A.y;
                a[par][s][3] = (s & 1) ? B.w : B.y;
            }
            load_w(c_begin + i + D, wr[u]);    // the ring entry just converted: D chunks ahead
            if constexpr (!BF16X) mma::cp_async_wait<STAGES - 2>();  // this thread's copies of chunk i have landed
            fence_proxy_async_smem();          // ... (BF16X: its stores, an iteration or more ago) visible to wgmma
            wg_wait<0>();                      // chunk i - 1's wgmma are done: its A registers and x slot are free
            pin(acc);
            pin(a[par ^ 1]);
            __syncthreads();  // every thread's copies of chunk i landed; every warp is past chunk i - 1's wait
            if constexpr (BF16X) {  // into chunk i - 1's slot; the next chunk's loads fly during this one's wgmma
                store_x(xr, (i + STAGES - 1) % STAGES);
                load_x(c_begin + i + STAGES, xr);
            } else {
                issue_x(c_begin + i + STAGES - 1, (i + STAGES - 1) % STAGES);  // into chunk i - 1's slot
            }
            const uint32_t slot = ring + (uint32_t)((i % STAGES) * kStage);
            wg_fence();
#pragma unroll
            for (int s = 0; s < 4; ++s) wgmma_rs<NB, BF16X>(acc, a[par][s], desc_kmajor(slot + 32 * s));
            wg_commit();
        }
    }
    wg_wait<0>();
    pin(acc);
    mma::cp_async_wait<0>();  // the padding copies: nothing in flight into shared memory when the block leaves
    if constexpr (BF16X) {
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][e] *= kBf16xUndo;  // exact: a power of two
    }

    if (my_tile * 16 < n && mma::combine_splits<NB>(acc, part, tickets, my_tile, blockIdx.y, splits, lane))
        mma::store_tile<NB>(acc, y, scale, my_tile * 16, lane, n, m, accumulate, BF16X ? nullptr : xscale);
}

}  // namespace gemv_tc_sm90a

// Launch: grid (ceil(n / 64), splits), block 128 threads, no dynamic shared memory; m <= 8 * NB. xh: f16 [m, k] in
// the permuted chunk order and xscale fp32 [m] (gemv_tc_x_to_f16_wg); part / tickets as gemv_tc.cu's. MINB: blocks
// per SM the registers must allow. The plans are the micro-benchmark's best: 2 chunks in flight at 4 x-stages for
// qkv, o and down at 32 rows, 4 chunks for gate_up, and 2 chunks, 3 stages, 6 blocks an SM at 16 rows.
#define QWQ_GEMV_TC_WG(SUFFIX, NB, D, STAGES, MINB)                                                                \
    extern "C" __global__ void __launch_bounds__(128, MINB)                                                        \
    gemv_tc_##SUFFIX(const void* __restrict__ w, const float* __restrict__ scale, const __half* __restrict__ xh,    \
                     const float* __restrict__ xscale, float* __restrict__ y, float* __restrict__ part,            \
                     int* __restrict__ tickets, int n, int k, int m, int accumulate) {                            \
        gemv_tc_sm90a::gemv_body<NB, D, STAGES>(w, scale, xh, xscale, y, part, tickets, n, k, m, accumulate);     \
    }

//             suffix            NB D STAGES MINB
QWQ_GEMV_TC_WG(fp8wg_n16,        2, 2, 3,     6)
QWQ_GEMV_TC_WG(fp8wg_n32,        4, 2, 4,     4)
QWQ_GEMV_TC_WG(fp8wg_n32_deep,   4, 4, 4,     4)

// The plans reading bf16 x [m, k] as it is (BF16X above: no conversion launch before them). At 16 rows 4 stages at 4
// blocks an SM (90 registers, no spill): session 21's 6-block build spilled (80 registers) and, though the load-time
// tuner took it for o, fp8 batch 16 ran 5% slower; this one was the micro-benchmark's fastest 16-row plan for qkv, o
// and down (session 22: 18.5 / 15.0 / 43.2 us against the f16 n16 build's 18.8 / 15.7 / 44.1 before its conversion).
#define QWQ_GEMV_TC_WGB(SUFFIX, NB, D, STAGES, MINB)                                                               \
    extern "C" __global__ void __launch_bounds__(128, MINB)                                                        \
    gemv_tc_##SUFFIX(const void* __restrict__ w, const float* __restrict__ scale,                                 \
                     const __nv_bfloat16* __restrict__ x, float* __restrict__ y, float* __restrict__ part,        \
                     int* __restrict__ tickets, int n, int k, int m, int accumulate) {                            \
        gemv_tc_sm90a::gemv_body<NB, D, STAGES, true>(w, scale, x, nullptr, y, part, tickets, n, k, m, accumulate); \
    }
//              suffix            NB D STAGES MINB
QWQ_GEMV_TC_WGB(fp8wgb_n16,       2, 2, 4,     4)
QWQ_GEMV_TC_WGB(fp8wgb_n32,       4, 2, 4,     4)
QWQ_GEMV_TC_WGB(fp8wgb_n32_deep,  4, 4, 4,     4)

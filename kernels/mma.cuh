// Tensor-core building blocks shared by the attention kernels (sm_80+): async global->shared copies,
// ldmatrix fragment loads and the bf16 m16n8k16 mma with fp32 accumulation.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "common.cuh"

namespace mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; when !valid, writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// 4-byte async global->shared copy (through L1: .cg takes 16-byte copies only); when !valid, writes 4 zero bytes and
// reads nothing.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
    const int src_bytes = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c += a * b, m16n8k16, bf16 inputs, fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a * b, m16n8k16, f16 inputs, fp32 accumulate (the fp16 route of gemv_tc.cu).
__device__ __forceinline__ void mma_f16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One 64-k chunk of the small-batch tensor-core GEMVs (gemv.cu, gemv_fp8.cu), where lane (g, t4) holds 16 contiguous
// k of W rows g and g+8 (wa, wb) and of x row g (xv), as bf16 in two 16-byte words each. A dot product does not
// care about the order of k as long as W and x use the same one: k-step s takes elements 4s..4s+3 of each lane's 16,
// as the A fragment's columns (2t4, 2t4+1) and (2t4+8, 2t4+9) and the B fragment's matching rows.
// F16: the operands are f16, not bf16.
template <bool F16 = false>
__device__ __forceinline__ void mma_chunk64(float (&c)[4], const uint4 (&wa)[2], const uint4 (&wb)[2], const uint4 (&xv)[2]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        const uint4& A = wa[s >> 1];
        const uint4& B = wb[s >> 1];
        const uint4& X = xv[s >> 1];
        const uint32_t a[4] = {(s & 1) ? A.z : A.x, (s & 1) ? B.z : B.x, (s & 1) ? A.w : A.y, (s & 1) ? B.w : B.y};
        if constexpr (F16) mma_f16_16816(c, a, (s & 1) ? X.z : X.x, (s & 1) ? X.w : X.y);
        else mma_bf16_16816(c, a, (s & 1) ? X.z : X.x, (s & 1) ? X.w : X.y);
    }
}

// The x a lane feeds the small-batch GEMVs' mma as its B operand: for batch tile j (rows 8j .. 8j + 7 of x), row 8j + g
// at k 16·t4 .. 16·t4 + 15 of each 64-k chunk, in two 16-byte words; a row at or past m loads nothing and gives zeros.
template <int NB>
struct XRows {
    const uint16_t* p[NB];
    bool ok[NB];
    __device__ __forceinline__ XRows(const __nv_bfloat16* x, int k, int m, int g, int t4) {
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            ok[j] = 8 * j + g < m;
            p[j] = reinterpret_cast<const uint16_t*>(x) + (size_t)(ok[j] ? 8 * j + g : 0) * k + 16 * t4;
        }
    }
    // Batch tile j's two words of chunk ch.
    __device__ __forceinline__ void chunk(int j, int ch, uint4 (&xv)[2]) const {
        const size_t off = (size_t)ch * 64;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        xv[0] = ok[j] ? ld_ro_u4(p[j] + off) : zero;
        xv[1] = ok[j] ? ld_ro_u4(p[j] + off + 8) : zero;
    }
};

// Two floats -> packed bf16x2 (lo at the lower address), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// ---- the small-batch tensor-core GEMVs' epilogue (gemv_tc.cu, gemv_int4.cu) ------------------------------------------
// A warp owns a 16-row tile and NB batch tiles of 8: its C fragments c[j] hold c0, c1 = (row g, batches 8j + 2t4, +1)
// and c2, c3 = (row g + 8, same batches).

// Split-k: every split writes its fragments to part [tiles, splits, 128 * NB] (fragment order, coalesced), and the
// warp that takes the tile's last ticket adds them in split order (so a replay is bit-identical) and resets the ticket.
// Returns whether this warp holds the tile's full sums and must store them; always true without splits.
template <int NB>
__device__ __forceinline__ bool combine_splits(float (&c)[NB][4], float* __restrict__ part, int* __restrict__ tickets, int tile,
                                               int split, int splits, int lane) {
    if (splits == 1) return true;
    constexpr int kOut = 16 * 8 * NB;
    float* mine = part + ((size_t)tile * splits + split) * kOut;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[(j * 4 + e) * 32 + lane] = c[j][e];
    if (!warp_takes_last_ticket(tickets + tile, splits)) return false;
    const float* all = part + (size_t)tile * splits * kOut;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float s = 0.f;
            for (int sp = 0; sp < splits; ++sp) s += __ldcg(all + (size_t)sp * kOut + (j * 4 + e) * 32 + lane);
            c[j][e] = s;
        }
    if (lane == 0) tickets[tile] = 0;  // ready for the next launch (and graph replay)
    return true;
}

// y[b, row] (+)= scale[row] · c · xscale[b] (scale, xscale may be null) for the tile's rows < n and batches < m.
// xscale: the power of two each row of x was divided by on its way to f16 (gemv_tc.cu), so the product is exact.
template <int NB>
__device__ __forceinline__ void store_tile(const float (&c)[NB][4], float* __restrict__ y, const float* __restrict__ scale,
                                           int row0, int lane, int n, int m, int accumulate,
                                           const float* __restrict__ xscale = nullptr) {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = row0 + g + (e >= 2 ? 8 : 0), b = 8 * j + 2 * t4 + (e & 1);
            if (b < m && row < n) {
                float* dst = y + (size_t)b * n + row;
                float v = scale != nullptr ? scale[row] * c[j][e] : c[j][e];
                if (xscale != nullptr) v *= xscale[b];
                *dst = accumulate ? *dst + v : v;
            }
        }
}

}  // namespace mma

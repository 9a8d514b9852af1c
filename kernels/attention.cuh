// Pieces shared by the prefill and decode attention kernels: both run S = Q·Kᵀ → online softmax → O += P·V on
// m16n8k16 tiles, one warp per 16 query rows ("lo" = rows g, "hi" = rows g + 8 of the lane's quad group).
#pragma once
#include "mma.cuh"

namespace attn {

// Where one KV head's keys live, for both attention kernels. A key tile is 64 keys (both kernels' BN).
//   contiguous cache (block_table null): one layer is [nkv, max_ctx, D]; key n of head h is row h * max_ctx + n.
//   paged pool (docs/ENGINE_V2.md): one layer is [blocks, nkv, 64, D]; entry i of the sequence's block table holds
//   keys [64 i, 64 i + 64), so a tile that starts on a multiple of 64 is one block and its rows are contiguous.
struct KvLayout {
    static constexpr int BLOCK = 64;
    const int* block_table;
    int nkv;
    int max_ctx;
    // Row (in units of D elements) of key n0 (a multiple of 64 when paged) of head kvh.
    __device__ __forceinline__ size_t tile_row(int kvh, int n0) const {
        if (block_table) return ((size_t)__ldg(block_table + n0 / BLOCK) * nkv + kvh) * BLOCK + (n0 % BLOCK);
        return (size_t)kvh * max_ctx + n0;
    }
};

// Q fragments (the A operand, row-major 16x16 per k-step) straight from global memory: row g from q_lo and row
// g + 8 from q_hi, zeros for rows that do not exist (v_lo / v_hi false).
template <int KSTEPS>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[KSTEPS][4], const __nv_bfloat16* q_lo,
                                                 const __nv_bfloat16* q_hi, bool v_lo, bool v_hi, int t4) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        const int c = ks * 16 + 2 * t4;
        qf[ks][0] = v_lo ? __ldg(reinterpret_cast<const unsigned int*>(q_lo + c)) : 0u;
        qf[ks][1] = v_hi ? __ldg(reinterpret_cast<const unsigned int*>(q_hi + c)) : 0u;
        qf[ks][2] = v_lo ? __ldg(reinterpret_cast<const unsigned int*>(q_lo + c + 8)) : 0u;
        qf[ks][3] = v_hi ? __ldg(reinterpret_cast<const unsigned int*>(q_hi + c + 8)) : 0u;
    }
}

// One online-softmax step over NT score tiles already scaled to the log2 domain (masked entries -inf):
// updates the running max m and sum l of rows lo/hi, turns s into exp2(s - max) in place and returns the factors
// (alpha) by which the output accumulated so far must be rescaled. Row statistics are reduced over the quad.
template <int NT>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float& m_lo, float& m_hi, float& l_lo, float& l_hi,
                                               float& alpha_lo, float& alpha_hi) {
    const float neg_inf = -__int_as_float(0x7f800000);
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    // A row with nothing visible yet keeps max -inf; use 0 as the base so exp2 gives 0, not NaN.
    const float base_lo = (mx_lo == neg_inf) ? 0.f : mx_lo;
    const float base_hi = (mx_hi == neg_inf) ? 0.f : mx_hi;
    alpha_lo = exp2f(m_lo - base_lo);
    alpha_hi = exp2f(m_hi - base_hi);
    m_lo = mx_lo;
    m_hi = mx_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        s[nt][0] = exp2f(s[nt][0] - base_lo);
        s[nt][1] = exp2f(s[nt][1] - base_lo);
        s[nt][2] = exp2f(s[nt][2] - base_hi);
        s[nt][3] = exp2f(s[nt][3] - base_hi);
        sum_lo += s[nt][0] + s[nt][1];
        sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
}

}  // namespace attn

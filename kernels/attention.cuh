// Pieces shared by the prefill and decode attention kernels: both run S = Q·Kᵀ → online softmax → O += P·V on
// m16n8k16 tiles, one warp per 16 query rows ("lo" = rows g, "hi" = rows g + 8 of the lane's quad group).
#pragma once
#include "fp8.cuh"
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

// ---- the fp8 KV cache (docs/KV_CACHE.md) ----------------------------------------------------------------------------
// Per layer, K and V are e4m3 codes [blocks, nkv, 64, D] (bytes) with one fp32 scale per (slot, head),
// [blocks, nkv, 64]:
// the same rows as the bf16 pool (KvLayout::tile_row), one byte per element, and the scale of row r at index r. Both
// kernels stage a tile's codes and scales in shared memory with cp.async (the same ring as for bf16 tiles, a quarter
// of the bytes: 1 instead of 2 per element, and no padding since nothing reads them with ldmatrix), then, once it has
// landed, expand it into the bf16 tile the mma pipeline reads: element = bf16(float(code) * scale), exactly what the
// CPU reference attends to up to that last rounding to bf16.

// Cache element types of the attention kernels' templates: bf16 (the default) or e4m3 codes with per-row scales.
template <typename T>
__host__ __device__ constexpr bool is_fp8_cache() { return sizeof(T) == 1; }

// Bytes of one staged fp8 tile pair (K and V codes [2][BN][D], then their scales [2][BN]).
template <int D, int BN>
__host__ __device__ constexpr int fp8_stage_bytes() { return 2 * BN * D + 2 * BN * 4; }

// Starts the async copy of the fp8 K and V tile of `rows` valid keys (0 < rows; at most BN) whose first row is row0
// (a multiple of BN: a whole block) into one stage: codes [2][BN][D] then scales [2][BN]. Rows past `rows` are
// zero-filled and read nothing, as for bf16 tiles. Commit is the caller's.
template <int D, int BN, int THREADS>
__device__ __forceinline__ void fp8_tile_async(unsigned char* stage, const uint8_t* __restrict__ k_codes,
                                               const uint8_t* __restrict__ v_codes, const float* __restrict__ k_scales,
                                               const float* __restrict__ v_scales, size_t row0, int rows) {
    static_assert(D % 16 == 0, "a row of codes is whole 16-byte chunks");
    constexpr int ROW_CHUNKS = D / 16;
    constexpr int TILE_CHUNKS = BN * ROW_CHUNKS;
    unsigned char* s_k = stage;
    unsigned char* s_v = stage + BN * D;
    float* s_scales = reinterpret_cast<float*>(stage + 2 * BN * D);  // [2][BN]
#pragma unroll
    for (int i = 0; i < (TILE_CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        if (TILE_CHUNKS % THREADS == 0 || c < TILE_CHUNKS) {
            const int r = c / ROW_CHUNKS;
            const int cc = c % ROW_CHUNKS;
            const bool valid = r < rows;
            const size_t src = (row0 + (valid ? r : 0)) * D + cc * 16;
            mma::cp_async16(mma::smem_addr(s_k + r * D + cc * 16), k_codes + src, valid);
            mma::cp_async16(mma::smem_addr(s_v + r * D + cc * 16), v_codes + src, valid);
        }
    }
    // Scales: 4 rows per 16-byte chunk, BN / 4 chunks each for K and V; a chunk is copied when its first row is valid
    // (the others of it are in the same block, so the read stays in the pool), and the expansion ignores the scales
    // of rows past `rows` anyway.
    constexpr int SCALE_CHUNKS = BN / 4;
    static_assert(2 * SCALE_CHUNKS <= THREADS, "one scale chunk per thread");
    if (threadIdx.x < 2 * SCALE_CHUNKS) {
        const bool is_v = threadIdx.x >= SCALE_CHUNKS;
        const int c = is_v ? threadIdx.x - SCALE_CHUNKS : threadIdx.x;
        const bool valid = 4 * c < rows;
        const float* src = (is_v ? v_scales : k_scales) + row0 + (valid ? 4 * c : 0);
        mma::cp_async16(mma::smem_addr(s_scales + (is_v ? BN : 0) + 4 * c), src, valid);
    }
}

// Expands one landed stage (fp8_tile_async) into bf16 K and V tiles [BN][LDS]: element = bf16(float(code) * scale),
// one fp32 product rounded to nearest even. Rows past `rows` are stored as zeros without reading their staged bytes,
// so nothing unwritten (NaN included) can reach the mma through 0 * NaN. The caller synchronises before and after.
template <int D, int BN, int THREADS, int LDS>
__device__ __forceinline__ void fp8_tile_to_bf16(const unsigned char* stage, __nv_bfloat16* dK, __nv_bfloat16* dV,
                                                 int rows) {
    constexpr int ROW_CHUNKS = D / 16;
    constexpr int CHUNKS = 2 * BN * ROW_CHUNKS;  // K then V
    const float* s_scales = reinterpret_cast<const float*>(stage + 2 * BN * D);
#pragma unroll
    for (int i = 0; i < (CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        if (CHUNKS % THREADS == 0 || c < CHUNKS) {
            const int which = c / (BN * ROW_CHUNKS);  // 0: K, 1: V
            const int rc = c - which * (BN * ROW_CHUNKS);
            const int r = rc / ROW_CHUNKS;
            const int cc = rc % ROW_CHUNKS;
            __nv_bfloat16* dst = (which ? dV : dK) + r * LDS + cc * 16;
            if (r >= rows) {
                *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
                *reinterpret_cast<uint4*>(dst + 8) = make_uint4(0u, 0u, 0u, 0u);
                continue;
            }
            const float sc = s_scales[which * BN + r];
            const uint4 raw = *reinterpret_cast<const uint4*>(stage + which * BN * D + r * D + cc * 16);
            uint4 first, second;
            fp8x16_to_bf16x16(raw, first, second);  // exact: every e4m3 value is a bf16 value
            float f[8];
            unpack_bf16x8(first, f);
#pragma unroll
            for (int e = 0; e < 8; ++e) f[e] *= sc;
            *reinterpret_cast<uint4*>(dst) = pack_bf16x8(f);
            unpack_bf16x8(second, f);
#pragma unroll
            for (int e = 0; e < 8; ++e) f[e] *= sc;
            *reinterpret_cast<uint4*>(dst + 8) = pack_bf16x8(f);
        }
    }
}

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

// Causal GQA attention for prefill (T >= 1 new tokens on top of an existing KV cache), flash-attention style.
//
// Layouts (docs/CONTRACTS.md, docs/ENGINE_V2.md), per sequence:
//   q    bf16 [T, nq, D]               tokens at absolute positions start_pos .. start_pos+T-1 (RoPE applied)
//   K, V bf16 [blocks, nkv, 64, D]     one layer of the paged pool, through the sequence's block table
//                                      (attn::KvLayout); positions 0 .. start_pos+T-1 already written
//   out  bf16 [T, nq, D]
// Query row i (absolute position start_pos+i) attends to keys 0 .. start_pos+i.
//
// Scheme: one thread block per (query head, tile of BM = 16*WARPS query rows). Each warp owns 16 query rows and
// keeps their Q fragments in registers for the whole kernel, so the score matrix never exists outside registers:
//   S = Q K^T   mma.m16n8k16 bf16 -> fp32 (K tile as the "col" B operand = K row-major, ldmatrix)
//   online softmax in fp32 (exp2 with scale*log2(e) folded in), P rounded to bf16 in registers
//   O += P V    (P re-used directly as the A operand: the m16n8 accumulator layout of two adjacent n-tiles is
//                the m16k16 A layout; V via ldmatrix.trans)
// K/V tiles of BN = 64 keys are staged in shared memory with cp.async, double buffered: the copy of tile j+1
// overlaps the math on tile j. Rows are padded by 16 bytes so the 8 rows an ldmatrix phase reads fall in
// distinct bank groups. Keys past the visible range are zero-filled (cp.async src-size 0) so that garbage or
// NaN in unwritten cache slots cannot leak in through 0 * NaN.
// Causality: a block stops at the last tile its last row can see; inside, a warp skips tiles entirely above
// its own rows, and applies the per-element mask only on tiles that cross its diagonal.
// Blocks are issued heaviest-first (the last query tiles see the most keys) for load balance, with the query
// heads of one m-tile adjacent so the GQA group's K/V tiles are shared through L2.
//
// Requires sm_80+ (mma.sync bf16, ldmatrix, cp.async).

#include "attention.cuh"

namespace attn_prefill {

constexpr int BN = 64;  // keys per tile
static_assert(BN == attn::KvLayout::BLOCK, "a key tile must be one KV block");

using mma::smem_addr;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::ldmatrix_x4;
using mma::ldmatrix_x4_trans;
using mma::mma_bf16_16816;
using mma::pack_bf16x2;
__device__ __forceinline__ void cp_async_wait_all() { cp_async_wait<0>(); }

// T_CACHE: the cache element, __nv_bfloat16, or uint8_t for the fp8 cache (e4m3 codes, with k_scales / v_scales
// [blocks, nkv, 64]: attention.cuh). An fp8 tile is staged by cp.async like a bf16 one and expanded to bf16 in shared
// memory when it has landed; everything from the mma on is the same. The chunk's own keys are read back from the pool
// like every other, so its rows attend to the quantized K and V, as the CPU reference does.
template <int D, int WARPS, typename T_CACHE = __nv_bfloat16>
__device__ __forceinline__ void prefill(const __nv_bfloat16* __restrict__ q, const T_CACHE* __restrict__ k_cache,
                                        const T_CACHE* __restrict__ v_cache, __nv_bfloat16* __restrict__ out,
                                        int T, int start_pos, int nq, int nkv, int max_ctx, float scale,
                                        const int* __restrict__ block_table = nullptr,
                                        const float* __restrict__ k_scales = nullptr,
                                        const float* __restrict__ v_scales = nullptr) {
    static_assert(D % 16 == 0 && D <= 256, "head_dim must be a multiple of 16");
    constexpr int THREADS = WARPS * 32;
    constexpr int BM = 16 * WARPS;
    constexpr int LDS = D + 8;          // shared row stride (elements): +16 B keeps ldmatrix conflict-free
    constexpr int KSTEPS = D / 16;      // k-steps of Q K^T
    constexpr int DT = D / 8;           // n-tiles of the output
    constexpr int NT = BN / 8;          // n-tiles of the scores
    constexpr float LOG2E = 1.4426950408889634f;
    const float NEG_INF = -__int_as_float(0x7f800000);
    constexpr bool FP8 = attn::is_fp8_cache<T_CACHE>();
    constexpr int TILES = FP8 ? 1 : 2;  // bf16 tiles the warps read: the double buffer, or fp8's one expanded tile

    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [TILES][BN][LDS]
    __nv_bfloat16* sV = sK + TILES * BN * LDS;                        // [TILES][BN][LDS]
    // fp8: the staged codes and scales, [2][attn::fp8_stage_bytes<D, BN>()]
    [[maybe_unused]] unsigned char* sStaged = reinterpret_cast<unsigned char*>(sV + TILES * BN * LDS);

    const int head = blockIdx.x;
    const int m_tile = gridDim.y - 1 - blockIdx.y;  // heaviest tiles first
    const int m0 = m_tile * BM;
    const int kvh = head / (nq / nkv);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;   // accumulator row within the 16-row slab
    const int t4 = lane & 3;   // accumulator column pair

    const int block_rows = min(BM, T - m0);
    const int kv_end = start_pos + m0 + block_rows;  // keys [0, kv_end) are visible to some row of this block
    const int n_tiles = (kv_end + BN - 1) / BN;

    const attn::KvLayout kv{block_table, nkv, max_ctx};

    auto load_tile = [&](int tile, int stage) {
        const int n0 = tile * BN;
        const size_t row0 = kv.tile_row(kvh, n0);  // tile_row needs n0 < kv_end, true for every tile < n_tiles
        if constexpr (FP8) {
            attn::fp8_tile_async<D, BN, THREADS>(sStaged + stage * attn::fp8_stage_bytes<D, BN>(), k_cache, v_cache,
                                                 k_scales, v_scales, row0, kv_end - n0);
        } else {
            attn::bf16_tile_async<D, BN, THREADS, LDS>(sK + stage * BN * LDS, sV + stage * BN * LDS, k_cache, v_cache,
                                                       row0, kv_end - n0);
        }
    };

    load_tile(0, 0);
    cp_async_commit();

    // This warp's 16 query rows: rows wr0+g and wr0+g+8 belong to this thread.
    const int wr0 = m0 + warp * 16;
    const bool warp_active = wr0 < T;
    const int warp_first_pos = start_pos + wr0;
    const int warp_last_pos = start_pos + min(wr0 + 15, T - 1);
    const int pos_lo = start_pos + wr0 + g;
    const int pos_hi = pos_lo + 8;

    // Q fragments (A operand, row-major 16x16 per k-step), straight from global: read once per block.
    uint32_t qf[KSTEPS][4];
    {
        const int r_lo = wr0 + g;
        const int r_hi = r_lo + 8;
        const bool v_lo = r_lo < T;
        const bool v_hi = r_hi < T;
        const __nv_bfloat16* q_lo = q + ((size_t)(v_lo ? r_lo : 0) * nq + head) * D;
        const __nv_bfloat16* q_hi = q + ((size_t)(v_hi ? r_hi : 0) * nq + head) * D;
        attn::load_q_fragments(qf, q_lo, q_hi, v_lo, v_hi, t4);
    }

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_lo = NEG_INF, m_hi = NEG_INF;  // running max (log2 domain, scaled)
    float l_lo = 0.f, l_hi = 0.f;          // running sum, per-thread partial (reduced over the quad at the end)
    const float sl2 = scale * LOG2E;

    // ldmatrix addressing: lane supplies row (lane & 7) of 8x8 matrix (lane >> 3).
    const int lm_mat = lane >> 3;
    const int lm_row = lane & 7;

    for (int j = 0; j < n_tiles; ++j) {
        cp_async_wait_all();
        __syncthreads();  // tile j visible to all; everyone is done with tile j-1, so its stage can be refilled
        if (j + 1 < n_tiles) load_tile(j + 1, (j + 1) & 1);
        cp_async_commit();
        if constexpr (FP8) {  // tile j's codes landed: expand them into the one bf16 tile (everyone is done with j-1's)
            attn::fp8_tile_to_bf16<D, BN, THREADS, LDS>(sStaged + (j & 1) * attn::fp8_stage_bytes<D, BN>(), sK, sV,
                                                        kv_end - j * BN);
            __syncthreads();
        }

        const int n0 = j * BN;
        if (!warp_active || n0 > warp_last_pos) continue;  // whole tile above this warp's diagonal

        const __nv_bfloat16* tK = sK + (j % TILES) * BN * LDS;
        const __nv_bfloat16* tV = sV + (j % TILES) * BN * LDS;

        // ---- S = Q K^T (16 x 64 per warp)
        float s[NT][4];
#pragma unroll
        for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                // matrices: (keys +0..7, dims lo), (keys +0..7, dims hi), (keys +8..15, dims lo), (keys +8..15, dims hi)
                const int key_row = np * 16 + (lm_mat >> 1) * 8 + lm_row;
                const int col = ks * 16 + (lm_mat & 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, smem_addr(tK + key_row * LDS + col));
                mma_bf16_16816(s[2 * np], qf[ks], b0, b1);
                mma_bf16_16816(s[2 * np + 1], qf[ks], b2, b3);
            }
        }

        // ---- causal mask (only where the tile crosses this warp's diagonal: attn::MayMask), online softmax, O += P V
        auto softmax_pv = [&](auto may_mask) {
            if constexpr (decltype(may_mask)::value) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = n0 + nt * 8 + 2 * t4 + (e & 1);
                        const int pos = (e < 2) ? pos_lo : pos_hi;
                        if (key > pos) s[nt][e] = NEG_INF;  // raw scores: the scale is folded into the exponent
                    }
                }
            }
            float alpha_lo, alpha_hi;
            attn::online_softmax_scaled(s, sl2, m_lo, m_hi, l_lo, l_hi, alpha_lo, alpha_hi);
            attn::rescale_output(o, alpha_lo, alpha_hi);
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                uint32_t a[4];
                a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
                a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
                a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < DT / 2; ++dp) {
                    // matrices: (keys lo, dims +0..7), (keys hi, dims +0..7), (keys lo, dims +8..15), (keys hi, dims +8..15)
                    const int key_row = kk * 16 + (lm_mat & 1) * 8 + lm_row;
                    const int col = dp * 16 + (lm_mat >> 1) * 8;
                    uint32_t b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, smem_addr(tV + key_row * LDS + col));
                    mma_bf16_16816(o[2 * dp], a, b0, b1);
                    mma_bf16_16816(o[2 * dp + 1], a, b2, b3);
                }
            }
        };
        if (n0 + BN - 1 > warp_first_pos) softmax_pv(attn::MayMask<true>{});
        else softmax_pv(attn::MayMask<false>{});
    }
    cp_async_wait_all();  // nothing may be in flight when the block exits

    if (!warp_active) return;
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    // Every valid row sees at least key 0, so l > 0 for it; rows >= T are never stored.
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    const float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;

    const int r_lo = wr0 + g;
    const int r_hi = r_lo + 8;
    if (r_lo < T) {
        __nv_bfloat16* dst = out + ((size_t)r_lo * nq + head) * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(dst + dt * 8) = pack_bf16x2(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
    }
    if (r_hi < T) {
        __nv_bfloat16* dst = out + ((size_t)r_hi * nq + head) * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(dst + dt * 8) = pack_bf16x2(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
    }
}

}  // namespace attn_prefill

// Paged, many sequences in one launch (docs/ENGINE_V2.md). Grid (nq, max m-tiles over the sequences, sequences),
// block WARPS*32 threads, dynamic smem 2 stages * (K + V) * 64 * (D+8) * 2 bytes; BM = 16*WARPS = 128 (8 warps).
// seq_info int32 [sequences, 4] = {first query row in q/out, query rows T, cached positions before them (start_pos),
// unused}; block_tables int32 [sequences, max_blocks]. K and V are one layer of the pool, [blocks, nkv, 64, D].
// Sequence z's rows are q[first .. first+T) at positions start_pos .. start_pos+T-1; m-tiles past T exit at once.
#define QWQ_ATTN_PREFILL_PAGED_ENTRY(D, WARPS)                                                                  \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 1) attention_prefill_paged_bf16_d##D(              \
        const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,                          \
        const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out,                              \
        const int* __restrict__ seq_info, const int* __restrict__ block_tables, int max_blocks, int nq, int nkv, \
        float scale) {                                                                                          \
        kernel_entry_barrier();                                                                                 \
        const int4 info = reinterpret_cast<const int4*>(seq_info)[blockIdx.z];                                  \
        const int T = info.y;                                                                                   \
        if ((int)(gridDim.y - 1 - blockIdx.y) * 16 * WARPS >= T) return;                                        \
        const size_t first = (size_t)info.x * nq * D;                                                           \
        attn_prefill::prefill<D, WARPS>(q + first, k_pool, v_pool, out + first, T, info.z, nq, nkv, 0, scale,  \
                                        block_tables + (size_t)blockIdx.z * max_blocks);                        \
    }

QWQ_ATTN_PREFILL_PAGED_ENTRY(32, 8)
QWQ_ATTN_PREFILL_PAGED_ENTRY(64, 8)
QWQ_ATTN_PREFILL_PAGED_ENTRY(128, 8)

// The same over the fp8 KV cache (docs/KV_CACHE.md): K and V e4m3 codes [blocks, nkv, 64, D] with scales k_scales,
// v_scales fp32 [blocks, nkv, 64]; grid, block and every other argument as the bf16 entry. Dynamic smem = one bf16 K
// and V tile 2 * 64 * (D+8) * 2 bytes + 2 stages * attn::fp8_stage_bytes = 2 * (2 * 64 * (D+16) + 2 * 64 * 4)
// (72704 for D=128).
#define QWQ_ATTN_PREFILL_PAGED_FP8_ENTRY(D, WARPS)                                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 1) attention_prefill_paged_fp8_d##D(               \
        const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ k_pool,                                \
        const uint8_t* __restrict__ v_pool, const float* __restrict__ k_scales,                                 \
        const float* __restrict__ v_scales, __nv_bfloat16* __restrict__ out,                                    \
        const int* __restrict__ seq_info, const int* __restrict__ block_tables, int max_blocks, int nq, int nkv, \
        float scale) {                                                                                          \
        kernel_entry_barrier();                                                                                 \
        const int4 info = reinterpret_cast<const int4*>(seq_info)[blockIdx.z];                                  \
        const int T = info.y;                                                                                   \
        if ((int)(gridDim.y - 1 - blockIdx.y) * 16 * WARPS >= T) return;                                        \
        const size_t first = (size_t)info.x * nq * D;                                                           \
        attn_prefill::prefill<D, WARPS, uint8_t>(q + first, k_pool, v_pool, out + first, T, info.z, nq, nkv, 0, \
                                                 scale, block_tables + (size_t)blockIdx.z * max_blocks,         \
                                                 k_scales, v_scales);                                           \
    }

QWQ_ATTN_PREFILL_PAGED_FP8_ENTRY(32, 8)
QWQ_ATTN_PREFILL_PAGED_FP8_ENTRY(64, 8)
QWQ_ATTN_PREFILL_PAGED_FP8_ENTRY(128, 8)

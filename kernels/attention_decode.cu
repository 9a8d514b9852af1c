// GQA attention for one decode token per sequence over the paged KV pool, split across thread blocks
// (flash-decoding).
//
// Layouts (docs/CONTRACTS.md, docs/ENGINE_V2.md), per sequence (row) b of the batch:
//   q    bf16 [1, nq, D]               the new token (RoPE applied), at position ctx_len-1 (ctx_len: in the plan)
//   K, V bf16 [blocks, nkv, 64, D]     one layer of the paged pool, through the row's block table
//                                      (attn::KvLayout); positions 0 .. ctx_len-1 written
//   out  bf16 [1, nq, D]
//   workspace: part_o fp32 [slots, nq, D], then part_ml float2 [slots, nq] = (max in log2 units, sum)
//
// Splits per row (since decode-row-splits): the host plans each step's splits from its context lengths
// (AttentionOps.PlanDecodeSplits): a fixed number of grid slots per KV head (one wave of the blocks that fit, at least
// one per row: AttentionOps.DecodeSplitSlots, 33 for the bf16 cache on a 132-SM H100/H200), dealt so that every split
// reads about the same number of key tiles, whatever the row. Before it the split count was one per batch, so a 32k
// row beside 1k rows had as many splits as they did, each 32 times as long: the step waited for it.
//
// CUDA-graph safety: the decode step is captured once and replayed while contexts grow, so the plan (with the
// context lengths) is read from device memory (the host writes them with the step's inputs) and the grid (slots x nkv) is
// fixed by the host from the batch size alone.
//
// Programmatic launch (common.cuh): the split kernel passes kernel_entry_barrier() late. Before it, a block reads only
// what the host wrote before the step (the plan, the block table) and K/V rows the kernel before it (this
// layer's RoPE, which writes position ctx_len-1 alone) cannot touch: its first tiles, when they end before ctx_len-1,
// start loading while RoPE finishes, and unused slots exit without waiting. Blocks are dealt slot-major (all KV heads'
// slot 0, then slot 1, ...) so the used slots are the grid's first blocks, resident in the first wave.
//
// Split kernel: one block per (slot, kv head), 4 warps. It handles the whole GQA group (G = nq/nkv <= 16 query
// heads) so each K/V element is read exactly once: the group's heads are the 16 "rows" of an m16n8k16 tensor-core
// tile (rows >= G are zero and ignored), which turns the memory-bound GEMV into the same register-resident
// S = Q K^T -> online softmax -> O += P V pipeline as the prefill kernel. Tiles of 64 keys are streamed through a
// 3-stage cp.async ring (16-byte copies, ~2 tiles in flight per block); warp w takes keys 16w..16w+15 of each
// tile with its own running max/sum/output, and the 4 warps are merged through shared memory at the end.
// Combine kernel: one block per (query head, row) merges the row's active splits with a log-sum-exp rescale. When the whole
// context fits in one split, the split kernel writes the final bf16 output itself and the combine block exits.
//
// Requires sm_80+ (mma.sync bf16, ldmatrix, cp.async).

#include "attention.cuh"

namespace attn_decode {

constexpr int BN = 64;       // keys per tile (16 per warp)
constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int STAGES = 3;
static_assert(BN == attn::KvLayout::BLOCK, "a key tile must be one KV block");

using mma::smem_addr;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::ldmatrix_x4;
using mma::ldmatrix_x4_trans;
using mma::mma_bf16_16816;
using mma::pack_bf16x2;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// Which keys a split block reads: the host's plan for the step (AttentionOps.PlanDecodeSplits). Grid slot g reads
// split_work[g] = {row (-1: unused slot), split of the row, keys per split, the row's context length}: everything it
// needs in one 16-byte load, so its first tile loads issue one load latency after it starts, as with a split count per
// batch. The combine reads split_rows[b] = {first slot, splits, keys per split, context length} of its row. Lengths
// are clamped to the table; splits whose range starts past the context are inactive (not in a consistent plan).
struct RowSplits {
    int row;     // the batch row, -1: a slot no row uses
    int split;   // this slot's split of the row (split kernel), or the row's first slot (combine)
    int ctx;     // clamped context length
    int chunk;   // keys per split (multiple of BN)
    int active;  // splits with a non-empty range: [s*chunk, min((s+1)*chunk, ctx))
};
__device__ __forceinline__ RowSplits row_splits(int4 e, int max_ctx) {
    RowSplits p;
    p.row = e.x;
    p.split = e.y;
    p.chunk = e.z < BN ? BN : e.z;
    p.ctx = e.w < 0 ? 0 : (e.w > max_ctx ? max_ctx : e.w);
    p.active = (p.ctx + p.chunk - 1) / p.chunk;
    return p;
}

template <int D>
constexpr int split_smem_bytes() {
    constexpr int ring = STAGES * 2 * BN * (D + 8) * 2;
    constexpr int merge = WARPS * 16 * D * 4 + WARPS * 16 * 2 * 4;
    return ring > merge ? ring : merge;
}

// Shared memory of the fp8-cache split kernel: the 3-stage ring of staged codes and scales (attn::fp8_tile_async),
// which the mma reads in place, or the cross-warp merge if larger.
template <int D>
constexpr int split_smem_bytes_fp8() {
    constexpr int ring = STAGES * attn::fp8_stage_bytes<D, BN>();
    constexpr int merge = WARPS * 16 * D * 4 + WARPS * 16 * 2 * 4;
    return ring > merge ? ring : merge;
}

// T: the cache element, __nv_bfloat16, or uint8_t for the fp8 cache (e4m3 codes, with k_scales / v_scales
// [blocks, nkv, 64]: attention.cuh).
// fp8 (since fp8kv-attn-v2): a tile's codes and scales are staged by cp.async in the same 3-stage ring, and the mma
// reads the codes where they landed (attn::fp8_scores_16keys, attn::fp8_pv_16keys: e4m3 -> bf16 is exact, the codes
// times a power of two that Q's, P's and the epilogue's powers of two cancel, attention.cuh); each score
// is multiplied by its key's K scale after the Q.K mma, and each P by its key's V scale before it is rounded to bf16
// for the P.V mma. No expansion pass to a bf16 tile and no extra barrier per tile any more (that pass cost ~4 points
// of the bandwidth floor at 32k); the output fragments hold interleaved dims, which the merge below puts back in
// order. The online softmax, the masks, the split plan and the merge are the bf16 kernel's.
template <int D, typename T = __nv_bfloat16>
__device__ __forceinline__ void decode_split(const __nv_bfloat16* __restrict__ q,
                                             const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache, float* __restrict__ part_o,
                                             float2* __restrict__ part_ml, __nv_bfloat16* __restrict__ out,
                                             const int* __restrict__ block_tables, int max_blocks,
                                             const int4* __restrict__ split_work, int nq, int nkv, float scale,
                                             const float* __restrict__ k_scales = nullptr,
                                             const float* __restrict__ v_scales = nullptr) {
    static_assert(D % 16 == 0 && D <= 256, "head_dim must be a multiple of 16");
    constexpr int LDS = D + 8;
    constexpr int KSTEPS = D / 16;
    constexpr int DT = D / 8;
    constexpr float LOG2E = 1.4426950408889634f;
    const float NEG_INF = neg_inf();
    constexpr bool FP8 = attn::is_fp8_cache<T>();
    constexpr int LDK = attn::fp8_row_bytes<D>();  // fp8: bytes per staged row of codes

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // bf16: the ring of K and V tiles. fp8: the ring of staged codes and scales, [STAGES][attn::fp8_stage_bytes<D, BN>()].
    __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [STAGES][BN][LDS]
    __nv_bfloat16* sV = sK + STAGES * BN * LDS;                       // [STAGES][BN][LDS]
    [[maybe_unused]] unsigned char* sStaged = smem_raw;

    // Slot-major over the grid's (slots, nkv) blocks: see "Programmatic launch" at the top.
    const int lin = blockIdx.x + blockIdx.y * gridDim.x;
    const int slot = lin / nkv;
    const int kvh = lin - slot * nkv;
    const int G = nq / nkv;
    const int head0 = kvh * G;
    const int max_ctx = max_blocks * BN;

    const RowSplits plan = row_splits(split_work[slot], max_ctx);  // the plan: written before the step
    if (plan.row < 0) return;  // a slot no row uses: exits without waiting for the kernel before
    const int row = plan.row;
    q += (size_t)row * nq * D;
    out += (size_t)row * nq * D;
    const int* block_table = block_tables + (size_t)row * max_blocks;
    if (plan.active == 0) {  // empty context: define the output as zeros
        kernel_entry_barrier();
        if (plan.split == 0)
            for (int i = threadIdx.x; i < G * D; i += THREADS) out[(size_t)head0 * D + i] = __float2bfloat16(0.f);
        return;
    }
    if (plan.split >= plan.active) return;  // nothing to read or write
    const int split = plan.split;
    const int k_begin = split * plan.chunk;
    const int k_end = min(k_begin + plan.chunk, plan.ctx);
    const int n_tiles = (k_end - k_begin + BN - 1) / BN;

    const attn::KvLayout kv{block_table, nkv, max_ctx};

    auto load_tile = [&](int tile, int stage) {
        const int n0 = k_begin + tile * BN;        // a multiple of BN: chunks are whole tiles
        const size_t row0 = kv.tile_row(kvh, n0);  // n0 < k_end for every tile < n_tiles
        if constexpr (FP8) {
            attn::fp8_tile_async<D, BN, THREADS>(sStaged + stage * attn::fp8_stage_bytes<D, BN>(), k_cache, v_cache,
                                                 k_scales, v_scales, row0, k_end - n0);
        } else {
            attn::bf16_tile_async<D, BN, THREADS, LDS>(sK + stage * BN * LDS, sV + stage * BN * LDS, k_cache, v_cache,
                                                       row0, k_end - n0);
        }
    };

    // The ring's first tiles, one commit group each (tile j is group j). Those wholly before position ctx_len-1 (the
    // one the kernel before writes) load before the barrier, the rest after it; the early ones are a prefix.
    int st = 0;
    for (; st < STAGES - 1 && k_begin + (st + 1) * BN < plan.ctx; ++st) {
        if (st < n_tiles) load_tile(st, st);
        cp_async_commit();
    }
    kernel_entry_barrier();  // q (and the newest K/V row) come from the kernel before
    for (; st < STAGES - 1; ++st) {
        if (st < n_tiles) load_tile(st, st);
        cp_async_commit();
    }

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t4 = lane & 3;
    const int lm_mat = lane >> 3;
    const int lm_row = lane & 7;

    // Q fragments: row r of the 16-row tile is query head head0 + r (zero for r >= G).
    uint32_t qf[KSTEPS][4];
    {
        const bool v_lo = g < G;
        const bool v_hi = g + 8 < G;
        const __nv_bfloat16* q_lo = q + (size_t)(head0 + (v_lo ? g : 0)) * D;
        const __nv_bfloat16* q_hi = q + (size_t)(head0 + (v_hi ? g + 8 : 0)) * D;
        if constexpr (FP8)
            attn::load_q_fragments_fp8(qf, q_lo, q_hi, v_lo, v_hi, t4);  // dims interleaved as the code fragments
        else
            attn::load_q_fragments(qf, q_lo, q_hi, v_lo, v_hi, t4);
    }

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_lo = NEG_INF, m_hi = NEG_INF;
    float l_lo = 0.f, l_hi = 0.f;
    const float sl2 = scale * LOG2E;

    for (int j = 0; j < n_tiles; ++j) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile j landed for everyone; everyone finished tile j-1, whose stage is refilled next
        {
            const int nxt = j + STAGES - 1;
            if (nxt < n_tiles) load_tile(nxt, nxt % STAGES);
            cp_async_commit();
        }
        const int n0 = k_begin + j * BN + warp * 16;  // this warp's first key
        if (n0 >= k_end) continue;                    // nothing for this warp in the (last, partial) tile

        float s[2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
        // Per score column (key 2t4 + c of n-tile nt): the factor to the log2 domain; fp8: times the key's K scale.
        float f[2][2] = {{sl2, sl2}, {sl2, sl2}};
        [[maybe_unused]] const unsigned char* st = sStaged + (j % STAGES) * attn::fp8_stage_bytes<D, BN>();
        [[maybe_unused]] const float* tScales = attn::fp8_stage_scales<D, BN>(st) + warp * 16;  // K; V at + BN
        if constexpr (FP8) {
            attn::fp8_scores_16keys<D>(s[0], s[1], qf, st + warp * 16 * LDK, lane);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const float2 ksc = *reinterpret_cast<const float2*>(tScales + nt * 8 + 2 * t4);
                f[nt][0] = attn::fp8_decode_score_factor(ksc.x, sl2);
                f[nt][1] = attn::fp8_decode_score_factor(ksc.y, sl2);
            }
        } else {
            const __nv_bfloat16* tK = sK + (j % STAGES) * BN * LDS + warp * 16 * LDS;
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
                const int key_row = (lm_mat >> 1) * 8 + lm_row;
                const int col = ks * 16 + (lm_mat & 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, smem_addr(tK + key_row * LDS + col));
                mma_bf16_16816(s[0], qf[ks], b0, b1);
                mma_bf16_16816(s[1], qf[ks], b2, b3);
            }
        }

        const bool need_mask = n0 + 16 > k_end;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = s[nt][e] * f[nt][e & 1];
                if (need_mask && n0 + nt * 8 + 2 * t4 + (e & 1) >= k_end) v = NEG_INF;
                s[nt][e] = v;
            }
        }

        float alpha_lo, alpha_hi;
        attn::online_softmax(s, m_lo, m_hi, l_lo, l_hi, alpha_lo, alpha_hi);

        if constexpr (FP8) {
            // P times the V scale of its key (keys 2t4, 2t4+1 of each n-tile: the same keys as the K scales above;
            // zero for keys past the context, whose P is 0 too) and 2^FP8_DECODE_P_LOG2 (attention.cuh: against the
            // codes' 2^-120), then rounded to bf16 as the A operand.
            constexpr float P_UP = 0x1p112f;
            static_assert(attn::FP8_DECODE_P_LOG2 == 112, "P_UP is 2^FP8_DECODE_P_LOG2");
            const float2 v0 = *reinterpret_cast<const float2*>(tScales + BN + 2 * t4);
            const float2 v1 = *reinterpret_cast<const float2*>(tScales + BN + 8 + 2 * t4);
            const float v0x = v0.x * P_UP, v0y = v0.y * P_UP, v1x = v1.x * P_UP, v1y = v1.y * P_UP;
            uint32_t a[4];
            a[0] = pack_bf16x2(s[0][0] * v0x, s[0][1] * v0y);
            a[1] = pack_bf16x2(s[0][2] * v0x, s[0][3] * v0y);
            a[2] = pack_bf16x2(s[1][0] * v1x, s[1][1] * v1y);
            a[3] = pack_bf16x2(s[1][2] * v1x, s[1][3] * v1y);
            attn::rescale_output_if_needed(o, alpha_lo, alpha_hi);
            attn::fp8_pv_16keys<D>(o, a, attn::fp8_stage_v<D, BN>(st) + warp * 16 * LDK, lane);
            continue;
        }

        const __nv_bfloat16* tV = sV + (j % STAGES) * BN * LDS + warp * 16 * LDS;
        uint32_t a[4];
        a[0] = pack_bf16x2(s[0][0], s[0][1]);
        a[1] = pack_bf16x2(s[0][2], s[0][3]);
        a[2] = pack_bf16x2(s[1][0], s[1][1]);
        a[3] = pack_bf16x2(s[1][2], s[1][3]);
        attn::rescale_output_if_needed(o, alpha_lo, alpha_hi);
#pragma unroll
        for (int dp = 0; dp < DT / 2; ++dp) {
            const int key_row = (lm_mat & 1) * 8 + lm_row;
            const int col = dp * 16 + (lm_mat >> 1) * 8;
            uint32_t b0, b1, b2, b3;
            ldmatrix_x4_trans(b0, b1, b2, b3, smem_addr(tV + key_row * LDS + col));
            mma_bf16_16816(o[2 * dp], a, b0, b1);
            mma_bf16_16816(o[2 * dp + 1], a, b2, b3);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the ring is reused below for the cross-warp merge

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);

    float* sO = reinterpret_cast<float*>(smem_raw);  // [WARPS][16][D]
    float* sM = sO + WARPS * 16 * D;                 // [WARPS][16]
    float* sL = sM + WARPS * 16;                     // [WARPS][16]
    {
        float* w_o = sO + warp * 16 * D;
        if constexpr (FP8) {  // interleaved dims (attn::fp8_output_dims): lane holds dims 16b + 4t4 .. +3 of each block b
            // o came out times 2^FP8_DECODE_OUT_LOG2 (attention.cuh): undone here, exactly.
            constexpr float OUT_UP = 0x1p8f;
            static_assert(attn::FP8_DECODE_OUT_LOG2 == -8, "OUT_UP is 2^-FP8_DECODE_OUT_LOG2");
#pragma unroll
            for (int b = 0; b < D / 16; ++b) {
                const attn::Fp8OutputDims lo = attn::fp8_output_dims(o, b, false);
                const attn::Fp8OutputDims hi = attn::fp8_output_dims(o, b, true);
                *reinterpret_cast<float4*>(w_o + g * D + b * 16 + 4 * t4) =
                    make_float4(lo.x0 * OUT_UP, lo.x1 * OUT_UP, lo.x2 * OUT_UP, lo.x3 * OUT_UP);
                *reinterpret_cast<float4*>(w_o + (g + 8) * D + b * 16 + 4 * t4) =
                    make_float4(hi.x0 * OUT_UP, hi.x1 * OUT_UP, hi.x2 * OUT_UP, hi.x3 * OUT_UP);
            }
        } else {
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                *reinterpret_cast<float2*>(w_o + g * D + dt * 8 + 2 * t4) = make_float2(o[dt][0], o[dt][1]);
                *reinterpret_cast<float2*>(w_o + (g + 8) * D + dt * 8 + 2 * t4) = make_float2(o[dt][2], o[dt][3]);
            }
        }
        if (t4 == 0) {
            sM[warp * 16 + g] = m_lo;
            sM[warp * 16 + g + 8] = m_hi;
            sL[warp * 16 + g] = l_lo;
            sL[warp * 16 + g + 8] = l_hi;
        }
    }
    __syncthreads();

    const bool single = plan.active == 1;
    for (int i = threadIdx.x; i < G * D; i += THREADS) {
        const int r = i / D;
        const int d = i - r * D;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, sM[w * 16 + r]);
        const float base = (mx == NEG_INF) ? 0.f : mx;
        float acc = 0.f, l = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float wt = exp2f(sM[w * 16 + r] - base);
            acc += wt * sO[(w * 16 + r) * D + d];
            l += wt * sL[w * 16 + r];
        }
        const int head = head0 + r;
        if (single) {
            out[(size_t)head * D + d] = __float2bfloat16(l > 0.f ? acc / l : 0.f);
        } else {  // partials of grid slot `slot`: [slots, nq, D] and [slots, nq]
            part_o[((size_t)slot * nq + head) * D + d] = acc;
            if (d == 0) part_ml[(size_t)slot * nq + head] = make_float2(mx, l);
        }
    }
}

}  // namespace attn_decode

// Paged, one decode row per sequence, many sequences in one launch (docs/ENGINE_V2.md). Grid (slots, nkv): slot g of
// KV head h reads the keys the step's plan gives it (RowSplits: split_work int4 [slots]). Row b: q[b] and out[b]
// ([batch, nq, D]), its context length in the plan (0: padding row, output zeros), block table block_tables[b] of
// max_blocks entries. Partials per slot: part_o [slots, nq, D], then part_ml [slots, nq]. K and V are one layer of the
// pool, [blocks, nkv, 64, D]. Every input is read on the device: graph-capture safe.
// Block 128 threads, dynamic smem = attn_decode::split_smem_bytes<D>() (= 3 stages * (K + V) * 64 keys * (D+8) *
// 2 bytes: 104448 for D=128).
#define QWQ_ATTN_DECODE_PAGED_ENTRY(D)                                                                           \
    extern "C" __global__ void __launch_bounds__(attn_decode::THREADS) attention_decode_paged_bf16_d##D(         \
        const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,                           \
        const __nv_bfloat16* __restrict__ v_pool, float* __restrict__ part_o, float2* __restrict__ part_ml,      \
        __nv_bfloat16* __restrict__ out, const int* __restrict__ block_tables,                                   \
        const int4* __restrict__ split_work, int max_blocks, int nq, int nkv, float scale) {                    \
        /* kernel_entry_barrier(): inside decode_split, after the early tile loads */                           \
        attn_decode::decode_split<D>(q, k_pool, v_pool, part_o, part_ml, out, block_tables, max_blocks,          \
                                     split_work, nq, nkv, scale);                                                \
    }

QWQ_ATTN_DECODE_PAGED_ENTRY(32)
QWQ_ATTN_DECODE_PAGED_ENTRY(64)
QWQ_ATTN_DECODE_PAGED_ENTRY(128)

// The same over the fp8 KV cache (docs/KV_CACHE.md): K and V e4m3 codes [blocks, nkv, 64, D] with scales k_scales,
// v_scales fp32 [blocks, nkv, 64]; every other argument, the grid, the block and the partials as the bf16 entry (the
// same combine kernel follows). Dynamic smem = attn_decode::split_smem_bytes_fp8<D>() (= 3 stages *
// attn::fp8_stage_bytes = 3 * (2 * 64 * (D+16) + 2 * 64 * 4): 56832 for D=128, 32256 for 64, 19968 for 32).
#define QWQ_ATTN_DECODE_PAGED_FP8_ENTRY(D)                                                                       \
    extern "C" __global__ void __launch_bounds__(attn_decode::THREADS) attention_decode_paged_fp8_d##D(          \
        const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ k_pool,                                 \
        const uint8_t* __restrict__ v_pool, const float* __restrict__ k_scales,                                  \
        const float* __restrict__ v_scales, float* __restrict__ part_o, float2* __restrict__ part_ml,            \
        __nv_bfloat16* __restrict__ out, const int* __restrict__ block_tables,                                   \
        const int4* __restrict__ split_work, int max_blocks, int nq, int nkv, float scale) {                    \
        /* kernel_entry_barrier(): inside decode_split, after the early tile loads */                           \
        attn_decode::decode_split<D, uint8_t>(q, k_pool, v_pool, part_o, part_ml, out, block_tables, max_blocks, \
                                              split_work, nq, nkv, scale, k_scales, v_scales);                   \
    }

QWQ_ATTN_DECODE_PAGED_FP8_ENTRY(32)
QWQ_ATTN_DECODE_PAGED_FP8_ENTRY(64)
QWQ_ATTN_DECODE_PAGED_FP8_ENTRY(128)

// Combine kernel. Grid (nq, batch), block (head_dim, COMBINE_GROUPS) threads (head_dim <= 128); row b's splits,
// partials and output as the paged entry's (RowSplits).
// Merges the row's active splits of each head: out = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s.
// Does nothing when the split kernel already wrote the output (one active split, or an empty context).
// Why this shape (since decode-combine-v2): a block per head with one thread per output element looped over the splits
// twice, the max first, one L2 round trip after another: 10 us a layer at 32k (64 splits) on an H200, a third of the
// split kernel's time. Now the block reads every split's (max, sum) at once, reduces them, keeps each split's weight
// in shared memory, and COMBINE_GROUPS thread groups share the splits' partial outputs.
namespace attn_decode {
constexpr int COMBINE_GROUPS = 4;
constexpr int COMBINE_MAX_D = 128;
constexpr int COMBINE_MAX_SPLITS = 256;  // AttentionOps.MaxDecodeSplits: a row never has more

// The block's max (op = max) or sum of v; every thread gets it. red: COMBINE_GROUPS * COMBINE_MAX_D / 32 floats.
template <bool MAX>
__device__ __forceinline__ float combine_reduce(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, u) : v + u;
    }
    const int tid = threadIdx.x + threadIdx.y * blockDim.x, warps = blockDim.x * blockDim.y / 32;
    if ((tid & 31) == 0) red[tid >> 5] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < warps; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();  // red is reused by the next reduction
    return r;
}
}  // namespace attn_decode

extern "C" __global__ void __launch_bounds__(attn_decode::COMBINE_GROUPS * attn_decode::COMBINE_MAX_D)
attention_decode_combine_bf16(const float* __restrict__ part_o, const float2* __restrict__ part_ml,
                              __nv_bfloat16* __restrict__ out, const int4* __restrict__ split_rows, int nq, int head_dim,
                              int max_ctx) {
    using namespace attn_decode;
    __shared__ float s_w[COMBINE_MAX_SPLITS];                       // each split's weight 2^(m_s - M)
    __shared__ float s_acc[COMBINE_GROUPS][COMBINE_MAX_D];          // each group's sum over its splits
    __shared__ float s_red[COMBINE_GROUPS * COMBINE_MAX_D / 32];
    kernel_entry_barrier();
    const int b = blockIdx.y;
    const int4 r = split_rows[b];  // {first slot, splits, keys per split, context length}
    RowSplits plan = row_splits(make_int4(b, r.x, r.z, r.w), max_ctx);
    const int active = min(min(plan.active, r.y), COMBINE_MAX_SPLITS);
    if (active <= 1) return;
    const int head = blockIdx.x;
    const int tid = threadIdx.x + threadIdx.y * blockDim.x, threads = blockDim.x * blockDim.y;
    const int first = plan.split;                            // the row's first slot
    const float2* ml = part_ml + (size_t)first * nq + head;  // stride nq a slot

    float mx = neg_inf();
    for (int s = tid; s < active; s += threads) mx = fmaxf(mx, ml[(size_t)s * nq].x);
    mx = combine_reduce<true>(mx, s_red);
    const float base = (mx == neg_inf()) ? 0.f : mx;
    float l = 0.f;
    for (int s = tid; s < active; s += threads) {
        const float2 v = ml[(size_t)s * nq];
        const float w = exp2f(v.x - base);
        s_w[s] = w;
        l += w * v.y;
    }
    l = combine_reduce<false>(l, s_red);  // its barriers also publish s_w

    const int d = threadIdx.x, g = threadIdx.y;
    float acc = 0.f;
    if (d < head_dim) {
        const float* po = part_o + ((size_t)first * nq + head) * head_dim + d;  // stride nq * head_dim a slot
#pragma unroll 4
        for (int s = g; s < active; s += COMBINE_GROUPS) acc += s_w[s] * po[(size_t)s * nq * head_dim];
        s_acc[g][d] = acc;
    }
    __syncthreads();
    if (g == 0 && d < head_dim) {
#pragma unroll
        for (int k = 1; k < COMBINE_GROUPS; ++k) acc += s_acc[k][d];
        out[(size_t)b * nq * head_dim + (size_t)head * head_dim + d] = __float2bfloat16(l > 0.f ? acc / l : 0.f);
    }
}

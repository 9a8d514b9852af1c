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
// [blocks, nkv, 64]: the same rows as the bf16 pool (KvLayout::tile_row), one byte per element, and the scale of row r
// at index r.
//
// Decode (since fp8kv-attn-v2, session 8) and why. It used to expand every landed tile of codes into a bf16 K/V tile,
// bf16(float(code) * scale), in shared memory (smem -> registers -> smem, plus one more __syncthreads per tile) and run
// the bf16 kernel's ldmatrix + mma on that. At 32k that pass cost decode about 4 points of its bandwidth floor (89%
// against bf16's 93%). Now its mma reads the CODES where cp.async landed them (32k: 25.99 -> 24.98 ms on the H100),
// and the scales are applied in fp32 outside the mma, where the algebra allows it exactly (prefill still expands:
// fp8_tile_to_bf16 says why):
//   S[q, n] = k_scale[n] * (q . code_k[n])                   the score mma on the codes, then one fp32 product per
//                                                            score (folded with softmax_scale * log2 e)
//   O[q, :] = sum_n bf16(P[q, n] * v_scale[n]) * code_v[n]   P times its key's V scale before P is rounded to bf16 for
//                                                            the P.V mma (P was rounded there anyway)
// e4m3 -> bf16 is exact (every e4m3 value is a bf16 value), so the per-element rounding bf16(code * scale) is gone:
// the only roundings left are the bf16 kernel's own (q, P to bf16; fp32 accumulation). Since session 17 the mma sees
// code * 2^-120 (fp8x4_to_bf16x4_pow2: three integer instructions a pair instead of five with the bf16x2 FMA that
// undid the factor; conversion was two thirds of the split kernel's instructions, which bound it at 3-4 blocks an SM),
// and powers of two elsewhere cancel it, exactly: Q enters scaled by 2^FP8_DECODE_Q_LOG2 (load_q_fragments_fp8), so
// a score comes out times 2^(64 - 120) and its fp32 factor carries 2^56 (fp8_decode_score_factor); P enters times
// its V scale and 2^FP8_DECODE_P_LOG2, so the output comes out times 2^(112 - 120) and the kernel's epilogue multiplies
// by 2^8. Range: Q is exact while |q| < 2^64, P * v_scale * 2^112 while v_scale < 2^16 (a V row's largest |v| under
// 2^16 * 448), far past anything a bf16 model computes.
//
// A stage of the ring (fp8_tile_async): K codes [BN][LDK] bytes, V codes [BN][LDK] bytes, K scales [BN] fp32, V scales
// [BN] fp32; LDK = D + 16 (fp8_row_bytes). The 16 pad bytes per row make the 8 rows one ldmatrix phase reads (stride
// D + 16 bytes: 16-byte bank group (r * (D + 16) / 16) % 8 = r * 9, r * 5, r * 3 mod 8 for D = 128, 64, 32) fall in
// 8 distinct bank groups, and keep every row 16-byte aligned for cp.async and ldmatrix. Rows past the visible range
// are zero codes with zero scales (cp.async zero-fill), so unwritten pool slots (NaN codes or scales) never reach the
// math, not even through 0 * NaN.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"; g = lane / 4, t4 = lane % 4):
//   A (16 x 16, row major): a0 a1 = (row g, cols 2t4, 2t4+1), a2 a3 = (row g+8, same cols),
//                           a4 a5 = (row g, cols 2t4+8, 2t4+9), a6 a7 = (row g+8, same cols)
//   B (16 x 8, "col"):      b0 b1 = (rows k 2t4, 2t4+1, col n g), b2 b3 = (rows 2t4+8, 2t4+9, col g)
//   C (16 x 8):             c0 c1 = (row g, cols 2t4, 2t4+1),    c2 c3 = (row g+8, same cols)
// (each 32-bit register holds two consecutive of these, the lower-numbered in the low half). ldmatrix.m8n8.b16 treats
// a 16-byte row as 8 b16 units: lane gets units (row g, cols 2t4, 2t4+1) of each 8x8 matrix, or with .trans units
// (rows 2t4, 2t4+1, col g). On byte rows a b16 unit is two adjacent codes.
//
// Scores, S = Q . K^T (fp8_scores_16keys): B[k][n] = code of key n, dimension k. A dot product does not care in which
// order its k are summed as long as A and B agree, so within each 16-dim k-step the dims are INTERLEAVED: B rows (2t4,
// 2t4+1) hold dims 4t4, 4t4+1 and rows (2t4+8, 2t4+9) hold dims 4t4+2, 4t4+3. Then lane (g, t4) needs the 4
// consecutive codes [4t4, 4t4+4) of key g: exactly what a plain (non-trans) ldmatrix of the byte rows hands it.
//
//        K codes, 16 keys of one warp x 32 dims (one ldmatrix.x4, two k-steps)
//                  dims 0..15 (k-step 2kp)        dims 16..31 (k-step 2kp+1)
//        keys 0-7   matrix 0 -> B of n-tile 0      matrix 2 -> B of n-tile 0
//        keys 8-15  matrix 1 -> B of n-tile 1      matrix 3 -> B of n-tile 1
//        lane (g, t4) of a matrix: bytes 4t4..4t4+3 of its row g = codes of key g, dims 4t4..4t4+3
//          -> fp8x4_to_bf16x4: b01 = dims (4t4, 4t4+1), b23 = dims (4t4+2, 4t4+3)
//
// The Q fragments use the same interleave (load_q_fragments_fp8): a01 = Q[g][4t4, 4t4+1], a45 = Q[g][4t4+2, 4t4+3].
// The score C fragments come out in the usual key order (c0 c1 = keys 2t4, 2t4+1 of the n-tile), so the softmax,
// masks and the P-as-A-operand reuse are the bf16 kernel's.
//
// Output, O += P . V (fp8_pv_16keys): B[k][n] = code of key k, dimension n: lane needs two keys (2t4, 2t4+1) of one
// dimension, i.e. bytes from two different rows. ldmatrix.trans of the byte rows hands lane (g, t4) units (rows 2t4,
// 2t4+1, col g) = the bytes [V[2t4][2g], V[2t4][2g+1], V[2t4+1][2g], V[2t4+1][2g+1]]: both keys for TWO dims, 2g and
// 2g+1. fp8x4_to_bf16x4_interleaved_pow2 splits that into the pair (keys 2t4, 2t4+1) of dim 2g and of dim 2g+1, which are
// the B registers of two n-tiles: one whose column n is dim 2n and one whose column n is dim 2n+1. So the output
// n-tiles hold interleaved dims too:
//
//        V codes, 16 keys x 32 dims (one ldmatrix.x4.trans, four n-tiles of the output)
//                  dims 32dq + 0..15          dims 32dq + 16..31
//        keys 0-7   matrix 0 (b01)              matrix 2 (b01)
//        keys 8-15  matrix 1 (b23)              matrix 3 (b23)
//        matrices 0+1 -> o[4dq + 0] (dims 32dq + 2n) and o[4dq + 1] (dims 32dq + 2n + 1)
//        matrices 2+3 -> o[4dq + 2] (dims 32dq + 16 + 2n) and o[4dq + 3] (dims 32dq + 16 + 2n + 1)
//
// so, with b = dt / 2 (16-dim block) and p = dt % 2: o[dt][0] = (row g, dim 16b + 4t4 + p), o[dt][1] = (row g,
// dim 16b + 4t4 + 2 + p), o[dt][2], o[dt][3] the same dims of row g+8. Lane (g, t4) thus holds dims 16b + 4t4 .. +3 of
// each block in the order (o[2b][0], o[2b+1][0], o[2b][1], o[2b+1][1]): fp8_output_dims. The keys (k) stay in their
// natural order, so the A operand is P as the bf16 kernel packs it (each lane's P elements belong to keys 2t4, 2t4+1
// of each n-tile of scores: the ones whose V scales it multiplies in).

// Cache element types of the attention kernels' templates: bf16 (the default) or e4m3 codes with per-row scales.
template <typename T>
__host__ __device__ constexpr bool is_fp8_cache() { return sizeof(T) == 1; }

// Bytes of one staged row of codes: D codes and 16 bytes of padding (bank groups, see above).
template <int D>
__host__ __device__ constexpr int fp8_row_bytes() { return D + 16; }

// Bytes of one staged fp8 tile pair: K and V codes [2][BN][D + 16], then their scales [2][BN] fp32.
template <int D, int BN>
__host__ __device__ constexpr int fp8_stage_bytes() { return 2 * BN * fp8_row_bytes<D>() + 2 * BN * 4; }

// Where the parts of a stage are.
template <int D, int BN>
__device__ __forceinline__ const unsigned char* fp8_stage_v(const unsigned char* stage) {
    return stage + BN * fp8_row_bytes<D>();
}
template <int D, int BN>
__device__ __forceinline__ const float* fp8_stage_scales(const unsigned char* stage) {  // K [BN], then V [BN]
    return reinterpret_cast<const float*>(stage + 2 * BN * fp8_row_bytes<D>());
}

// Starts the async copy of the bf16 K and V tile of `rows` valid keys (0 < rows; at most BN are used) whose first row
// is row0 (a multiple of BN: a whole block) into dK / dV [BN][LDS] (rows padded for ldmatrix). Rows past `rows` are
// zero-filled and read nothing. Commit is the caller's.
template <int D, int BN, int THREADS, int LDS>
__device__ __forceinline__ void bf16_tile_async(__nv_bfloat16* dK, __nv_bfloat16* dV,
                                                const __nv_bfloat16* __restrict__ k_cache,
                                                const __nv_bfloat16* __restrict__ v_cache, size_t row0, int rows) {
    constexpr int ROW_CHUNKS = D / 8;  // 16-byte chunks per K/V row
    constexpr int TILE_CHUNKS = BN * ROW_CHUNKS;
    static_assert(TILE_CHUNKS % THREADS == 0, "tile copy must divide evenly");
#pragma unroll
    for (int i = 0; i < TILE_CHUNKS / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        const int r = c / ROW_CHUNKS;
        const int cc = c % ROW_CHUNKS;
        const bool valid = r < rows;
        const size_t src = (row0 + (valid ? r : 0)) * D + cc * 8;
        mma::cp_async16(mma::smem_addr(dK + r * LDS + cc * 8), k_cache + src, valid);
        mma::cp_async16(mma::smem_addr(dV + r * LDS + cc * 8), v_cache + src, valid);
    }
}

// Starts the async copy of the fp8 K and V tile of `rows` valid keys (0 < rows; at most BN are used) whose first row
// is row0 (a multiple of BN: a whole block) into one stage (layout above). Rows past `rows` are zero-filled, codes and
// scales, and read nothing, as for bf16 tiles. Commit is the caller's.
template <int D, int BN, int THREADS>
__device__ __forceinline__ void fp8_tile_async(unsigned char* stage, const uint8_t* __restrict__ k_codes,
                                               const uint8_t* __restrict__ v_codes, const float* __restrict__ k_scales,
                                               const float* __restrict__ v_scales, size_t row0, int rows) {
    static_assert(D % 16 == 0, "a row of codes is whole 16-byte chunks");
    constexpr int LDK = fp8_row_bytes<D>();
    constexpr int ROW_CHUNKS = D / 16;
    constexpr int TILE_CHUNKS = BN * ROW_CHUNKS;
    unsigned char* s_k = stage;
    unsigned char* s_v = stage + BN * LDK;
    float* s_scales = reinterpret_cast<float*>(stage + 2 * BN * LDK);  // [2][BN]
#pragma unroll
    for (int i = 0; i < (TILE_CHUNKS + THREADS - 1) / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        if (TILE_CHUNKS % THREADS == 0 || c < TILE_CHUNKS) {
            const int r = c / ROW_CHUNKS;
            const int cc = c % ROW_CHUNKS;
            const bool valid = r < rows;
            const size_t src = (row0 + (valid ? r : 0)) * D + cc * 16;
            mma::cp_async16(mma::smem_addr(s_k + r * LDK + cc * 16), k_codes + src, valid);
            mma::cp_async16(mma::smem_addr(s_v + r * LDK + cc * 16), v_codes + src, valid);
        }
    }
    // Scales: one 4-byte copy per row (K rows, then V rows), zero for rows past `rows`: an unwritten slot's scale (NaN
    // in the tests' poisoned pools) must not meet the zero P of its masked key.
#pragma unroll
    for (int i = 0; i < (2 * BN + THREADS - 1) / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        if ((2 * BN) % THREADS == 0 || c < 2 * BN) {
            const bool is_v = c >= BN;
            const int r = is_v ? c - BN : c;
            const bool valid = r < rows;
            const float* src = (is_v ? v_scales : k_scales) + row0 + (valid ? r : 0);
            mma::cp_async4(mma::smem_addr(s_scales + c), src, valid);
        }
    }
}

// s0, s1 += Q . codes^T for 16 keys: tK points at the first of 16 staged rows of K codes (stride fp8_row_bytes<D>),
// s0 gets keys 0-7, s1 keys 8-15 (C layout: c0 c1 = keys 2t4, 2t4+1). qf from load_q_fragments_fp8. The scores are
// those of the codes times 2^-120 with qf's 2^64: the caller multiplies each by fp8_decode_score_factor.
template <int D>
__device__ __forceinline__ void fp8_scores_16keys(float (&s0)[4], float (&s1)[4], const uint32_t (&qf)[D / 16][4],
                                                  const unsigned char* tK, int lane) {
    static_assert(D % 32 == 0, "two k-steps per ldmatrix.x4");
    constexpr int LDK = fp8_row_bytes<D>();
    const int lm_mat = lane >> 3;  // lane supplies row lm_row of matrix lm_mat
    const int lm_row = lane & 7;
    // matrices: (keys 0-7, dims +0..15), (keys 8-15, dims +0..15), (keys 0-7, dims +16..31), (keys 8-15, dims +16..31)
    const uint32_t addr = mma::smem_addr(tK + ((lm_mat & 1) * 8 + lm_row) * LDK + (lm_mat >> 1) * 16);
#pragma unroll
    for (int kp = 0; kp < D / 32; ++kp) {
        uint32_t r0, r1, r2, r3, lo, hi;
        mma::ldmatrix_x4(r0, r1, r2, r3, addr + kp * 32);
        fp8x4_to_bf16x4_pow2(r0, lo, hi);
        mma::mma_bf16_16816(s0, qf[2 * kp], lo, hi);
        fp8x4_to_bf16x4_pow2(r1, lo, hi);
        mma::mma_bf16_16816(s1, qf[2 * kp], lo, hi);
        fp8x4_to_bf16x4_pow2(r2, lo, hi);
        mma::mma_bf16_16816(s0, qf[2 * kp + 1], lo, hi);
        fp8x4_to_bf16x4_pow2(r3, lo, hi);
        mma::mma_bf16_16816(s1, qf[2 * kp + 1], lo, hi);
    }
}

// o += a . codes for 16 keys: a = P of those keys, each already times its key's V scale (A layout, keys in natural
// order: a[0] = row g keys 2t4, 2t4+1; a[1] row g+8; a[2] row g keys 8+2t4, 9+2t4; a[3] row g+8); tV points at the
// first of 16 staged rows of V codes. o[D/8] is in the interleaved-dims layout (fp8_output_dims). The codes enter times
// 2^-120: with a's 2^FP8_DECODE_P_LOG2, o comes out times 2^FP8_DECODE_OUT_LOG2.
template <int D>
__device__ __forceinline__ void fp8_pv_16keys(float (&o)[D / 8][4], const uint32_t (&a)[4], const unsigned char* tV,
                                              int lane) {
    static_assert(D % 32 == 0, "four output n-tiles per ldmatrix.x4");
    constexpr int LDK = fp8_row_bytes<D>();
    const int lm_mat = lane >> 3;
    const int lm_row = lane & 7;
    // matrices: (keys 0-7, dims +0..15), (keys 8-15, dims +0..15), (keys 0-7, dims +16..31), (keys 8-15, dims +16..31)
    const uint32_t addr = mma::smem_addr(tV + ((lm_mat & 1) * 8 + lm_row) * LDK + (lm_mat >> 1) * 16);
#pragma unroll
    for (int dq = 0; dq < D / 32; ++dq) {
        uint32_t r0, r1, r2, r3;
        mma::ldmatrix_x4_trans(r0, r1, r2, r3, addr + dq * 32);
        uint32_t x_lo, y_lo, x_hi, y_hi;  // x: dim 2g, y: dim 2g+1 of the block; lo: keys 2t4, 2t4+1, hi: 8+2t4, 9+2t4
        fp8x4_to_bf16x4_interleaved_pow2(r0, x_lo, y_lo);
        fp8x4_to_bf16x4_interleaved_pow2(r1, x_hi, y_hi);
        mma::mma_bf16_16816(o[4 * dq + 0], a, x_lo, x_hi);
        mma::mma_bf16_16816(o[4 * dq + 1], a, y_lo, y_hi);
        fp8x4_to_bf16x4_interleaved_pow2(r2, x_lo, y_lo);
        fp8x4_to_bf16x4_interleaved_pow2(r3, x_hi, y_hi);
        mma::mma_bf16_16816(o[4 * dq + 2], a, x_lo, x_hi);
        mma::mma_bf16_16816(o[4 * dq + 3], a, y_lo, y_hi);
    }
}

// The output of fp8_pv_16keys for 16-dim block b: lane (g, t4) holds dims 16b + 4t4 + 0..3 of row g (hi: row g+8).
struct Fp8OutputDims {
    float x0, x1, x2, x3;
};
template <int DT>
__device__ __forceinline__ Fp8OutputDims fp8_output_dims(const float (&o)[DT][4], int b, bool hi) {
    const int e = hi ? 2 : 0;
    return {o[2 * b][e], o[2 * b + 1][e], o[2 * b][e + 1], o[2 * b + 1][e + 1]};
}

// Q fragments for fp8_scores_16keys: the A operand with the same interleaved dims as its code fragments. Row g from
// q_lo and row g + 8 from q_hi, zeros for rows that do not exist (v_lo / v_hi false); k-step ks:
// qf[ks][0] = q_lo[16ks + 4t4 + {0,1}], qf[ks][2] = q_lo[16ks + 4t4 + {2,3}], [1] and [3] the same of q_hi; every
// element times 2^FP8_DECODE_Q_LOG2 (exact: a power of two, and |q| < 2^64), against the codes' 2^-120 (above).
constexpr int FP8_DECODE_Q_LOG2 = 64;
constexpr int FP8_DECODE_P_LOG2 = 112;
constexpr int FP8_DECODE_OUT_LOG2 = FP8_DECODE_P_LOG2 + FP8_BF16_POW2_LOG2;  // -8: the epilogue multiplies by 2^8
template <int KSTEPS>
__device__ __forceinline__ void load_q_fragments_fp8(uint32_t (&qf)[KSTEPS][4], const __nv_bfloat16* q_lo,
                                                     const __nv_bfloat16* q_hi, bool v_lo, bool v_hi, int t4) {
    const __nv_bfloat162 up = __float2bfloat162_rn(0x1p64f);
    static_assert(FP8_DECODE_Q_LOG2 == 64, "up is 2^FP8_DECODE_Q_LOG2");
    auto scaled = [&](const __nv_bfloat16* p) {
        const unsigned int w = __ldg(reinterpret_cast<const unsigned int*>(p));
        const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&w), up);
        return *reinterpret_cast<const uint32_t*>(&r);
    };
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        const int c = ks * 16 + 4 * t4;
        qf[ks][0] = v_lo ? scaled(q_lo + c) : 0u;
        qf[ks][1] = v_hi ? scaled(q_hi + c) : 0u;
        qf[ks][2] = v_lo ? scaled(q_lo + c + 2) : 0u;
        qf[ks][3] = v_hi ? scaled(q_hi + c + 2) : 0u;
    }
}

// The fp32 factor of a score from fp8_scores_16keys: the softmax's log2-domain scale, the key's K scale, and the
// 2^(120 - 64) the codes' and Q's powers of two leave.
__device__ __forceinline__ float fp8_decode_score_factor(float k_scale, float scale_log2) {
    return k_scale * scale_log2 * 0x1p56f;
}
static_assert(-FP8_BF16_POW2_LOG2 - FP8_DECODE_Q_LOG2 == 56, "fp8_decode_score_factor's 2^56");

// Prefill's way with an fp8 tile: expand one landed stage (fp8_tile_async) into bf16 K and V tiles [BN][LDS],
// element = bf16(float(code) * scale), one fp32 product rounded to nearest even, then run the bf16 mma pipeline on it.
// Decode reads the codes in place (fp8_scores_16keys, fp8_pv_16keys); prefill does not, because its 8 warps would each
// convert every code of the tile again (8x the conversion work of one expansion): in place measured 10% slower at 16k
// (2,817 against 2,540 ms, H100, session 8), while decode, whose 4 warps split the keys, got 4% faster.
// Rows past `rows` are stored as zeros without reading their staged bytes, so nothing unwritten (NaN included) can
// reach the mma through 0 * NaN. The caller synchronises before and after.
template <int D, int BN, int THREADS, int LDS>
__device__ __forceinline__ void fp8_tile_to_bf16(const unsigned char* stage, __nv_bfloat16* dK, __nv_bfloat16* dV,
                                                 int rows) {
    constexpr int LDK = fp8_row_bytes<D>();
    constexpr int ROW_CHUNKS = D / 16;
    constexpr int CHUNKS = 2 * BN * ROW_CHUNKS;  // K then V
    const float* s_scales = fp8_stage_scales<D, BN>(stage);
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
            const uint4 raw = *reinterpret_cast<const uint4*>(stage + which * BN * LDK + r * LDK + cc * 16);
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

// 2^x on the SFU, results under 2^-126 flushed to zero. exp2f compiles to ex2.approx.f32 without .ftz, which ptxas
// wraps in a compare and two predicated multiplies to keep denormal results: four instructions a score instead of one,
// in kernels that ncu found issue-bound (the sm90a prefill, session 12). A probability under 2^-126 beside the row's
// maximum of 1 changes neither the sum nor its bf16 P.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The max of rows lo / hi over NT score tiles and the quad that shares each row, folded into mx_lo / mx_hi.
template <int NT>
__device__ __forceinline__ void quad_row_max(const float (&s)[NT][4], float& mx_lo, float& mx_hi) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[nt][0], s[nt][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[nt][2], s[nt][3]));
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
}

// One online-softmax step over NT score tiles already scaled to the log2 domain (masked entries -inf):
// updates the running max m and sum l of rows lo/hi, turns s into exp2(s - max) in place and returns the factors
// (alpha) by which the output accumulated so far must be rescaled. Row statistics are reduced over the quad.
template <int NT>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float& m_lo, float& m_hi, float& l_lo, float& l_hi,
                                               float& alpha_lo, float& alpha_hi) {
    const float neg_inf = -__int_as_float(0x7f800000);
    float mx_lo = m_lo, mx_hi = m_hi;
    quad_row_max(s, mx_lo, mx_hi);
    // A row with nothing visible yet keeps max -inf; use 0 as the base so exp2 gives 0, not NaN.
    const float base_lo = (mx_lo == neg_inf) ? 0.f : mx_lo;
    const float base_hi = (mx_hi == neg_inf) ? 0.f : mx_hi;
    alpha_lo = exp2_ftz(m_lo - base_lo);
    alpha_hi = exp2_ftz(m_hi - base_hi);
    m_lo = mx_lo;
    m_hi = mx_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        s[nt][0] = exp2_ftz(s[nt][0] - base_lo);
        s[nt][1] = exp2_ftz(s[nt][1] - base_lo);
        s[nt][2] = exp2_ftz(s[nt][2] - base_hi);
        s[nt][3] = exp2_ftz(s[nt][3] - base_hi);
        sum_lo += s[nt][0] + s[nt][1];
        sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
}

// online_softmax on raw scores (masked entries -inf) with the log2-domain scale c > 0 folded into each exponent:
// exp2(fma(s, c, -max)) instead of a multiply per score before the step (one instruction fewer a score). m stays in the
// scaled domain, as in online_softmax; the max of the raw scores times c is the max of the scaled ones (rounding is
// monotonic), so the two give the same m and, up to the fma's single rounding, the same P.
template <int NT>
__device__ __forceinline__ void online_softmax_scaled(float (&s)[NT][4], float c, float& m_lo, float& m_hi, float& l_lo,
                                                      float& l_hi, float& alpha_lo, float& alpha_hi) {
    const float neg_inf = -__int_as_float(0x7f800000);
    float mx_lo = neg_inf, mx_hi = neg_inf;
    quad_row_max(s, mx_lo, mx_hi);
    mx_lo = fmaxf(m_lo, mx_lo * c);  // -inf stays -inf
    mx_hi = fmaxf(m_hi, mx_hi * c);
    // A row with nothing visible yet keeps max -inf; use 0 as the base so exp2 gives 0, not NaN.
    const float base_lo = (mx_lo == neg_inf) ? 0.f : mx_lo;
    const float base_hi = (mx_hi == neg_inf) ? 0.f : mx_hi;
    alpha_lo = exp2_ftz(m_lo - base_lo);
    alpha_hi = exp2_ftz(m_hi - base_hi);
    m_lo = mx_lo;
    m_hi = mx_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        s[nt][0] = exp2_ftz(fmaf(s[nt][0], c, -base_lo));
        s[nt][1] = exp2_ftz(fmaf(s[nt][1], c, -base_lo));
        s[nt][2] = exp2_ftz(fmaf(s[nt][2], c, -base_hi));
        s[nt][3] = exp2_ftz(fmaf(s[nt][3], c, -base_hi));
        sum_lo += s[nt][0] + s[nt][1];
        sum_hi += s[nt][2] + s[nt][3];
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
}

// The output accumulated so far times online_softmax's alpha: rows lo (elements 0, 1) and hi (2, 3) of each of the DT
// 8-dim output fragments.
template <int DT>
__device__ __forceinline__ void rescale_output(float (&o)[DT][4], float alpha_lo, float alpha_hi) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
        o[dt][0] *= alpha_lo;
        o[dt][1] *= alpha_lo;
        o[dt][2] *= alpha_hi;
        o[dt][3] *= alpha_hi;
    }
}

// rescale_output, skipped when no row of the warp got a new max this tile (every alpha exactly 1, so every multiply
// would be the identity). Decode: a row's max settles within a few tiles of a long context, and the 4 * DT multiplies
// were an eighth of a tile's instructions; the warp-uniform vote keeps the branch from diverging.
template <int DT>
__device__ __forceinline__ void rescale_output_if_needed(float (&o)[DT][4], float alpha_lo, float alpha_hi) {
    if (__any_sync(0xffffffffu, alpha_lo != 1.f || alpha_hi != 1.f)) rescale_output(o, alpha_lo, alpha_hi);
}

// A prefill softmax's causal-mask switch, as a type so that each of its two bodies is compiled on its own: a tile
// wholly left of the rows' diagonal takes MayMask<false> and has no mask code at all. A runtime test alone does not do
// that: the compilers if-convert it, so every tile paid each score's key index, compare and select (~190 of ~770
// instructions a warp a tile in the sm90a kernel; ncu, session 22) although at most a tile or two a row cross it.
template <bool B>
struct MayMask {
    static constexpr bool value = B;
};

}  // namespace attn

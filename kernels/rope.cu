// Attention input preparation for one layer: x = qkv + bias in fp32 (qkv, the product, fp32 or bf16: the _f32_ and
// _bf16_ entries), RoPE on q and k heads (HF rotate_half:
// pairs (i, i + D/2)), q -> q_out bf16, k and v -> this layer's paged KV pool at each row's slot: bf16, or e4m3 codes
// with one fp32 scale per (position, head) for the fp8 cache (docs/KV_CACHE.md).
// RoPE angle = (float)pos * inv_freq[i] in fp32 with accurate sincosf (no fast-math: positions reach 32K+
// and fast __sinf loses all accuracy there); cos/sin are scaled by the YaRN attention factor.
#include <cuda_fp8.h>

#include "common.cuh"

// cos and sin of pair i's angle at pos, scaled by the YaRN attention factor: the same for every head of a token.
__device__ __forceinline__ float2 rope_cos_sin(const float* __restrict__ inv_freq, float attention_factor, int pos, int i) {
    const float angle = (float)pos * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    return make_float2(c * attention_factor, s * attention_factor);
}

// The product's q/k/v element i as fp32: prefill chunks on cuBLAS write the product in bf16 (half the bytes this
// kernel reads; LinearOps.TryApplyBf16Out), every other step in fp32.
__device__ __forceinline__ float qkv_at(const float* x, int i) { return x[i]; }
__device__ __forceinline__ float qkv_at(const __nv_bfloat16* x, int i) {
    return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(x)[i]);
}

// HF rotate_half on one pair (lo, hi) = (x[i], x[i + half]) by cs = (cos, sin) of its frequency, or (lo, hi) as they
// are where !rotate (v heads): every kernel below rotates through this one line (the write kernels, and the
// re-rotation between two ropes). The flag picks each half by a select: the vector entry's 8 pairs a thread stay
// branch-free (written as `rotate ? rope_rotate(..) : ..` there, nvcc emitted a branch per pair).
__device__ __forceinline__ float2 rope_rotate(float lo, float hi, float2 cs, bool rotate = true) {
    return make_float2(rotate ? lo * cs.x - hi * cs.y : lo, rotate ? hi * cs.x + lo * cs.y : hi);
}

// What every write kernel below reads first about its row t: the pool slot (-1: a padding row, computed at position 0,
// writing q only), the position, and the rope it runs (adaptive rope scaling: rope_rows[t] picks the _alt pair).
struct RowRope {
    int slot, pos;
    const float* inv_freq;
    float factor;
};
__device__ __forceinline__ RowRope row_rope(int t, const int* __restrict__ slots, const int* __restrict__ positions,
                                            const int* __restrict__ rope_rows, const float* __restrict__ inv_freq,
                                            float attention_factor, const float* __restrict__ inv_freq_alt,
                                            float factor_alt) {
    const int slot = __ldg(slots + t);
    const bool alt = rope_rows != nullptr && __ldg(rope_rows + t) != 0;  // each row its own sequence's rope
    return {slot, slot < 0 ? 0 : __ldg(positions + t), alt ? inv_freq_alt : inv_freq, alt ? factor_alt : attention_factor};
}

// The row of KV head kvh at pool slot `slot` in a layer's [blocks, nkv, 64, D] planes (and its [blocks, nkv, 64] scales).
__device__ __forceinline__ size_t kv_pool_row(int slot, int nkv, int kvh) {
    constexpr int BLOCK = 64;  // positions per KV block
    return ((size_t)(slot / BLOCK) * nkv + kvh) * BLOCK + slot % BLOCK;
}

// Where head `head` of row t goes in a bf16 cache: its q_out row, or its K or V pool row; rotate: q and k heads.
__device__ __forceinline__ uint16_t* bf16_head_dst(int t, int head, int nq, int nkv, int slot, int head_dim,
                                                   __nv_bfloat16* q_out, __nv_bfloat16* k_pool, __nv_bfloat16* v_pool,
                                                   bool& rotate) {
    rotate = head < nq + nkv;
    if (head < nq) return reinterpret_cast<uint16_t*>(q_out) + ((size_t)t * nq + head) * head_dim;
    const bool is_k = head < nq + nkv;
    return reinterpret_cast<uint16_t*>(is_k ? k_pool : v_pool) +
           kv_pool_row(slot, nkv, is_k ? head - nq : head - nq - nkv) * head_dim;
}

// Pair (lo, hi) = (x[i] + b[i], x[i + half] + b[i + half]) of one head, rotated by cs (q and k) or not (v), in fp32.
template <typename In>
__device__ __forceinline__ float2 bias_rope_pair(const In* x, const uint16_t* b, float2 cs, bool rotate, int i,
                                                 int half) {
    const float lo = qkv_at(x, i) + bf16_bits_to_float(b[i]);
    const float hi = qkv_at(x, i + half) + bf16_bits_to_float(b[i + half]);
    return rotate ? rope_rotate(lo, hi, cs) : make_float2(lo, hi);
}

// A batch of rows from many sequences (docs/ENGINE_V2.md). Launch: grid = (rows, ceil((nq + 2 * nkv) /
// heads_per_block)), block = 4 * lanes threads, lanes = D/2 rounded up to a multiple of 32 (64 for D = 128): the block
// is 4 head slots of `lanes` threads, slot s takes heads y * heads_per_block + s, + 4, ... (below (y + 1) *
// heads_per_block), lane i the pairs (i, i + D/2), i + lanes, ... of each. Row t sits at position positions[t] and its
// k, v go to pool slot slots[t] = block * 64 + offset of this layer's K and V pools ([blocks, nkv, 64, D]); slot -1
// marks a padding row (CUDA-graph batches padded to a captured size): it writes nothing to the pool, and its q is
// computed at position 0 and never read. With adaptive rope scaling the rows of one step come from sequences on either
// side of the switch: rope_rows[t] picks each row's rope (inv_freq and attention_factor, or the _alt pair), so a batch of
// mixed ropes is one pass, not one pass (one read of every weight) per rope.
// Why several heads a block: a prefill chunk of 4096 rows with a 64-thread block per (row, head) was 229,376 blocks
// that each read 1 KB, and ran at 0.6 TB/s on an H200 (qkv_bias_rope 284 us a chunk, 73 ms of a 16k prefill): the
// blocks' fixed latency (the slot and position loads, the first loads) was the cost. With the heads of a row in one
// block the angle's sincos is also computed once per pair, not once per head. Decode rows keep small blocks
// (heads_per_block 4: 14 blocks a row at QwQ's 56 heads). In: the product's type, float or __nv_bfloat16 (qkv_at).
template <typename In>
__device__ __forceinline__ void qkv_bias_rope_paged_bf16(const In* __restrict__ qkv,                // [rows, (nq + 2*nkv) * D]
                                                         const __nv_bfloat16* __restrict__ bias,    // [(nq + 2*nkv) * D]
                                                         const float* __restrict__ inv_freq,        // [D/2]
                                                         float attention_factor,
                                                         const float* __restrict__ inv_freq_alt,    // [D/2] or null
                                                         float factor_alt,
                                                         const int* __restrict__ rope_rows,         // [rows] or null
                                                         const int* __restrict__ positions,         // [rows]
                                                         const int* __restrict__ slots,             // [rows]
                                                         int nq, int nkv, int head_dim, int heads_per_block,
                                                         __nv_bfloat16* __restrict__ q_out,         // [rows, nq, D]
                                                         __nv_bfloat16* __restrict__ k_pool,        // [blocks, nkv, 64, D]
                                                         __nv_bfloat16* __restrict__ v_pool) {      // [blocks, nkv, 64, D]
    kernel_entry_barrier();
    const int t = blockIdx.x, heads = nq + 2 * nkv, half = head_dim >> 1;
    const int lanes = blockDim.x >> 2, head_slot = threadIdx.x / lanes, lane = threadIdx.x % lanes;
    const RowRope r = row_rope(t, slots, positions, rope_rows, inv_freq, attention_factor, inv_freq_alt, factor_alt);
    // Padding rows have only q heads to write (the first nq).
    const int h_end = min(r.slot < 0 ? nq : heads, (blockIdx.y + 1) * heads_per_block);
    const In* x_row = qkv + (size_t)t * heads * head_dim;
    const uint16_t* b16 = reinterpret_cast<const uint16_t*>(bias);
    for (int i = lane; i < half; i += lanes) {
        const float2 cs = rope_cos_sin(r.inv_freq, r.factor, r.pos, i);
#pragma unroll 4
        for (int head = blockIdx.y * heads_per_block + head_slot; head < h_end; head += 4) {
            bool rotate;
            uint16_t* dst = bf16_head_dst(t, head, nq, nkv, r.slot, head_dim, q_out, k_pool, v_pool, rotate);
            const float2 out = bias_rope_pair(x_row + (size_t)head * head_dim, b16 + (size_t)head * head_dim, cs, rotate, i, half);
            dst[i] = float_to_bf16_bits(out.x);
            dst[i + half] = float_to_bf16_bits(out.y);
        }
    }
}

#define QWQ_QKV_ROPE_BF16_ENTRY(P, IN)                                                                              \
    extern "C" __global__ void __launch_bounds__(1024)                                                                 \
    qkv_bias_rope_paged_##P##_bf16(                                                                                   \
         const IN* __restrict__ qkv, const __nv_bfloat16* __restrict__ bias, const float* __restrict__ inv_freq,        \
         float attention_factor, const float* __restrict__ inv_freq_alt, float factor_alt,                              \
         const int* __restrict__ rope_rows, const int* __restrict__ positions, const int* __restrict__ slots, int nq,   \
         int nkv, int head_dim, int heads_per_block, __nv_bfloat16* __restrict__ q_out,                                 \
         __nv_bfloat16* __restrict__ k_pool, __nv_bfloat16* __restrict__ v_pool) {                                     \
        qkv_bias_rope_paged_bf16<IN>(qkv, bias, inv_freq, attention_factor, inv_freq_alt, factor_alt, rope_rows,      \
                                     positions, slots, nq, nkv, head_dim, heads_per_block, q_out, k_pool, v_pool);     \
    }
QWQ_QKV_ROPE_BF16_ENTRY(f32, float)
QWQ_QKV_ROPE_BF16_ENTRY(bf16, __nv_bfloat16)
#undef QWQ_QKV_ROPE_BF16_ENTRY

// The bf16-product entry for prefill chunks, vectorised (RopeOps takes it where head_dim is a multiple of 16, at most
// 512, and qkv, bias, q_out and the pools are 16-byte aligned; else qkv_bias_rope_paged_bf16_bf16): the row's cos/sin
// of every pair computed once into shared memory, then each thread takes 8 consecutive pairs (i .. i+7 and their
// partners i+D/2 ..) of one head: 16-byte loads of x and bias, 16-byte stores, the same fp32 arithmetic per element.
// Why: the scalar entry moved 2 bytes a load and ran at 1.34 TB/s on the H200 (87.8 us a 4096-row chunk, 22.5 ms of
// the 16k prefill, session 24's profile). Launch: grid = (rows, ceil((nq + 2 * nkv) / heads_per_block)), block = any
// multiple of 32 up to 1024 (RopeOps: heads_per_block * D/16 rounded up to 32); padding rows (slot -1) as above.
extern "C" __global__ void __launch_bounds__(1024)
qkv_bias_rope_paged_bf16_bf16_v8(const __nv_bfloat16* __restrict__ qkv,   // [rows, (nq + 2*nkv) * D]
                                 const __nv_bfloat16* __restrict__ bias,  // [(nq + 2*nkv) * D]
                                 const float* __restrict__ inv_freq,      // [D/2]
                                 float attention_factor,
                                 const float* __restrict__ inv_freq_alt,  // [D/2] or null
                                 float factor_alt,
                                 const int* __restrict__ rope_rows,       // [rows] or null
                                 const int* __restrict__ positions,       // [rows]
                                 const int* __restrict__ slots,           // [rows]
                                 int nq, int nkv, int head_dim, int heads_per_block,
                                 __nv_bfloat16* __restrict__ q_out,       // [rows, nq, D]
                                 __nv_bfloat16* __restrict__ k_pool,      // [blocks, nkv, 64, D]
                                 __nv_bfloat16* __restrict__ v_pool) {    // [blocks, nkv, 64, D]
    kernel_entry_barrier();
    __shared__ float2 cos_sin[256];  // [D/2], D <= 512
    const int t = blockIdx.x, heads = nq + 2 * nkv, half = head_dim >> 1, chunks = half >> 3;
    const RowRope r = row_rope(t, slots, positions, rope_rows, inv_freq, attention_factor, inv_freq_alt, factor_alt);
    const int h0 = blockIdx.y * heads_per_block;
    const int h_end = min(r.slot < 0 ? nq : heads, h0 + heads_per_block);  // padding rows: q heads only
    for (int i = threadIdx.x; i < half; i += blockDim.x) cos_sin[i] = rope_cos_sin(r.inv_freq, r.factor, r.pos, i);
    __syncthreads();
    const uint16_t* x_row = reinterpret_cast<const uint16_t*>(qkv) + (size_t)t * heads * head_dim;
    const uint16_t* b16 = reinterpret_cast<const uint16_t*>(bias);
    for (int w = threadIdx.x; w < (h_end - h0) * chunks; w += blockDim.x) {
        const int head = h0 + w / chunks, i = (w % chunks) * 8;
        bool rotate;
        uint16_t* dst = bf16_head_dst(t, head, nq, nkv, r.slot, head_dim, q_out, k_pool, v_pool, rotate);
        const uint16_t* x = x_row + (size_t)head * head_dim;
        const uint16_t* b = b16 + (size_t)head * head_dim;
        float xl[8], xh[8], bl[8], bh[8], lo[8], hi[8];
        unpack_bf16x8(*reinterpret_cast<const uint4*>(x + i), xl);
        unpack_bf16x8(*reinterpret_cast<const uint4*>(x + i + half), xh);
        unpack_bf16x8(*reinterpret_cast<const uint4*>(b + i), bl);
        unpack_bf16x8(*reinterpret_cast<const uint4*>(b + i + half), bh);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float l = xl[j] + bl[j], h = xh[j] + bh[j];
            const float2 out = rope_rotate(l, h, cos_sin[i + j], rotate);
            lo[j] = out.x;
            hi[j] = out.y;
        }
        *reinterpret_cast<uint4*>(dst + i) = pack_bf16x8(lo);
        *reinterpret_cast<uint4*>(dst + i + half) = pack_bf16x8(hi);
    }
}

// The same for the fp8 KV cache (docs/KV_CACHE.md): q as above (bf16); k and v quantized to e4m3 codes
// ([blocks, nkv, 64, D] bytes) with one fp32 scale per (slot, head) ([blocks, nkv, 64]), from the fp32 values after
// bias and RoPE. Launch as the bf16 entry (the same head slots and heads_per_block); additionally D/2 <= 256, so every
// pair of a head has its own lane and stays in registers across the head's max. A slot's lanes reduce the max over
// warp shuffles, then one float per warp in shared memory behind a named barrier of the slot's threads alone (ids 1-4;
// 0 is __syncthreads), so the four slots never wait for each other; the maxima alternate between two buffers by head,
// so the next head's writes cannot overtake a slow warp's read of this one's (it must pass the next barrier first).
// Measured on an H200 (session 13): fp8-KV prefill 2k +1.2%, 16k +0.9% against one block per (row, head).
__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <typename In>
__device__ __forceinline__ void qkv_bias_rope_paged_fp8(const In* __restrict__ qkv,              // [rows, (nq + 2*nkv) * D]
                                                        const __nv_bfloat16* __restrict__ bias,  // [(nq + 2*nkv) * D]
                                                        const float* __restrict__ inv_freq,      // [D/2]
                                                        float attention_factor,
                                                        const float* __restrict__ inv_freq_alt,  // [D/2] or null
                                                        float factor_alt,
                                                        const int* __restrict__ rope_rows,       // [rows] or null
                                                        const int* __restrict__ positions,       // [rows]
                                                        const int* __restrict__ slots,           // [rows]
                                                        int nq, int nkv, int head_dim, int heads_per_block,
                                                        __nv_bfloat16* __restrict__ q_out,       // [rows, nq, D]
                                                        uint8_t* __restrict__ k_pool,            // [blocks, nkv, 64, D] e4m3
                                                        uint8_t* __restrict__ v_pool,            // [blocks, nkv, 64, D] e4m3
                                                        float* __restrict__ k_scales,            // [blocks, nkv, 64]
                                                        float* __restrict__ v_scales) {          // [blocks, nkv, 64]
    kernel_entry_barrier();
    __shared__ float warp_max[2][4][8];  // [head parity][head slot][warp of the slot]: at most 256 lanes a slot
    const int t = blockIdx.x, heads = nq + 2 * nkv, half = head_dim >> 1;
    const int lanes = blockDim.x >> 2, head_slot = threadIdx.x / lanes, lane = threadIdx.x % lanes;
    const RowRope r = row_rope(t, slots, positions, rope_rows, inv_freq, attention_factor, inv_freq_alt, factor_alt);
    const int h_end = min(r.slot < 0 ? nq : heads, (blockIdx.y + 1) * heads_per_block);  // padding rows: q heads only
    const In* x_row = qkv + (size_t)t * heads * head_dim;
    const uint16_t* b16 = reinterpret_cast<const uint16_t*>(bias);
    const bool mine = lane < half;
    const float2 cs = mine ? rope_cos_sin(r.inv_freq, r.factor, r.pos, lane) : make_float2(1.f, 0.f);
    int parity = 0;
    for (int head = blockIdx.y * heads_per_block + head_slot; head < h_end; head += 4) {
        const In* x = x_row + (size_t)head * head_dim;
        const uint16_t* b = b16 + (size_t)head * head_dim;
        if (head < nq) {
            if (mine) {
                const float2 out = bias_rope_pair(x, b, cs, true, lane, half);
                uint16_t* dst = reinterpret_cast<uint16_t*>(q_out) + ((size_t)t * nq + head) * head_dim;
                dst[lane] = float_to_bf16_bits(out.x);
                dst[lane + half] = float_to_bf16_bits(out.y);
            }
            continue;  // the same head order in every thread of the slot: its barriers below stay matched
        }
        const bool is_k = head < nq + nkv;
        const float2 v = mine ? bias_rope_pair(x, b, cs, is_k, lane, half) : make_float2(0.f, 0.f);
        float amax = fmaxf(fabsf(v.x), fabsf(v.y));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
        if ((lane & 31) == 0) warp_max[parity][head_slot][lane >> 5] = amax;
        named_barrier(1 + head_slot, lanes);
        amax = warp_max[parity][head_slot][0];
        for (int w = 1; w < (lanes >> 5); ++w) amax = fmaxf(amax, warp_max[parity][head_slot][w]);
        parity ^= 1;
        // KvCacheFp8.Quantize bit for bit: scale = amax / 448 (1 when all zero), code = e4m3 of x / scale, IEEE divisions
        const float scale = amax > 0.f ? amax / 448.f : 1.f;
        const size_t row = kv_pool_row(r.slot, nkv, is_k ? head - nq : head - nq - nkv);
        uint8_t* codes = (is_k ? k_pool : v_pool) + row * head_dim;
        if (mine) {
            codes[lane] = (uint8_t)__nv_cvt_float_to_fp8(v.x / scale, __NV_SATFINITE, __NV_E4M3);
            codes[lane + half] = (uint8_t)__nv_cvt_float_to_fp8(v.y / scale, __NV_SATFINITE, __NV_E4M3);
        }
        if (lane == 0) (is_k ? k_scales : v_scales)[row] = scale;
    }
}

#define QWQ_QKV_ROPE_FP8_ENTRY(P, IN)                                                                               \
    extern "C" __global__ void __launch_bounds__(1024)                                                                 \
    qkv_bias_rope_paged_##P##_fp8(                                                                                    \
         const IN* __restrict__ qkv, const __nv_bfloat16* __restrict__ bias, const float* __restrict__ inv_freq,        \
         float attention_factor, const float* __restrict__ inv_freq_alt, float factor_alt,                              \
         const int* __restrict__ rope_rows, const int* __restrict__ positions, const int* __restrict__ slots, int nq,   \
         int nkv, int head_dim, int heads_per_block, __nv_bfloat16* __restrict__ q_out, uint8_t* __restrict__ k_pool,   \
         uint8_t* __restrict__ v_pool, float* __restrict__ k_scales, float* __restrict__ v_scales) {                    \
        qkv_bias_rope_paged_fp8<IN>(qkv, bias, inv_freq, attention_factor, inv_freq_alt, factor_alt, rope_rows,       \
                                    positions, slots, nq, nkv, head_dim, heads_per_block, q_out, k_pool, v_pool,       \
                                    k_scales, v_scales);                                                               \
    }
QWQ_QKV_ROPE_FP8_ENTRY(f32, float)
QWQ_QKV_ROPE_FP8_ENTRY(bf16, __nv_bfloat16)
#undef QWQ_QKV_ROPE_FP8_ENTRY

// ---- Re-rotating a sequence's cached keys into another rope (adaptive YaRN's fast switch, --rope-switch-method rerotate)
// A key cached at position p under rope "from" is f_from * R(a_from) * k; the key rope "to" writes is
// f_to * R(a_to) * k = (f_to / f_from) * R(a_to - a_from) * cached (src/QwQ.Cuda/Model/AdaptiveYarn.cs). Each angle is
// (float)p * inv_freq[i], as rope_cos_sin computes it; their difference is taken in double (exact: two fp32 values
// within YaRN's factor of each other), reduced modulo 2 pi in double, and its sincos taken in fp32: the reduced angle
// keeps fp32's relative precision (~1e-7), far below the bf16 or e4m3 rounding of the result. Values carry no rotation.
// One block per KV block of the sequence: its 64 positions' coefficients once in shared memory, then the keys of every
// layer and KV head. k_pool (and k_scales) point at layer 0's plane; layer l's is layer_bytes further.
constexpr int RR_POSITIONS = 64;  // positions per KV block
constexpr int RR_MAX_HALF = 64;   // head_dim <= 128: the coefficients of a block fit 32 KB of shared memory

__device__ __forceinline__ void rerotate_coefficients(float2* cs, const float* __restrict__ inv_from, float f_from,
                                                      const float* __restrict__ inv_to, float f_to, int rows, int half) {
    const double two_pi = 6.283185307179586476925286766559;
    const float scale = f_to / f_from;
    for (int e = threadIdx.x; e < rows * half; e += blockDim.x) {
        const int p = blockIdx.x * RR_POSITIONS + e / half, i = e % half;
        double d = (double)((float)p * inv_to[i]) - (double)((float)p * inv_from[i]);
        d -= two_pi * rint(d / two_pi);
        float s, c;
        sincosf((float)d, &s, &c);
        cs[e] = make_float2(c * scale, s * scale);
    }
    __syncthreads();
}

// Launch: grid = (ceil(positions / 64), ceil(layers / RR_LAYERS)); block = 256 threads. A block takes RR_LAYERS layers
// of one KV block (its coefficients computed once for them), a thread 4 pairs at a time with 8-byte loads of x[i..i+3]
// and x[i+D/2..], RR_LOADS quads loaded before any is stored: bandwidth, not latency, bounds it. The first version (a
// block per KV block looping over all 64 layers, a pair per thread per iteration) took ~15 ms at 32k on an H200.
constexpr int RR_LAYERS = 8;  // layers per block
constexpr int RR_LOADS = 4;   // quads in flight per thread

extern "C" __global__ void __launch_bounds__(256)
kv_rerotate_paged_bf16(__nv_bfloat16* __restrict__ k_pool,  // layer 0's K [blocks, nkv, 64, D]
                       long long layer_bytes, int layers,
                       const int* __restrict__ block_table,  // [ceil(positions / 64)] the sequence's blocks
                       int positions, int nkv, int head_dim,  // head_dim a multiple of 8
                       const float* __restrict__ inv_from, float f_from, const float* __restrict__ inv_to, float f_to) {
    kernel_entry_barrier();
    __shared__ float2 cs[RR_POSITIONS * RR_MAX_HALF];  // [position in the block][pair]
    const int half = head_dim >> 1, rows = min(RR_POSITIONS, positions - (int)blockIdx.x * RR_POSITIONS);
    rerotate_coefficients(cs, inv_from, f_from, inv_to, f_to, rows, half);
    const size_t block = (size_t)__ldg(block_table + blockIdx.x);
    const int quads = rows * half / 4, l_end = min(layers, ((int)blockIdx.y + 1) * RR_LAYERS);
    for (int l = blockIdx.y * RR_LAYERS; l < l_end; ++l) {
        uint16_t* layer = reinterpret_cast<uint16_t*>(reinterpret_cast<char*>(k_pool) + (size_t)l * layer_bytes);
        for (int h = 0; h < nkv; ++h) {
            uint16_t* head = layer + (block * nkv + h) * RR_POSITIONS * head_dim;
            for (int base = 0; base < quads; base += RR_LOADS * blockDim.x) {
                uint2 lo[RR_LOADS], hi[RR_LOADS];
#pragma unroll
                for (int k = 0; k < RR_LOADS; ++k) {
                    const int q = base + k * blockDim.x + threadIdx.x, e = 4 * q;
                    if (q < quads) {
                        const uint16_t* row = head + (size_t)(e / half) * head_dim + e % half;
                        lo[k] = *reinterpret_cast<const uint2*>(row);
                        hi[k] = *reinterpret_cast<const uint2*>(row + half);
                    }
                }
#pragma unroll
                for (int k = 0; k < RR_LOADS; ++k) {
                    const int q = base + k * blockDim.x + threadIdx.x, e = 4 * q;
                    if (q >= quads) continue;
                    const float x1[4] = {bf16_lo(lo[k].x), bf16_hi(lo[k].x), bf16_lo(lo[k].y), bf16_hi(lo[k].y)};
                    const float x2[4] = {bf16_lo(hi[k].x), bf16_hi(hi[k].x), bf16_lo(hi[k].y), bf16_hi(hi[k].y)};
                    float y1[4], y2[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        // pairs e..e+3 of one position: e / half is the row
                        const float2 y = rope_rotate(x1[j], x2[j], cs[e + j]);
                        y1[j] = y.x;
                        y2[j] = y.y;
                    }
                    uint16_t* row = head + (size_t)(e / half) * head_dim + e % half;
                    *reinterpret_cast<uint2*>(row) = make_uint2(pack_bf16x2(y1[0], y1[1]), pack_bf16x2(y1[2], y1[3]));
                    *reinterpret_cast<uint2*>(row + half) = make_uint2(pack_bf16x2(y2[0], y2[1]), pack_bf16x2(y2[2], y2[3]));
                }
            }
        }
    }
}

// The fp8 cache: each key (one position, one KV head) is decoded (code * scale), turned, and quantized again with a
// new scale amax / 448 (KvCacheFp8.Quantize's rule), one warp per key: lanes take pairs lane and lane + 32. Launched
// as the bf16 entry (RR_LAYERS layers a block).
extern "C" __global__ void __launch_bounds__(256)
kv_rerotate_paged_fp8(uint8_t* __restrict__ k_codes,  // layer 0's K codes [blocks, nkv, 64, D]
                      float* __restrict__ k_scales,   // layer 0's K scales [blocks, nkv, 64]
                      long long layer_bytes, int layers, const int* __restrict__ block_table, int positions, int nkv,
                      int head_dim, const float* __restrict__ inv_from, float f_from, const float* __restrict__ inv_to,
                      float f_to) {
    kernel_entry_barrier();
    __shared__ float2 cs[RR_POSITIONS * RR_MAX_HALF];
    const int half = head_dim >> 1, rows = min(RR_POSITIONS, positions - (int)blockIdx.x * RR_POSITIONS);
    rerotate_coefficients(cs, inv_from, f_from, inv_to, f_to, rows, half);
    const size_t block = (size_t)__ldg(block_table + blockIdx.x);
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5, l_end = min(layers, ((int)blockIdx.y + 1) * RR_LAYERS);
    for (int l = blockIdx.y * RR_LAYERS; l < l_end; ++l) {
        uint8_t* codes_l = k_codes + (size_t)l * layer_bytes;
        float* scales_l = reinterpret_cast<float*>(reinterpret_cast<char*>(k_scales) + (size_t)l * layer_bytes);
        for (int v = threadIdx.x >> 5; v < rows * nkv; v += warps) {
            const int h = v / rows, r = v % rows;
            const size_t slot = (block * nkv + h) * RR_POSITIONS + r;
            uint8_t* codes = codes_l + slot * head_dim;
            const float scale = scales_l[slot];
            float lo[2], hi[2], amax = 0.f;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int i = lane + 32 * j;
                lo[j] = hi[j] = 0.f;
                if (i < half) {
                    const float x1 = __half2float(__half(__nv_cvt_fp8_to_halfraw(codes[i], __NV_E4M3))) * scale;
                    const float x2 = __half2float(__half(__nv_cvt_fp8_to_halfraw(codes[i + half], __NV_E4M3))) * scale;
                    const float2 y = rope_rotate(x1, x2, cs[r * half + i]);
                    lo[j] = y.x;
                    hi[j] = y.y;
                    amax = fmaxf(amax, fmaxf(fabsf(lo[j]), fabsf(hi[j])));
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
            const float next = amax > 0.f ? amax / 448.f : 1.f;  // KvCacheFp8.Quantize bit for bit: IEEE divisions
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int i = lane + 32 * j;
                if (i < half) {
                    codes[i] = (uint8_t)__nv_cvt_float_to_fp8(lo[j] / next, __NV_SATFINITE, __NV_E4M3);
                    codes[i + half] = (uint8_t)__nv_cvt_float_to_fp8(hi[j] / next, __NV_SATFINITE, __NV_E4M3);
                }
            }
            if (lane == 0) scales_l[slot] = next;
        }
    }
}

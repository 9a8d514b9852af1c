// Attention input preparation for one layer: x = qkv + bias (fp32), RoPE on q and k heads (HF rotate_half:
// pairs (i, i + D/2)), q -> q_out bf16, k and v -> this layer's paged KV pool at each row's slot.
// RoPE angle = (float)pos * inv_freq[i] in fp32 with accurate sincosf (no fast-math: positions reach 32K+
// and fast __sinf loses all accuracy there); cos/sin are scaled by the YaRN attention factor.
#include "common.cuh"

// One head of one token: x + bias, rotated (q and k) or not (v), stored as bf16. The block's threads take the pairs
// (i, i + half). poison: store NaN instead (no caller sets it since the contiguous-cache entry was removed).
__device__ __forceinline__ void bias_rope_store(const float* x, const uint16_t* b, const float* __restrict__ inv_freq,
                                                float attention_factor, int pos, bool rotate, bool poison, int half,
                                                uint16_t* dst) {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float lo = x[i] + bf16_bits_to_float(b[i]);
        const float hi = x[i + half] + bf16_bits_to_float(b[i + half]);
        float out_lo = lo, out_hi = hi;
        if (rotate) {
            const float angle = (float)pos * inv_freq[i];
            float s, c;
            sincosf(angle, &s, &c);
            c *= attention_factor;
            s *= attention_factor;
            out_lo = lo * c - hi * s;
            out_hi = hi * c + lo * s;
        }
        if (poison) out_lo = out_hi = __int_as_float(0x7FC00000);
        dst[i] = float_to_bf16_bits(out_lo);
        dst[i + half] = float_to_bf16_bits(out_hi);
    }
}

// A batch of rows from many sequences (docs/ENGINE_V2.md). Launch: grid = (rows, nq + 2 * nkv), block = D/2
// rounded up to a multiple of 32 (64 for D = 128); requires D even, thread i handles the pair (i, i + D/2) of one
// head of one row. Row t sits at position positions[t] and its k, v go to pool slot slots[t] = block * 64 + offset
// of this layer's K and V pools ([blocks, nkv, 64, D]); slot -1 marks a padding row (CUDA-graph batches padded
// to a captured size): it writes nothing to the pool, and its q is computed at position 0 and never read.
extern "C" __global__ void __launch_bounds__(256)
qkv_bias_rope_paged_f32_bf16(const float* __restrict__ qkv,            // [rows, (nq + 2*nkv) * D]
                             const __nv_bfloat16* __restrict__ bias,   // [(nq + 2*nkv) * D]
                             const float* __restrict__ inv_freq,       // [D/2]
                             float attention_factor,
                             const int* __restrict__ positions,        // [rows]
                             const int* __restrict__ slots,            // [rows]
                             int nq, int nkv, int head_dim,
                             __nv_bfloat16* __restrict__ q_out,        // [rows, nq, D]
                             __nv_bfloat16* __restrict__ k_pool,       // [blocks, nkv, 64, D]
                             __nv_bfloat16* __restrict__ v_pool) {     // [blocks, nkv, 64, D]
    kernel_entry_barrier();
    constexpr int BLOCK = 64;  // positions per KV block
    const int t = blockIdx.x;
    const int head = blockIdx.y;  // q heads, then k heads, then v heads
    const int half = head_dim >> 1;
    const int slot = __ldg(slots + t);
    const int pos = slot < 0 ? 0 : __ldg(positions + t);
    const int width = (nq + 2 * nkv) * head_dim;
    const float* x = qkv + (size_t)t * width + (size_t)head * head_dim;
    const uint16_t* b = reinterpret_cast<const uint16_t*>(bias) + (size_t)head * head_dim;

    uint16_t* dst;
    bool rotate = true;
    if (head < nq) {
        dst = reinterpret_cast<uint16_t*>(q_out) + ((size_t)t * nq + head) * head_dim;
    } else if (slot < 0) {
        return;
    } else {
        const bool is_k = head < nq + nkv;
        const int kvh = is_k ? head - nq : head - nq - nkv;
        const size_t row = ((size_t)(slot / BLOCK) * nkv + kvh) * BLOCK + slot % BLOCK;
        dst = reinterpret_cast<uint16_t*>(is_k ? k_pool : v_pool) + row * head_dim;
        rotate = is_k;
    }

    bias_rope_store(x, b, inv_freq, attention_factor, pos, rotate, false, half, dst);
}

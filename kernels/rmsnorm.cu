// Fused residual add + RMSNorm:  residual += delta (if delta != null);
//                                out = bf16(residual * rsqrt(mean(residual^2) + eps) * weight).
// With delta == null the residual is only read (final norm, or the first norm after the embedding).
#include "common.cuh"

// Launch: grid.x = tokens (one block per row), block = 256 threads (any multiple of 32 up to 1024).
// Two passes over the row: the second re-reads values this same thread wrote in the first (L1/L2 hits;
// a 5120-wide fp32 row is 20 KB), which keeps the kernel independent of `hidden`.
extern "C" __global__ void __launch_bounds__(1024)
residual_add_rmsnorm_f32_bf16(float* __restrict__ residual,            // [tokens, hidden] in/out
                              const float* __restrict__ delta,         // [tokens, hidden] or null
                              const __nv_bfloat16* __restrict__ weight,// [hidden]
                              __nv_bfloat16* __restrict__ out,         // [tokens, hidden]
                              int hidden, float eps) {
    kernel_entry_barrier();
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * hidden;
    float* res = residual + base;
    const float* del = delta ? delta + base : nullptr;
    uint16_t* o = reinterpret_cast<uint16_t*>(out) + base;
    const uint16_t* wbits = reinterpret_cast<const uint16_t*>(weight);

    const bool vec = (hidden & 3) == 0 && is_aligned(res, 16) && (!del || is_aligned(del, 16)) &&
                     is_aligned(o, 8) && is_aligned(wbits, 8);
    float sumsq = 0.0f;
    if (vec) {
        const int n4 = hidden >> 2;
        for (int c = threadIdx.x; c < n4; c += blockDim.x) {
            float4 v = reinterpret_cast<float4*>(res)[c];
            if (del) {
                const float4 d = reinterpret_cast<const float4*>(del)[c];
                v.x += d.x; v.y += d.y; v.z += d.z; v.w += d.w;
                reinterpret_cast<float4*>(res)[c] = v;
            }
            sumsq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
            float v = res[i];
            if (del) {
                v += del[i];
                res[i] = v;
            }
            sumsq += v * v;
        }
    }
    const float total = block_sum(sumsq, scratch);
    const float inv_rms = rsqrtf(total / (float)hidden + eps);

    if (vec) {
        const int n4 = hidden >> 2;
        for (int c = threadIdx.x; c < n4; c += blockDim.x) {
            const float4 v = reinterpret_cast<const float4*>(res)[c];
            const uint2 w = __ldg(reinterpret_cast<const uint2*>(wbits) + c);
            uint2 packed;
            packed.x = pack_bf16x2(v.x * inv_rms * bf16_lo(w.x), v.y * inv_rms * bf16_hi(w.x));
            packed.y = pack_bf16x2(v.z * inv_rms * bf16_lo(w.y), v.w * inv_rms * bf16_hi(w.y));
            reinterpret_cast<uint2*>(o)[c] = packed;
        }
    } else {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x)
            o[i] = float_to_bf16_bits(res[i] * inv_rms * bf16_bits_to_float(wbits[i]));
    }
}

// SwiGLU activation: out[t, i] = bf16(silu(gate[t, i]) * up[t, i]) with gate = gate_up[t, 0:I),
// up = gate_up[t, I:2I) (the fused gate_up projection output, fp32).
#include "common.cuh"

// Accurate expf (no fast-math): silu(g) = g / (1 + e^-g); for g -> -inf, e^-g -> inf and the result -> -0.
QWQ_DEVICE float silu(float g) { return g / (1.0f + expf(-g)); }

// Launch: 1-D grid-stride over tokens * I / 4 groups of 4 (or elements when I % 4 != 0), block = 256.
extern "C" __global__ void __launch_bounds__(256)
silu_mul_f32_bf16(const float* __restrict__ gate_up,  // [tokens, 2 * inter]
                  __nv_bfloat16* __restrict__ out,    // [tokens, inter]
                  int tokens, int inter) {
    kernel_entry_barrier();
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    if ((inter & 3) == 0) {
        const int groups_per_row = inter >> 2;
        const uint64_t total = (uint64_t)tokens * groups_per_row;
        for (uint64_t g = global_thread_index(); g < total; g += grid_thread_count()) {
            const uint64_t t = g / groups_per_row;
            const int c = (int)(g - t * groups_per_row) * 4;
            const float* row = gate_up + t * (uint64_t)(2 * inter);
            const float4 gv = *reinterpret_cast<const float4*>(row + c);
            const float4 uv = *reinterpret_cast<const float4*>(row + inter + c);
            uint2 packed;
            packed.x = pack_bf16x2(silu(gv.x) * uv.x, silu(gv.y) * uv.y);
            packed.y = pack_bf16x2(silu(gv.z) * uv.z, silu(gv.w) * uv.w);
            *reinterpret_cast<uint2*>(o + t * inter + c) = packed;
        }
    } else {
        const uint64_t total = (uint64_t)tokens * inter;
        for (uint64_t e = global_thread_index(); e < total; e += grid_thread_count()) {
            const uint64_t t = e / inter;
            const int c = (int)(e - t * inter);
            const float* row = gate_up + t * (uint64_t)(2 * inter);
            o[e] = float_to_bf16_bits(silu(row[c]) * row[inter + c]);
        }
    }
}

// SwiGLU activation: out[t, i] = bf16(silu(gate[t, i]) * up[t, i]) with gate = gate_up[t, 0:I),
// up = gate_up[t, I:2I) (the fused gate_up projection output: fp32, or bf16 where a prefill-sized product wrote it so).
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

// The same from a bf16 gate_up [tokens, 2 * inter]: what prefill-sized products write (cuBLAS with a bf16 output),
// because at 4096 rows the fp32 one is 906 MB a layer for this kernel to read against 453 in bf16; this kernel is
// bandwidth-bound (4.3 TB/s on the H200 on the fp32 input, session 20's profile: 67.5 ms of a 2,009-ms 16k prefill).
// silu(g) * u in fp32 from the bf16 inputs, rounded once.
// Launch: 1-D grid-stride over tokens * I / 8 groups of 8 (or elements when I % 8 != 0), block = 256.
extern "C" __global__ void __launch_bounds__(256)
silu_mul_bf16_bf16(const __nv_bfloat16* __restrict__ gate_up,  // [tokens, 2 * inter]
                   __nv_bfloat16* __restrict__ out,            // [tokens, inter]
                   int tokens, int inter) {
    kernel_entry_barrier();
    const uint16_t* gu = reinterpret_cast<const uint16_t*>(gate_up);
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    if ((inter & 7) == 0) {
        const int groups_per_row = inter >> 3;
        const uint64_t total = (uint64_t)tokens * groups_per_row;
        for (uint64_t g = global_thread_index(); g < total; g += grid_thread_count()) {
            const uint64_t t = g / groups_per_row;
            const int c = (int)(g - t * groups_per_row) * 8;
            const uint16_t* row = gu + t * (uint64_t)(2 * inter);
            const uint4 gv = *reinterpret_cast<const uint4*>(row + c);
            const uint4 uv = *reinterpret_cast<const uint4*>(row + inter + c);
            float gf[8], uf[8];
            unpack_bf16x8(gv, gf);
            unpack_bf16x8(uv, uf);
            uint4 packed;
            packed.x = pack_bf16x2(silu(gf[0]) * uf[0], silu(gf[1]) * uf[1]);
            packed.y = pack_bf16x2(silu(gf[2]) * uf[2], silu(gf[3]) * uf[3]);
            packed.z = pack_bf16x2(silu(gf[4]) * uf[4], silu(gf[5]) * uf[5]);
            packed.w = pack_bf16x2(silu(gf[6]) * uf[6], silu(gf[7]) * uf[7]);
            *reinterpret_cast<uint4*>(o + t * inter + c) = packed;
        }
    } else {
        const uint64_t total = (uint64_t)tokens * inter;
        for (uint64_t e = global_thread_index(); e < total; e += grid_thread_count()) {
            const uint64_t t = e / inter;
            const int c = (int)(e - t * inter);
            const uint16_t* row = gu + t * (uint64_t)(2 * inter);
            o[e] = float_to_bf16_bits(silu(bf16_bits_to_float(row[c])) * bf16_bits_to_float(row[inter + c]));
        }
    }
}

// SwiGLU activation: out[t, i] = bf16(silu(gate[t, i]) * up[t, i]) with gate = gate_up[t, 0:I),
// up = gate_up[t, I:2I) (the fused gate_up projection output: fp32 for decode batches, bf16 where a prefill-sized
// product wrote it so: at 4096 rows the fp32 one is 906 MB a layer for this kernel to read against 453 in bf16, and this
// kernel is bandwidth-bound: 4.3 TB/s on the H200 on the fp32 input, session 20's profile). silu(g) * u in fp32 from
// either input, rounded once.
#include "common.cuh"

// silu: common.cuh (shared with quantize_fp8_silu_mul_rows, which must give the same bf16 values).

// One input type's element and 16-byte vector reads: fp32 4 elements a vector, bf16 (as bits) 8.
template <typename In> struct SiluInput;
template <> struct SiluInput<float> {
    static constexpr int kVector = 4;
    QWQ_DEVICE static float at(const float* p, uint64_t i) { return p[i]; }
    QWQ_DEVICE static void load(const float* p, float (&f)[4]) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
    }
};
template <> struct SiluInput<uint16_t> {
    static constexpr int kVector = 8;
    QWQ_DEVICE static float at(const uint16_t* p, uint64_t i) { return bf16_bits_to_float(p[i]); }
    QWQ_DEVICE static void load(const uint16_t* p, float (&f)[8]) { unpack_bf16x8(*reinterpret_cast<const uint4*>(p), f); }
};

// Launch: 1-D grid-stride over tokens * I / V groups of V (the input's vector: 4 fp32, 8 bf16), or over elements when
// I % V != 0; block = 256.
template <typename In>
QWQ_DEVICE void silu_mul(const In* __restrict__ gate_up, uint16_t* __restrict__ o, int tokens, int inter) {
    using Input = SiluInput<In>;
    constexpr int V = Input::kVector;
    if (inter % V == 0) {
        const int groups_per_row = inter / V;
        const uint64_t total = (uint64_t)tokens * groups_per_row;
        for (uint64_t g = global_thread_index(); g < total; g += grid_thread_count()) {
            const uint64_t t = g / groups_per_row;
            const int c = (int)(g - t * groups_per_row) * V;
            const In* row = gate_up + t * (uint64_t)(2 * inter);
            float gf[V], uf[V];
            Input::load(row + c, gf);
            Input::load(row + inter + c, uf);
            uint32_t packed[V / 2];
#pragma unroll
            for (int i = 0; i < V / 2; i++)
                packed[i] = pack_bf16x2(silu(gf[2 * i]) * uf[2 * i], silu(gf[2 * i + 1]) * uf[2 * i + 1]);
            if constexpr (V == 8)
                *reinterpret_cast<uint4*>(o + t * inter + c) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            else
                *reinterpret_cast<uint2*>(o + t * inter + c) = make_uint2(packed[0], packed[1]);
        }
    } else {
        const uint64_t total = (uint64_t)tokens * inter;
        for (uint64_t e = global_thread_index(); e < total; e += grid_thread_count()) {
            const uint64_t t = e / inter;
            const uint64_t row = t * (uint64_t)(2 * inter), c = e - t * inter;
            o[e] = float_to_bf16_bits(silu(Input::at(gate_up, row + c)) * Input::at(gate_up, row + inter + c));
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
silu_mul_f32_bf16(const float* __restrict__ gate_up,  // [tokens, 2 * inter]
                  __nv_bfloat16* __restrict__ out,    // [tokens, inter]
                  int tokens, int inter) {
    kernel_entry_barrier();
    silu_mul(gate_up, reinterpret_cast<uint16_t*>(out), tokens, inter);
}

extern "C" __global__ void __launch_bounds__(256)
silu_mul_bf16_bf16(const __nv_bfloat16* __restrict__ gate_up,  // [tokens, 2 * inter]
                   __nv_bfloat16* __restrict__ out,            // [tokens, inter]
                   int tokens, int inter) {
    kernel_entry_barrier();
    silu_mul(reinterpret_cast<const uint16_t*>(gate_up), reinterpret_cast<uint16_t*>(out), tokens, inter);
}

// Device-side tensor initialisation: synthetic weights (benchmarks/tests without a checkpoint),
// constant fill, fp32 -> bf16 conversion. Grid-stride loops with 64-bit indices (tensors up to 778M elements).
//
// fill_normal_bf16 is a pure function of (seed, element index), independent of the launch geometry:
//   pair p (elements 2p, 2p+1):  h  = mix64(mix64(seed) + (p + 1) * 0x9E3779B97F4A7C15)   (splitmix64 finaliser)
//                                u1 = ((h >> 40) + 1) * 2^-24  in (0, 1]
//                                u2 = (h & 0xFFFFFF) * 2^-24   in [0, 1)
//                                r  = sqrt(-2 ln u1);  element 2p = mean + std * r * cos(2 pi u2),
//                                                      element 2p+1 = mean + std * r * sin(2 pi u2)
// (accurate logf / sincospif; rounded to bf16 with round-to-nearest-even). Host tests mirror this formula.
#include "common.cuh"

QWQ_DEVICE uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

QWQ_DEVICE void normal_pair(uint64_t seed_mixed, uint64_t p, float mean, float std, float& n0, float& n1) {
    const uint64_t h = mix64(seed_mixed + (p + 1) * 0x9E3779B97F4A7C15ull);
    const float u1 = (float)((h >> 40) + 1) * 5.9604644775390625e-8f;  // 2^-24
    const float u2 = (float)(h & 0xFFFFFFull) * 5.9604644775390625e-8f;
    const float r = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    n0 = mean + std * (r * c);
    n1 = mean + std * (r * s);
}

// Launch: 1-D grid (any size), block = 256. Each thread produces 8 consecutive elements per step
// (one 16-byte store when `out` is 16-byte aligned).
extern "C" __global__ void __launch_bounds__(256)
fill_normal_bf16(__nv_bfloat16* __restrict__ out,  // [n]
                 unsigned long long n, unsigned long long seed, float mean, float std) {
    kernel_entry_barrier();
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    const uint64_t seed_mixed = mix64(seed);
    const uint64_t groups = (n + 7) / 8;
    const bool aligned = is_aligned(o, 16);
    for (uint64_t g = global_thread_index(); g < groups; g += grid_thread_count()) {
        const uint64_t e0 = g * 8;
        float f[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) normal_pair(seed_mixed, g * 4 + j, mean, std, f[2 * j], f[2 * j + 1]);
        if (aligned && e0 + 8 <= n) {
            *reinterpret_cast<uint4*>(o + e0) = pack_bf16x8(f);
        } else {
            for (int j = 0; j < 8 && e0 + j < n; ++j) o[e0 + j] = float_to_bf16_bits(f[j]);
        }
    }
}

// The window [row0, row0 + rows) x [col0, col0 + cols) of the row-major tensor (full_cols per row) that
// fill_normal_bf16 makes with the same seed, written densely to out [rows, cols]: a tensor-parallel rank generates
// exactly its shard of the single-GPU synthetic weights (q/k/v and gate/up by rows, o_proj and down_proj by columns).
// Launch: 1-D grid (any size), block = 256; one element per thread per step.
extern "C" __global__ void __launch_bounds__(256)
fill_normal_bf16_window(__nv_bfloat16* __restrict__ out,  // [rows, cols]
                        unsigned long long rows, unsigned long long cols, unsigned long long full_cols,
                        unsigned long long row0, unsigned long long col0,
                        unsigned long long seed, float mean, float std) {
    kernel_entry_barrier();
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    const uint64_t seed_mixed = mix64(seed);
    const uint64_t n = rows * cols;
    for (uint64_t i = global_thread_index(); i < n; i += grid_thread_count()) {
        const uint64_t e = (row0 + i / cols) * full_cols + col0 + i % cols;  // index in the full tensor
        float n0, n1;
        normal_pair(seed_mixed, e / 2, mean, std, n0, n1);
        o[i] = float_to_bf16_bits((e & 1) ? n1 : n0);
    }
}

// Launch: 1-D grid (any size), block = 256.
extern "C" __global__ void __launch_bounds__(256)
fill_const_bf16(__nv_bfloat16* __restrict__ out,  // [n]
                unsigned long long n, float value) {
    kernel_entry_barrier();
    uint16_t* o = reinterpret_cast<uint16_t*>(out);
    const uint16_t bits = float_to_bf16_bits(value);
    const uint32_t word = (uint32_t)bits | ((uint32_t)bits << 16);
    const uint4 v = make_uint4(word, word, word, word);
    const uint64_t groups = (n + 7) / 8;
    const bool aligned = is_aligned(o, 16);
    for (uint64_t g = global_thread_index(); g < groups; g += grid_thread_count()) {
        const uint64_t e0 = g * 8;
        if (aligned && e0 + 8 <= n) {
            *reinterpret_cast<uint4*>(o + e0) = v;
        } else {
            for (int j = 0; j < 8 && e0 + j < n; ++j) o[e0 + j] = bits;
        }
    }
}

// Launch: 1-D grid (any size), block = 256. Round-to-nearest-even, NaN/Inf preserved.
extern "C" __global__ void __launch_bounds__(256)
convert_f32_to_bf16(const float* __restrict__ src,    // [n]
                    __nv_bfloat16* __restrict__ dst,  // [n]
                    unsigned long long n) {
    kernel_entry_barrier();
    uint16_t* o = reinterpret_cast<uint16_t*>(dst);
    const uint64_t groups = (n + 7) / 8;
    const bool aligned = is_aligned(o, 16) && is_aligned(src, 16);
    for (uint64_t g = global_thread_index(); g < groups; g += grid_thread_count()) {
        const uint64_t e0 = g * 8;
        if (aligned && e0 + 8 <= n) {
            const float4 a = reinterpret_cast<const float4*>(src + e0)[0];
            const float4 b = reinterpret_cast<const float4*>(src + e0)[1];
            const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            *reinterpret_cast<uint4*>(o + e0) = pack_bf16x8(f);
        } else {
            for (int j = 0; j < 8 && e0 + j < n; ++j) o[e0 + j] = float_to_bf16_bits(src[e0 + j]);
        }
    }
}

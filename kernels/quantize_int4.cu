// INT4 weight preparation on the GPU, run at load time (and for the products that go through a bf16 GEMM). Every
// kernel here writes or reads the int4 layout of int4.cuh; one thread owns one 32-bit word of it (8 consecutive k of
// one row), so no two threads touch the same word.
//   * quantize_int4_rows (--quantize int4): bf16 rows -> codes + per-(group, row) fp16 scale and zero point, by
//     round-to-nearest with AutoAWQ's asymmetric formula; Weights/Quantization/Int4Rtn.cs is the CPU twin and the two
//     agree bit for bit:
//       s = fp16(min(max(max - min, 1e-5) / 15, 65504)), z = clamp(-rint(min / s), 0, 15), q = clamp(rint(w / s) + z, 0, 15)
//   * repack_awq_rows: an AutoAWQ "gemm" linear (qweight I32 [k, n/8], qzeros I32 [k/G, n/8], scales fp16 [k/G, n],
//     columns interleaved in each int32) -> the same codes, scales and zeros in our layout.
//   * dequantize_int4_rows: -> row-major bf16 (w = (q - z) * s, rounded to bf16), for prefill-sized products.
#include <cuda_fp16.h>

#include "common.cuh"
#include "int4.cuh"

namespace {
constexpr int kInt4Threads = 256;

__device__ __forceinline__ uint32_t pack_word(const int (&q)[8]) {
    uint32_t word = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) word |= (uint32_t)q[e] << int4_bit(e);  // the word's 8 k start at a multiple of 8
    return word;
}

// AutoAWQ's interleave: column c of a block of 8 sits in nibble [0, 4, 1, 5, 2, 6, 3, 7][c].
__device__ __forceinline__ int awq_shift(int column) {
    return 4 * (int)((0x73625140u >> (4 * (column & 7))) & 0xF);
}
}  // namespace

// Launch: grid ceil(rows * k / 8 / 256), block 256. src holds rows [row0, row0 + rows) of the weight, row-major;
// k % 64 == 0, G a power of two in [64, 256] dividing k, src 16-byte aligned; sz [k / G, n_pad].
extern "C" __global__ void __launch_bounds__(kInt4Threads)
quantize_int4_rows(const __nv_bfloat16* __restrict__ src,  // [rows, k]
                   uint8_t* __restrict__ dst,              // the whole weight, int4 layout
                   uint32_t* __restrict__ sz,              // [k / G, n_pad] of the whole weight
                   int row0, int rows, int k, int n_pad, int group) {
    kernel_entry_barrier();
    const long long words = (long long)rows * (k / 8);
    const long long i = (long long)global_thread_index();
    const bool valid = i < words;
    // Groups are aligned runs of group / 8 lanes, and words is a multiple of group / 8, so a lane past the end only
    // ever shares a group with other lanes past the end: they compute on a valid row and write nothing.
    const long long iw = valid ? i : words - 1;
    const int r = (int)(iw / (k / 8)), kk = (int)(iw % (k / 8)) * 8;
    float f[8];
    unpack_bf16x8(*reinterpret_cast<const uint4*>(src + (size_t)r * k + kk), f);
    float mn = f[0], mx = f[0];
#pragma unroll
    for (int e = 1; e < 8; ++e) { mn = fminf(mn, f[e]); mx = fmaxf(mx, f[e]); }
    for (int o = group / 16; o > 0; o >>= 1) {
        mn = fminf(mn, __shfl_xor_sync(0xFFFFFFFFu, mn, o));
        mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
    }
    const __half sh = __float2half_rn(fminf(fmaxf(mx - mn, 1e-5f) / 15.f, 65504.f));
    const float s = __half2float(sh);
    const float z = fminf(fmaxf(-rintf(mn / s), 0.f), 15.f);
    int q[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = (int)fminf(fmaxf(rintf(f[e] / s) + z, 0.f), 15.f);
    if (!valid) return;
    const int row = row0 + r;
    *reinterpret_cast<uint32_t*>(dst + int4_word_offset(row, kk, k)) = pack_word(q);
    if (kk % group == 0) sz[(size_t)(kk / group) * n_pad + row] = int4_pack_scale_zero(__half_as_ushort(sh), (int)z);
}

// Launch: grid ceil(n * k / 8 / 256), block 256. One AWQ linear of n outputs, k inputs, into rows [row0, row0 + n)
// of the (maybe fused) weight. k % 64 == 0, G % 64 == 0 and divides k, n % 8 == 0.
extern "C" __global__ void __launch_bounds__(kInt4Threads)
repack_awq_rows(const uint32_t* __restrict__ qweight,  // [k, n / 8]
                const uint32_t* __restrict__ qzeros,   // [k / G, n / 8]
                const uint16_t* __restrict__ scales,   // fp16 [k / G, n]
                uint8_t* __restrict__ dst,             // the whole weight, int4 layout
                uint32_t* __restrict__ sz,             // [k / G, n_pad] of the whole weight
                int row0, int n, int k, int n_pad, int group) {
    kernel_entry_barrier();
    const long long words = (long long)n * (k / 8);
    const long long i = (long long)global_thread_index();
    if (i >= words) return;
    // Neighbouring threads take neighbouring rows (the same qweight words, their other nibbles).
    const int r = (int)(i % n), kk = (int)(i / n) * 8;
    const int shift = awq_shift(r), packed_cols = n / 8;
    int q[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = (int)((qweight[(size_t)(kk + e) * packed_cols + r / 8] >> shift) & 0xFu);
    const int row = row0 + r;
    *reinterpret_cast<uint32_t*>(dst + int4_word_offset(row, kk, k)) = pack_word(q);
    if (kk % group == 0) {
        const int grp = kk / group;
        const int z = (int)((qzeros[(size_t)grp * packed_cols + r / 8] >> shift) & 0xFu);
        sz[(size_t)grp * n_pad + row] = int4_pack_scale_zero(scales[(size_t)grp * n + r], z);
    }
}

// Launch: 1-D grid-stride over the words of rows [0, rows). k % 64 == 0, G % 64 == 0, dst 16-byte aligned.
extern "C" __global__ void dequantize_int4_rows(const uint8_t* __restrict__ src,   // int4 layout
                                                const uint32_t* __restrict__ sz,   // [k / G, n_pad]
                                                __nv_bfloat16* __restrict__ dst,   // [rows, k] row-major
                                                long long rows, int k, int n_pad, int group) {
    kernel_entry_barrier();
    const long long words = rows * (k / 8);
    for (long long i = (long long)global_thread_index(); i < words; i += (long long)grid_thread_count()) {
        const int row = (int)(i / (k / 8)), kk = (int)(i % (k / 8)) * 8;
        const uint32_t v = *reinterpret_cast<const uint32_t*>(src + int4_word_offset(row, kk, k));
        const uint32_t s_z = sz[(size_t)(kk / group) * n_pad + row];
        const float s = int4_scale(s_z);
        const int z = int4_zero(s_z);
        float f[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = (float)((int)((v >> int4_bit(e)) & 0xFu) - z) * s;
        reinterpret_cast<uint4*>(dst)[i] = pack_bf16x8(f);
    }
}

// Weight quantization on the GPU, run at load time (and for the products that go through a bf16 GEMM):
//   * quantize_fp8_rows: bf16 rows -> e4m3 codes in the fp8 tile layout (fp8.cuh) + one fp32 scale per output
//     channel, scale = amax / 448 (the largest e4m3 value), codes = round-to-nearest-even(w / scale), saturated. The
//     CPU side (Weights/Quantization/Fp8E4M3) quantizes the same way, so tests can build the same weights on both.
//   * repack_fp8_rows: row-major codes (an FP8 checkpoint's) -> the tile layout.
//   * dequantize_fp8_rows: tile layout + scale -> row-major bf16 (w = code * scale, rounded to bf16), for
//     prefill-sized products that run on the bf16 tensor cores through cuBLAS.
// And for prefill-sized products on the FP8 tensor cores (cuBLASLt, e4m3 x e4m3 with outer-vector scales):
//   * quantize_fp8_act_rows: bf16 activations -> row-major e4m3 + one fp32 scale per row (token): scale = amax / 448
//     as quantize_fp8_rows stores it, codes = RNE(x * (448 / amax)), saturated (a multiplication per element where the
//     weights divide: e4m3x8_mul); the host mirror is Fp8E4M3.QuantizePerToken.
//   * untile_fp8_rows: the tile layout -> row-major e4m3 [n, k], which cuBLASLt reads as the K-major ("T") operand.
//   * quantize_fp8_silu_mul_rows: SiLU·mul of a bf16 gate_up straight into down_proj's per-token e4m3 input.
#include <cuda_fp8.h>

#include "common.cuh"
#include "fp8.cuh"

namespace {
constexpr int kQuantThreads = 256;
// The fused SiLU·mul quantizer's block: QwQ's 27,648-wide row is 3,456 16-byte vectors, 9 a thread at 384 (13.5 at
// 256, the last pass half idle), and its 54 KB of shared memory let 4 blocks share an SM either way. Session 25's
// micro-benchmark (bench/micro/silu_fp8.cu): 384 threads 1.10x of 256 alone, 1.41x with the pairwise conversion and
// the per-token multiplication (e4m3x8_mul); 128 threads 0.72x.
constexpr int kSiluMulThreads = 384;

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    return m;
}

// Two values to e4m3 codes (round to nearest even, saturated), the first in the low byte: the hardware converts a pair
// at a time (cvt.rn.satfinite.e4m3x2.f32), half the instructions of one code at a time and the same codes.
__device__ __forceinline__ uint32_t e4m3x2(float a, float b) {
    return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

// Eight weights divided by their channel's scale (IEEE division) and rounded to e4m3: the per-channel quantization of a
// weight, Fp8E4M3.QuantizePerChannel's on the host (and the FP8 KV cache's, kernels/rope.cu).
__device__ __forceinline__ uint2 e4m3x8_div(const float (&f)[8], float sc) {
    return make_uint2(e4m3x2(f[0] / sc, f[1] / sc) | (e4m3x2(f[2] / sc, f[3] / sc) << 16),
                      e4m3x2(f[4] / sc, f[5] / sc) | (e4m3x2(f[6] / sc, f[7] / sc) << 16));
}

// A token's inverse scale, 448 / amax (one IEEE division a row; 1 for an all-zero row), capped at the largest float so a
// row of subnormal-sized values gives small codes, never inf x 0 = NaN. The row's stored scale stays amax / 448.
__device__ __forceinline__ float e4m3_inverse_scale(float amax) {
    return amax > 0.f ? fminf(448.f / amax, 3.402823466e38f) : 1.f;
}

// Eight activations multiplied by their token's inverse scale and rounded to e4m3: the per-token quantization of the
// FP8 GEMM's input, Fp8E4M3.QuantizePerToken's on the host. A multiplication instead of the weights' division per
// element (session 25: with the pairwise conversion, 1.25x the fused SiLU·mul kernel's rate, which the divisions bound;
// 4,677 of 113 M codes of a 4096-row chunk land one step from the division's, where x / scale lies within an fp32
// rounding of an e4m3 midpoint).
__device__ __forceinline__ uint2 e4m3x8_mul(const float (&f)[8], float inv) {
    return make_uint2(e4m3x2(f[0] * inv, f[1] * inv) | (e4m3x2(f[2] * inv, f[3] * inv) << 16),
                      e4m3x2(f[4] * inv, f[5] * inv) | (e4m3x2(f[6] * inv, f[7] * inv) << 16));
}

// The end of a per-token quantization, one block a row: the row's amax over the block, its scale (amax / 448, 1 for an
// all-zero row: no 0/0) and its codes from the row's bf16 values at src (global memory, or the fused kernel's shared
// copy). quantize_fp8_act_rows and quantize_fp8_silu_mul_rows end alike, so both give the same codes for the same values.
__device__ __forceinline__ void store_token_codes(float amax, float* scratch, const uint4* src, int vecs,
                                                  uint8_t* __restrict__ codes_row, float* __restrict__ scale_out) {
    amax = block_max(amax, scratch);
    const float inv = e4m3_inverse_scale(amax);
    if (threadIdx.x == 0) *scale_out = amax > 0.f ? amax / 448.f : 1.f;
    uint2* out = reinterpret_cast<uint2*>(codes_row);
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        float f[8];
        unpack_bf16x8(src[i], f);
        out[i] = e4m3x8_mul(f, inv);
    }
}
}  // namespace

// Launch: grid rows, block 256. Rows [row0, row0 + gridDim.x) of the weight; src holds just those rows.
// k % 64 == 0, src 16-byte aligned.
extern "C" __global__ void __launch_bounds__(kQuantThreads)
quantize_fp8_rows(const __nv_bfloat16* __restrict__ src,  // [rows, k]
                  uint8_t* __restrict__ dst,              // the whole weight, tile layout
                  float* __restrict__ scale,              // [n] of the whole weight
                  int row0, int k) {
    kernel_entry_barrier();
    __shared__ float scratch[32];
    const int row = row0 + blockIdx.x;
    const uint4* s = reinterpret_cast<const uint4*>(src + (size_t)blockIdx.x * (size_t)k);
    const int vecs = k / 8;
    float amax = 0.f;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        float f[8];
        unpack_bf16x8(s[i], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(f[j]));
    }
    amax = block_max(amax, scratch);
    const float sc = amax > 0.f ? amax / 448.f : 1.f;
    if (threadIdx.x == 0) scale[row] = sc;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        float f[8];
        unpack_bf16x8(s[i], f);
        *reinterpret_cast<uint2*>(dst + fp8_tile_offset(row, 8 * i, k)) = e4m3x8_div(f, sc);  // 8 codes stay within one 16-byte piece
    }
}

// Launch: 1-D grid-stride over 16-code pieces of rows [row0, row0 + rows). k % 64 == 0, pointers 16-byte aligned.
extern "C" __global__ void repack_fp8_rows(const uint8_t* __restrict__ src,  // [rows, k] row-major
                                           uint8_t* __restrict__ dst,        // the whole weight, tile layout
                                           int row0, int rows, int k) {
    kernel_entry_barrier();
    const long long per_row = k / 16, pieces = (long long)rows * per_row;
    for (long long i = (long long)global_thread_index(); i < pieces; i += (long long)grid_thread_count()) {
        const int r = (int)(i / per_row), kk = (int)(i % per_row) * 16;
        *reinterpret_cast<uint4*>(dst + fp8_tile_offset(row0 + r, kk, k)) = reinterpret_cast<const uint4*>(src)[i];
    }
}

// Launch: 1-D grid-stride over 16-element pieces of the row-major output; k % 64 == 0, pointers 16-byte aligned.
extern "C" __global__ void dequantize_fp8_rows(const uint8_t* __restrict__ src,  // tile layout
                                               const float* __restrict__ scale,  // [rows]
                                               __nv_bfloat16* __restrict__ dst,  // [rows, k] row-major
                                               long long rows, int k) {
    kernel_entry_barrier();
    const long long per_row = k / 16, pieces = rows * per_row;
    for (long long i = (long long)global_thread_index(); i < pieces; i += (long long)grid_thread_count()) {
        const int row = (int)(i / per_row), kk = (int)(i % per_row) * 16;
        const float sc = scale[row];
        uint4 lo, hi;
        fp8x16_to_bf16x16(*reinterpret_cast<const uint4*>(src + fp8_tile_offset(row, kk, k)), lo, hi);
        float f[8];
        unpack_bf16x8(lo, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] *= sc;
        reinterpret_cast<uint4*>(dst)[2 * i] = pack_bf16x8(f);
        unpack_bf16x8(hi, f);
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] *= sc;
        reinterpret_cast<uint4*>(dst)[2 * i + 1] = pack_bf16x8(f);
    }
}

// Launch: grid rows, block 256 (one block per row: a prefill chunk has thousands of rows, and one row of QwQ's widest
// input, 27648 bf16, stays in L1/L2 between the amax pass and the quantize pass). k % 16 == 0 (cuBLASLt's FP8
// alignment; the kernel itself needs k % 8), x and codes 16-byte aligned.
extern "C" __global__ void __launch_bounds__(kQuantThreads)
quantize_fp8_act_rows(const __nv_bfloat16* __restrict__ x,  // [rows, k]
                      uint8_t* __restrict__ codes,          // [rows, k] row-major
                      float* __restrict__ scale,            // [rows]
                      int k) {
    kernel_entry_barrier();
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const uint4* s = reinterpret_cast<const uint4*>(x + row * (size_t)k);
    const int vecs = k / 8;
    float amax = 0.f;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        float f[8];
        unpack_bf16x8(s[i], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(f[j]));
    }
    store_token_codes(amax, scratch, s, vecs, codes + row * (size_t)k, scale + row);
}

// Launch: 1-D grid-stride over 16-code pieces of the row-major output (writes coalesced; each warp reads 64-byte runs
// of the tile layout). k % 64 == 0, pointers 16-byte aligned. Only the first `rows` rows are written (not the padding
// of the last tile).
extern "C" __global__ void untile_fp8_rows(const uint8_t* __restrict__ src,  // tile layout
                                           uint8_t* __restrict__ dst,        // [rows, k] row-major
                                           long long rows, int k) {
    kernel_entry_barrier();
    const long long per_row = k / 16, pieces = rows * per_row;
    for (long long i = (long long)global_thread_index(); i < pieces; i += (long long)grid_thread_count()) {
        const int row = (int)(i / per_row), kk = (int)(i % per_row) * 16;
        reinterpret_cast<uint4*>(dst)[i] = ld_stream_u4(src + fp8_tile_offset(row, kk, k));
    }
}

// SwiGLU straight into the FP8 GEMM's input (fp8 weights' prefill, down_proj: LinearOps.TrySiluMulIntoFp8Input): per
// row, act = bf16(silu(g) * u) as silu_mul_bf16_bf16 writes it, then quantize_fp8_act_rows' scale and codes of those
// bf16 values, bit for bit, without act's round trip through memory (at 4096 rows of QwQ-32B: 226 MB written and read
// again, and one launch; session 24's 16k profile had the two kernels at ~94 ms of 1,310). The row's bf16 values wait in
// shared memory between the amax and the codes; each thread reads back only what it wrote (the same i), so block_max's
// barrier is the only one. Launch: grid rows, block kSiluMulThreads (384), dynamic shared memory 2 * inter bytes; inter % 16 == 0
// (cuBLASLt's FP8 alignment; the kernel itself needs % 8), gate_up and codes 16-byte aligned.
extern "C" __global__ void __launch_bounds__(kSiluMulThreads)
quantize_fp8_silu_mul_rows(const __nv_bfloat16* __restrict__ gate_up,  // [rows, 2 * inter] bf16: gate | up
                           uint8_t* __restrict__ codes,                // [rows, inter] row-major e4m3
                           float* __restrict__ scale,                  // [rows]
                           int inter) {
    kernel_entry_barrier();
    extern __shared__ uint4 act[];  // [inter / 8] the row's bf16 activations
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const int vecs = inter / 8;
    const uint4* g = reinterpret_cast<const uint4*>(gate_up + row * (size_t)(2 * inter));
    const uint4* u = g + vecs;
    float amax = 0.f;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) {
        float gf[8], uf[8], a[8];
        unpack_bf16x8(g[i], gf);
        unpack_bf16x8(u[i], uf);
#pragma unroll
        for (int j = 0; j < 8; ++j) a[j] = silu(gf[j]) * uf[j];
        const uint4 packed = pack_bf16x8(a);
        act[i] = packed;
        unpack_bf16x8(packed, a);  // the bf16-rounded values, as quantize_fp8_act_rows reads them
#pragma unroll
        for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(a[j]));
    }
    store_token_codes(amax, scratch, act, vecs, codes + row * (size_t)inter, scale + row);
}

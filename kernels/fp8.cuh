// FP8 (E4M3, "e4m3fn": bias 7, no infinities, max 448) weight helpers shared by the FP8 kernels.
// Conversions are done with integer ops plus one bf16x2 FMA, so the PTX stays compute_80 (the hardware
// cvt.*.e4m3x2 instructions need sm_89) and is exact on every GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Two packed pairs of e4m3 codes -> two bf16x2 words, exact. a and b each hold one code in the HIGH byte of each
// 16-bit half ([0, c, 0, c'] from the low byte up): each byte s.eeee.mmm is moved to the bf16 bits s.0000eeee.mmm0000,
// the same value times 2^-120 (bias 7 against bf16's 127), and e4m3 zero and subnormals land on bf16 zero and
// subnormals with the same factor. One bf16x2 FMA by 2^120 (with a -0 addend, so -0 stays -0) then gives the value
// itself. The callers below only choose which code goes to which half (one byte_perm each).
__device__ __forceinline__ void fp8_halves_to_bf16x2(uint32_t a, uint32_t b, uint32_t& lo, uint32_t& hi) {
    a = ((a >> 4) & 0x07F007F0u) | (a & 0x80008000u);
    b = ((b >> 4) & 0x07F007F0u) | (b & 0x80008000u);
    const __nv_bfloat162 two120 = __halves2bfloat162(__ushort_as_bfloat16((unsigned short)0x7B80),
                                                     __ushort_as_bfloat16((unsigned short)0x7B80));
    const __nv_bfloat162 neg0 = __halves2bfloat162(__ushort_as_bfloat16((unsigned short)0x8000),
                                                   __ushort_as_bfloat16((unsigned short)0x8000));
    __nv_bfloat162 ra = __hfma2(*reinterpret_cast<__nv_bfloat162*>(&a), two120, neg0);
    __nv_bfloat162 rb = __hfma2(*reinterpret_cast<__nv_bfloat162*>(&b), two120, neg0);
    lo = *reinterpret_cast<uint32_t*>(&ra);
    hi = *reinterpret_cast<uint32_t*>(&rb);
}

// Two e4m3 codes of v -> one bf16x2 word of code * 2^-120 each, exact, in three instructions (prmt, shl, and) where
// fp8_halves_to_bf16x2 takes five a pair: for callers that fold the constant 2^120 into an fp32 scale they apply
// anyway (the fp8-cache decode attention: its K scale per score, its V scale per P). SEL is a prmt selector that puts
// code c in the low byte of a 16-bit half and its sign, replicated by prmt's sign mode (selector nibble 8 + byte;
// CUDA's __byte_perm masks that bit off, hence the asm), in the high byte: [c, sign(c)] per half. Shifted left by 4,
// each half holds s.ssss.s.eeee.mmm.0000 (its low 4 sign bits spill into the next half's low 4 bits, below its mask);
// the mask 0x87F0 keeps the sign (bit 15) and eeee.mmm at bits 10..4: the bf16 bits s.0000eeee.mmm0000, the value
// times 2^-120 (bias 7 against bf16's 127). e4m3 zero and subnormals land on bf16 zero and subnormals with the same
// factor (the products with them are at most 2^-6 of a scale unit: whether the tensor core keeps bf16 subnormals or
// not, they do not move a sum whose largest terms are up to 448 units).
template <uint32_t SEL>
__device__ __forceinline__ uint32_t fp8_pair_to_bf16x2_pow2(uint32_t v) {
    uint32_t p;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p) : "r"(v), "r"(0u), "r"(SEL));
    return (p << 4) & 0x87F087F0u;
}
constexpr int FP8_BF16_POW2_LOG2 = -120;  // fp8_pair_to_bf16x2_pow2 gives code * 2^FP8_BF16_POW2_LOG2

// 4 e4m3 (one 32-bit word, element 0 in the low byte) -> 4 bf16 times 2^-120: lo = elements (0, 1), hi = (2, 3).
__device__ __forceinline__ void fp8x4_to_bf16x4_pow2(uint32_t v, uint32_t& lo, uint32_t& hi) {
    lo = fp8_pair_to_bf16x2_pow2<0x9180u>(v);  // [b0, sign(b0), b1, sign(b1)]
    hi = fp8_pair_to_bf16x2_pow2<0xB3A2u>(v);  // [b2, sign(b2), b3, sign(b3)]
}

// The same with the elements interleaved: lo = elements (0, 2), hi = (1, 3). For a word of two 2-byte units
// [x0, y0 | x1, y1] (an ldmatrix.trans of byte rows: x, y two adjacent columns of rows 0 and 1) this gives
// lo = (x0, x1) and hi = (y0, y1): the column pairs the mma's B fragment wants (attention.cuh, fp8 V fragments).
__device__ __forceinline__ void fp8x4_to_bf16x4_interleaved_pow2(uint32_t v, uint32_t& lo, uint32_t& hi) {
    lo = fp8_pair_to_bf16x2_pow2<0xA280u>(v);  // [b0, sign(b0), b2, sign(b2)]
    hi = fp8_pair_to_bf16x2_pow2<0xB391u>(v);  // [b1, sign(b1), b3, sign(b3)]
}

// 4 e4m3 values (one 32-bit word, element 0 in the low byte) -> 4 bf16, packed: lo = elements (0, 1), hi = (2, 3).
// Exact (fp8_halves_to_bf16x2).
__device__ __forceinline__ void fp8x4_to_bf16x4(uint32_t v, uint32_t& lo, uint32_t& hi) {
    fp8_halves_to_bf16x2(__byte_perm(v, 0, 0x1404),  // [0, b0, 0, b1]: each 16-bit half holds its byte in the high half
                         __byte_perm(v, 0, 0x3424),  // [0, b2, 0, b3]
                         lo, hi);
}

// 4 e4m3 (one 32-bit word, element 0 in the low byte) -> 4 fp32, exact. sm_89+ converts in hardware (cvt e4m3x2 ->
// f16x2: e4m3's range and precision fit f16 exactly, and so does f16 -> f32); older GPUs take the integer route above.
// Same values either way, so results do not depend on which PTX build runs. On the CUDA-core GEMV this replaces about
// a dozen integer ops per 4 weights by 2 + 4 conversions, where the kernel's instruction issue, not DRAM, bounded it.
__device__ __forceinline__ void fp8x4_to_f32x4(uint32_t v, float* f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t h01, h23;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h01) : "h"((unsigned short)(v & 0xFFFFu)));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h23) : "h"((unsigned short)(v >> 16)));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&h01));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&h23));
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
#else
    uint32_t lo, hi;
    fp8x4_to_bf16x4(v, lo, hi);
    f[0] = __uint_as_float(lo << 16); f[1] = __uint_as_float(lo & 0xFFFF0000u);
    f[2] = __uint_as_float(hi << 16); f[3] = __uint_as_float(hi & 0xFFFF0000u);
#endif
}

// 16 e4m3 (one 16-byte load) -> 16 bf16 as two 16-byte words (elements 0-7, 8-15).
__device__ __forceinline__ void fp8x16_to_bf16x16(const uint4& v, uint4& first, uint4& second) {
    fp8x4_to_bf16x4(v.x, first.x, first.y);
    fp8x4_to_bf16x4(v.y, first.z, first.w);
    fp8x4_to_bf16x4(v.z, second.x, second.y);
    fp8x4_to_bf16x4(v.w, second.z, second.w);
}

// 16 e4m3 -> 16 f16 as two 16-byte words (elements 0-7, 8-15), exact: e4m3's range and precision fit f16. On sm_89+
// one hardware cvt per pair (the fp16 tensor-core GEMV, gemv_tc.cu: against the bf16 route's ~2 integer/FMA
// instructions per weight, which kept the ALU pipe half busy at 32 rows); older GPUs take the integer route: each
// byte s.eeee.mmm moved to the f16 bits s.0eeee.mmm0000000, the value times 2^-8 (bias 7 against f16's 15), e4m3 zero
// and subnormals landing on f16 zero and subnormals with the same factor, then one f16x2 FMA by 2^8.
__device__ __forceinline__ uint32_t fp8x2_to_f16x2(uint32_t pair) {  // the pair in the low 16 bits
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)(pair & 0xFFFFu)));
    return h;
#else
    uint32_t a = __byte_perm(pair, 0, 0x1404);  // [0, b0, 0, b1]: each byte in the high half of its 16 bits
    a = ((a >> 1) & 0x3F803F80u) | (a & 0x80008000u);
    const __half2 two8 = __halves2half2(__ushort_as_half((unsigned short)0x5C00), __ushort_as_half((unsigned short)0x5C00));
    const __half2 neg0 = __halves2half2(__ushort_as_half((unsigned short)0x8000), __ushort_as_half((unsigned short)0x8000));
    __half2 r = __hfma2(*reinterpret_cast<__half2*>(&a), two8, neg0);
    return *reinterpret_cast<uint32_t*>(&r);
#endif
}
__device__ __forceinline__ void fp8x16_to_f16x16(const uint4& v, uint4& first, uint4& second) {
    first.x = fp8x2_to_f16x2(v.x); first.y = fp8x2_to_f16x2(v.x >> 16);
    first.z = fp8x2_to_f16x2(v.y); first.w = fp8x2_to_f16x2(v.y >> 16);
    second.x = fp8x2_to_f16x2(v.z); second.y = fp8x2_to_f16x2(v.z >> 16);
    second.z = fp8x2_to_f16x2(v.w); second.w = fp8x2_to_f16x2(v.w >> 16);
}
// 16 e4m3 -> 16 bf16 times 2^-120 in the order fp8x16_to_f16x16 gives (first: elements 0-7, second: 8-15).
__device__ __forceinline__ void fp8x16_to_bf16x16_pow2(const uint4& v, uint4& first, uint4& second) {
    fp8x4_to_bf16x4_pow2(v.x, first.x, first.y);
    fp8x4_to_bf16x4_pow2(v.y, first.z, first.w);
    fp8x4_to_bf16x4_pow2(v.z, second.x, second.y);
    fp8x4_to_bf16x4_pow2(v.w, second.z, second.w);
}

// ---- the fp8 weight layout ------------------------------------------------------------------------------------------
// FP8 weights are stored in the tensor-core GEMV's fragment order, not row-major, so that every warp-wide load of the
// decode kernel (gemv_tc.cu) reads 512 contiguous bytes and a warp's 16-row tile is one contiguous stream:
//   [tile = row / 16][chunk = k / 64][half = (row % 16) / 8][lane = 4 * (row % 8) + (k % 64) / 16][k % 16]
// i.e. for each 16-row tile and 64-k chunk, 1 KB: first the 16-byte pieces of rows 0-7 of the tile (lane (g, t4)
// holds row g, k 16·t4 .. 16·t4 + 15), then those of rows 8-15. k must be a multiple of 64; the rows of the last tile
// past n are padding. Prefill-sized products expand it back to row-major bf16 (dequantize_fp8_rows).
__device__ __forceinline__ size_t fp8_tile_offset(int row, int kk, int k) {
    const int tile = row >> 4, r = row & 15, chunk = kk >> 6, w = kk & 63;
    return (size_t)tile * 16 * (size_t)k + (size_t)chunk * 1024 + (r >> 3) * 512 + ((r & 7) * 4 + (w >> 4)) * 16 + (w & 15);
}

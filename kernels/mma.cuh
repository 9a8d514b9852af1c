// Tensor-core building blocks shared by the attention kernels (sm_80+): async global->shared copies,
// ldmatrix fragment loads and the bf16 m16n8k16 mma with fp32 accumulation.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; when !valid, writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c += a * b, m16n8k16, bf16 inputs, fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One 64-k chunk of the small-batch tensor-core GEMVs (gemv.cu, gemv_fp8.cu), where lane (g, t4) holds 16 contiguous
// k of W rows g and g+8 (wa, wb) and of x row g (xv), as bf16 in two 16-byte words each. A dot product does not
// care about the order of k as long as W and x use the same one: k-step s takes elements 4s..4s+3 of each lane's 16,
// as the A fragment's columns (2t4, 2t4+1) and (2t4+8, 2t4+9) and the B fragment's matching rows.
__device__ __forceinline__ void mma_chunk64(float (&c)[4], const uint4 (&wa)[2], const uint4 (&wb)[2], const uint4 (&xv)[2]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        const uint4& A = wa[s >> 1];
        const uint4& B = wb[s >> 1];
        const uint4& X = xv[s >> 1];
        const uint32_t a[4] = {(s & 1) ? A.z : A.x, (s & 1) ? B.z : B.x, (s & 1) ? A.w : A.y, (s & 1) ? B.w : B.y};
        mma_bf16_16816(c, a, (s & 1) ? X.z : X.x, (s & 1) ? X.w : X.y);
    }
}

// Two floats -> packed bf16x2 (lo at the lower address), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace mma

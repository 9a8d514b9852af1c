// Hopper warpgroup-MMA (wgmma) building blocks shared by the kernels/sm90a/ kernels (the prefill attention and the
// fp8 tensor-core GEMV). Include only from code compiled for the arch-specific target compute_90a: wgmma exists
// nowhere else. The layouts these descriptors describe are written out in kernels/sm90a/attention_prefill_sm90a.cu
// ("Shared-memory layout, swizzle and descriptors").
#pragma once

#include <stdint.h>

// The operands of the wgmma asm statements: an accumulator d[N/8][4] in the fragment order is PTX operands %0 ..
// %(N/2 - 1) of an m64nN wgmma; WG_ACC<N/2>(d) binds them and WG_REGS<N/2> names them in the instruction.
#define WG_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define WG_ACC8(d) WG_ACC4(d, 0), WG_ACC4(d, 1)
#define WG_ACC16(d) WG_ACC8(d), WG_ACC4(d, 2), WG_ACC4(d, 3)
#define WG_ACC32(d) WG_ACC16(d), WG_ACC4(d, 4), WG_ACC4(d, 5), WG_ACC4(d, 6), WG_ACC4(d, 7)
#define WG_ACC64(d) WG_ACC32(d), WG_ACC4(d, 8), WG_ACC4(d, 9), WG_ACC4(d, 10), WG_ACC4(d, 11), WG_ACC4(d, 12), WG_ACC4(d, 13), WG_ACC4(d, 14), WG_ACC4(d, 15)
#define WG_REGS8 "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define WG_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define WG_REGS32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
                  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_REGS64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
                  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
                  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
                  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

namespace wg {

// Shared-memory matrix descriptor, 128-byte swizzle (mode 1 in bits 62-63), base offset 0 (PTX ISA "Matrix
// Descriptor Format": bits 0-13 start address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte offset >> 4).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)((sbo_bytes >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}
// K-major operand, rows of 128 bytes: LBO unused (16 B), SBO = 8 rows * 128 B. A k-step may start 32 bytes into the
// swizzle row (the XOR is applied to the final address).
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t saddr) { return desc_sw128(saddr, 16, 1024); }

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Makes this thread's completed generic-proxy shared writes (cp.async, st.shared) visible to async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The compiler sees a wgmma's accumulators as written when the asm statement issues; the values only exist after
// wgmma.wait_group. These empty volatile asms pin every accumulator (and the A registers an RS wgmma is still reading)
// between the wait and the code that uses them, so nothing is hoisted above the wait or reused before it.
__device__ __forceinline__ void pin(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void pin(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }
template <typename T, int N>
__device__ __forceinline__ void pin(T (&r)[N][4]) {  // float accumulators or uint32_t A fragments
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) pin(r[i][e]);
}

}  // namespace wg

// Shared device helpers for every kernel family (kernels/*.cu).
// Conventions: bf16 storage, fp32 math, 64-bit element indices for anything that can exceed 2^31
// (the embedding table and lm_head hold 778M elements), no fast-math.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#define QWQ_DEVICE __device__ __forceinline__

// ---- programmatic dependent launch (sm_90 and newer) ---------------------------------------------------
// A decode step is ~800 small kernels; between two of them the GPU idles for the next grid's launch and block
// setup. On sm_90+ the engine loads these kernels from their compute_90 build and launches every one with
// programmatic stream serialization (Native/CudaKernel.cs), which lets the next kernel's blocks be scheduled while
// this one is still finishing. So every kernel begins here, before it touches any memory:
// 1. griddepcontrol.wait: wait until the kernel before it in the stream has completed and its writes are visible
//    (also the ones it waited for in turn), so reads and writes below are ordered exactly as without overlap;
// 2. griddepcontrol.launch_dependents: let the next kernel be scheduled now. Only after the wait, so at most one
//    kernel waits ahead and waiting blocks never pile up on the multiprocessors.
// Kernels launched without the attribute (compute_80 build, or PDL turned off) pass through it at no cost.
// A weight (written at load, never by a kernel) may be prefetched before the barrier: a prefetch returns no data, so
// it cannot see anything stale, and it warms L2 while the kernel before finishes (prefetch_l2 below).
QWQ_DEVICE void kernel_entry_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Fetches the 128-byte line holding p into L2 (no data returned; see kernel_entry_barrier for why GEMVs use it).
QWQ_DEVICE void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// ---- bf16 <-> fp32 ------------------------------------------------------------------------------------
// bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits. Doing it by shift/mask on raw
// words keeps packed loads (uint32 = 2 x bf16, uint4 = 8 x bf16) free of per-element conversions.
QWQ_DEVICE float bf16_lo(uint32_t packed) { return __uint_as_float(packed << 16); }
QWQ_DEVICE float bf16_hi(uint32_t packed) { return __uint_as_float(packed & 0xFFFF0000u); }
QWQ_DEVICE float bf16_bits_to_float(uint16_t bits) { return __uint_as_float(((uint32_t)bits) << 16); }

// fp32 -> bf16 with round-to-nearest-even (NaN stays NaN), returned as raw bits.
QWQ_DEVICE uint16_t float_to_bf16_bits(float f) {
    __nv_bfloat16 h = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t*>(&h);
}

// Two floats -> one packed word (lo in the low half, i.e. the lower address).
QWQ_DEVICE uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)float_to_bf16_bits(lo) | ((uint32_t)float_to_bf16_bits(hi) << 16);
}

// Unpack 8 bf16 (one 16-byte load) into fp32.
QWQ_DEVICE void unpack_bf16x8(const uint4& v, float (&f)[8]) {
    f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x);
    f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
    f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z);
    f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
}

QWQ_DEVICE uint4 pack_bf16x8(const float (&f)[8]) {
    uint4 v;
    v.x = pack_bf16x2(f[0], f[1]);
    v.y = pack_bf16x2(f[2], f[3]);
    v.z = pack_bf16x2(f[4], f[5]);
    v.w = pack_bf16x2(f[6], f[7]);
    return v;
}

// ---- memory access ------------------------------------------------------------------------------------
// Streaming 16-byte load for data read exactly once per kernel (GEMV weights): read-only path, and do not
// allocate in L1 so that the small vectors that ARE reused (x in GEMV) keep their L1 lines.
// PTX ISA 7.4+, sm_70+.
QWQ_DEVICE uint4 ld_stream_u4(const void* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Read-only cached 16-byte load (x vectors, small tables).
QWQ_DEVICE uint4 ld_ro_u4(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

QWQ_DEVICE bool is_aligned(const void* p, unsigned bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (uintptr_t)(bytes - 1)) == 0;
}

// ---- reductions ---------------------------------------------------------------------------------------
QWQ_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` needs 32 floats of shared memory.
// blockDim.x must be a multiple of 32. Contains __syncthreads: call from all threads.
QWQ_DEVICE float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = (lane < warps) ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();  // scratch may be reused by the caller right after
    return total;
}

// Split-k across blocks, one warp per tile: after a warp has written its partial sums it takes the tile's ticket.
// True for the warp that arrives last, which then adds every split's partial in split order and resets the ticket.
// The fences order this warp's partial writes before its ticket, and the other splits' writes before the last
// warp's reads.
QWQ_DEVICE bool warp_takes_last_ticket(int* ticket, int splits) {
    __threadfence();
    __syncwarp();
    int last = 0;
    if ((threadIdx.x & 31) == 0) last = atomicAdd(ticket, 1) == splits - 1;
    last = __shfl_sync(0xFFFFFFFFu, last, 0);
    if (last) __threadfence();
    return last;
}

// ---- activations ----------------------------------------------------------------------------------------
// SwiGLU's silu with an accurate expf (no fast-math): silu(g) = g / (1 + e^-g); for g -> -inf, e^-g -> inf and the
// result -> -0. Here because SiLU·mul (activation.cu) and its fusion into the FP8 GEMM's input (quantize.cu) must agree
// bit for bit.
QWQ_DEVICE float silu(float g) { return g / (1.0f + expf(-g)); }

// ---- grid-stride helpers ------------------------------------------------------------------------------
QWQ_DEVICE uint64_t global_thread_index() {
    return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
}
QWQ_DEVICE uint64_t grid_thread_count() { return (uint64_t)gridDim.x * blockDim.x; }

// The roofline the micro-benchmarks compare against: a plain 16-byte streaming read of n uint4s (include after a
// kernels/ source, which brings ld_stream_u4 from kernels/common.cuh). The xor keeps the loads from being removed.
#pragma once

__global__ void read_k(const uint4* p, long long n, uint32_t* out) {
    uint32_t a = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint4 v = ld_stream_u4(p + i);
        a ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (a == 0x12345678) out[0] = a;
}

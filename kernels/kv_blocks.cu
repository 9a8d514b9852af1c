// Copy-on-write of paged KV blocks (docs/ENGINE_V2.md): many (source, destination) block pairs of one pool, every layer
// and every plane of it, in one launch. The pool (src/QwQ.Cuda/Engine/KvPool.cs) is `layers` layers layer_bytes apart;
// within a layer, plane p starts at plane_offset[p] and its blocks are plane_block_bytes[p] apart (bf16: K, V; fp8:
// K codes, V codes, K scales, V scales). Why a kernel: a block is one region per (layer, plane), 128 regions of QwQ-32B's
// bf16 pool, and a switch or a fork that copies 512 blocks of a 32k sequence was 65,536 cuMemcpyDtoDAsync calls, 262 ms
// of launch overhead on an H200 for 1 GB of copies (~0.5 ms at the copy bandwidth).
#include "common.cuh"

constexpr int KV_MAX_PLANES = 4;
// 16-byte chunks a thread loads before it stores any: a plain load -> store loop keeps one load in flight per thread
// (the compiler cannot move a load past a store that may alias it), latency-bound like the first re-rotation kernel.
constexpr int KV_COPY_AHEAD = 8;

struct KvPlanes {
    long long offset[KV_MAX_PLANES];       // where each plane starts within a layer
    long long block_bytes[KV_MAX_PLANES];  // bytes of one block in each plane; multiples of 16
};

// Launch: grid = (pairs, layers), block = 256 threads; pairs [n, 2] int32 (source, destination) on the device.
extern "C" __global__ void __launch_bounds__(256)
kv_copy_blocks(unsigned char* __restrict__ pool, long long layer_bytes, KvPlanes planes, int plane_count,
               const int* __restrict__ pairs) {
    kernel_entry_barrier();
    const long long src = __ldg(pairs + 2 * blockIdx.x), dst = __ldg(pairs + 2 * blockIdx.x + 1);
    unsigned char* layer = pool + (size_t)blockIdx.y * layer_bytes;
    for (int p = 0; p < plane_count; ++p) {
        const long long bytes = planes.block_bytes[p];
        const uint4* from = reinterpret_cast<const uint4*>(layer + planes.offset[p] + src * bytes);
        uint4* to = reinterpret_cast<uint4*>(layer + planes.offset[p] + dst * bytes);
        const long long n = bytes / 16, step = blockDim.x;
        long long i = threadIdx.x;
        for (; i + (KV_COPY_AHEAD - 1) * step < n; i += KV_COPY_AHEAD * step) {
            uint4 r[KV_COPY_AHEAD];
#pragma unroll
            for (int j = 0; j < KV_COPY_AHEAD; ++j) r[j] = from[i + j * step];
#pragma unroll
            for (int j = 0; j < KV_COPY_AHEAD; ++j) to[i + j * step] = r[j];
        }
        for (; i < n; i += step) to[i] = from[i];
    }
}

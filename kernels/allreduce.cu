// One-shot all-reduce for tensor parallel over the GPUs of one process (docs/TENSOR_PARALLEL.md):
//   residual[i] += partial_0[i] + partial_1[i] + ... + partial_{N-1}[i]      on every rank
// Each rank reads every peer's fp32 partial sum straight from the peer's memory over NVLink (peer access is enabled
// between the ranks' contexts), so one kernel and one barrier replace NCCL's ring, whose latency for a 5120-wide row
// (15-24 us in a CUDA graph on H100) would cost 2-3 ms per token at 128 calls. The sum runs in rank order on every rank,
// so the residual streams of all ranks stay bit-identical.
//
// Ordering, per block b (blocks work on disjoint slices, so each has its own barrier and nothing crosses blocks):
// 1. the block advances its epoch, a counter in its rank's own memory (the kernel advances it itself, so a captured
//    graph replays correctly; every rank makes the same calls in the same order, so the epochs agree);
// 2. thread p < N stores the epoch into flags[b][rank] of peer p (release, system scope: the partial, written by
//    earlier kernels of this rank's stream, is visible before the flag);
// 3. thread p waits until its own flags[b][p] has reached the epoch (acquire), so peer p's partial is complete.
// Partials alternate between two buffers per rank (attention, then MLP). Rank r writes a buffer again only after
// passing the barrier of the call in between, which each peer reaches only after its previous call, the one that
// read that buffer, has finished. A wait longer than kTimeoutNs (a peer that never arrives) traps instead of hanging.
#include "common.cuh"

constexpr int kMaxRanks = 8;
constexpr int kMaxBlocks = 64;                                   // flags: [kMaxBlocks][kMaxRanks] per rank
constexpr unsigned long long kTimeoutNs = 30ull * 1000000000ull; // 30 s

struct PeerPointers {
    const float* partial[kMaxRanks];  // rank p's partial sum [n] (in rank p's memory)
    unsigned int* flags[kMaxRanks];   // rank p's flags [kMaxBlocks][kMaxRanks] (in rank p's memory)
};

QWQ_DEVICE void store_release_sys(unsigned int* p, unsigned int v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

QWQ_DEVICE unsigned int load_acquire_sys(const unsigned int* p) {
    unsigned int v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

QWQ_DEVICE unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// A peer's data: 16 bytes read past L1 (it changes between calls; the acquire above orders it after the flag).
QWQ_DEVICE float4 ld_peer_f4(const float* p) {
    float4 v;
    asm volatile("ld.volatile.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
    return v;
}

// Launch: grid = min(ceil(n4 / 256), kMaxBlocks), block = 256. n4 = elements / 4 (rows * hidden, hidden % 4 == 0);
// every pointer 16-byte aligned. counters: [kMaxBlocks] uint32 of this rank, zero at first use, touched only here.
extern "C" __global__ void __launch_bounds__(256)
allreduce_add_f32(PeerPointers peers, int rank, int ranks,
                  unsigned int* __restrict__ counters,  // [kMaxBlocks]   this rank's epochs
                  float* __restrict__ residual,         // [n]            this rank's residual stream, in/out
                  long long n4) {
    kernel_entry_barrier();
    __shared__ unsigned int epoch;
    const int b = blockIdx.x;
    if (b >= kMaxBlocks) return;  // the launcher never asks for more; flags exist for kMaxBlocks
    if (threadIdx.x == 0) {
        epoch = counters[b] + 1;
        counters[b] = epoch;
    }
    __syncthreads();
    if (threadIdx.x < ranks) {
        const int p = threadIdx.x;
        store_release_sys(peers.flags[p] + b * kMaxRanks + rank, epoch);
        const unsigned int* mine = peers.flags[rank] + b * kMaxRanks + p;
        const unsigned long long start = global_ns();
        // Epochs only grow; a peer may already be one call ahead (it passed this barrier and signalled the next).
        while ((int)(load_acquire_sys(mine) - epoch) < 0) {
            if (global_ns() - start > kTimeoutNs) __trap();
        }
    }
    __syncthreads();

    float4* res = reinterpret_cast<float4*>(residual);
    for (long long i = (long long)b * blockDim.x + threadIdx.x; i < n4; i += (long long)gridDim.x * blockDim.x) {
        float4 sum = ld_peer_f4(peers.partial[0] + 4 * i);
#pragma unroll
        for (int p = 1; p < kMaxRanks; ++p) {
            if (p < ranks) {
                const float4 v = ld_peer_f4(peers.partial[p] + 4 * i);
                sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
            }
        }
        float4 r = res[i];
        r.x += sum.x; r.y += sum.y; r.z += sum.z; r.w += sum.w;
        res[i] = r;
    }
}

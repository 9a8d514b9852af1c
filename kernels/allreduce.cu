// One-shot all-reduce for tensor parallel over the GPUs of one process (docs/TENSOR_PARALLEL.md):
//   residual[i] += partial_0[i] + partial_1[i] + ... + partial_{N-1}[i]      on every rank
// Each rank reads every peer's fp32 partial sum straight from the peer's memory over NVLink (peer access is enabled
// between the ranks' contexts), so one kernel and one barrier replace NCCL's ring, whose latency for a 5120-wide row
// (15-24 us in a CUDA graph on H100) would cost 2-3 ms per token at 128 calls. The sum runs in rank order on every rank,
// so the residual streams of all ranks stay bit-identical. allreduce_add_rmsnorm_f32 does the same sum one row per block
// and then writes the row's RMSNorm for the next product, so the norm kernel that would follow costs no launch of its own.
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
constexpr int kMaxBlocks = 128;                                  // flags: [kMaxBlocks][kMaxRanks] per rank; one per row of a 128-row step
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

// Steps 1-3 above for block blockIdx.x (< kMaxBlocks): on return every peer has signalled this call, so its partial is
// complete and visible. Call from every thread of the block.
QWQ_DEVICE void peer_barrier(const PeerPointers& peers, int rank, int ranks, unsigned int* counters) {
    __shared__ unsigned int epoch;
    const int b = blockIdx.x;
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
}

// Launch: grid = min(ceil(n4 / 256), kMaxBlocks), block = 256. n4 = elements / 4 (rows * hidden, hidden % 4 == 0);
// every pointer 16-byte aligned. counters: [kMaxBlocks] uint32 of this rank, zero at first use, touched only by this
// file's kernels.
extern "C" __global__ void __launch_bounds__(256)
allreduce_add_f32(PeerPointers peers, int rank, int ranks,
                  unsigned int* __restrict__ counters,  // [kMaxBlocks]   this rank's epochs
                  float* __restrict__ residual,         // [n]            this rank's residual stream, in/out
                  long long n4) {
    kernel_entry_barrier();
    const int b = blockIdx.x;
    if (b >= kMaxBlocks) return;  // the launcher never asks for more; flags exist for kMaxBlocks
    peer_barrier(peers, rank, ranks, counters);

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

constexpr int kNormThreads = 640;  // most threads per block: a 5120-wide row is 640 × kNormItems float4 (one round)
constexpr int kNormItems = 2;      // float4 of a row each thread loads per round, all ranks' at once

// The sum of allreduce_add_f32, then rmsnorm.cu's norm of each summed row:
//   residual[row] += partial_0[row] + ... + partial_{N-1}[row];   out[row] = bf16(residual[row] * inv_rms * weight)
// Block b does rows b, b + gridDim.x, ... In a round each thread owns kNormItems float4 of the row at stride
// blockDim.x and issues every load of them (each rank's partial, the residual, the weight) before it uses any: a peer
// read is an NVLink round trip (~1 us), so a row that fits one round (hidden <= 8 * blockDim.x) costs one round trip,
// and its values stay in registers for the norm. The adds are allreduce_add_f32's, in the same order (the residual
// streams of the ranks stay identical, and equal the unfused path's); the block size is the norm kernel's for the
// same hidden (NormOps.RowThreads), so each thread owns the float4s it would own there, in the same order, and the
// sum of squares, hence out, has the same bits as allreduce_add_f32 followed by residual_add_rmsnorm_f32_bf16.
//
// Launch: grid = min(rows, kMaxBlocks), block = 32 * ceil(hidden / 8 / 32) threads, at most kNormThreads (every block
// runs the barrier; with grid <= rows each has a row). hidden % 4 == 0; residual and every partial 16-byte aligned,
// weight and out 8-byte aligned. counters: as allreduce_add_f32's (the two kernels share the flags and epochs: every
// rank makes the same calls with the same grids, so each block's epoch counts the same calls on every rank).
extern "C" __global__ void __launch_bounds__(kNormThreads)
allreduce_add_rmsnorm_f32(PeerPointers peers, int rank, int ranks,
                          unsigned int* __restrict__ counters,        // [kMaxBlocks]     this rank's epochs
                          float* __restrict__ residual,               // [rows, hidden]   this rank's residual stream, in/out
                          const __nv_bfloat16* __restrict__ weight,   // [hidden]         the norm's weight
                          __nv_bfloat16* __restrict__ out,            // [rows, hidden]   normed rows, input of the next product
                          int rows, int hidden, float eps) {
    kernel_entry_barrier();
    __shared__ float scratch[32];
    if (blockIdx.x >= kMaxBlocks) return;  // the launcher never asks for more; flags exist for kMaxBlocks
    peer_barrier(peers, rank, ranks, counters);

    const int n4 = hidden >> 2;
    const int round = kNormItems * blockDim.x;  // float4 of a row per round
    const bool kept = n4 <= round;              // one round: x and w below hold all of this thread's share of the row
    const uint2* w4 = reinterpret_cast<const uint2*>(weight);  // 4 bf16 per uint2, one per float4 of the row
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long base = (long long)row * n4;  // the row's first float4
        float4* res = reinterpret_cast<float4*>(residual) + base;
        uint2* o = reinterpret_cast<uint2*>(out) + base;
        float4 x[kNormItems];  // the summed residual of this thread's float4s (of the last round)
        uint2 w[kNormItems];   // their norm weights
        float sumsq = 0.0f;
        for (int c0 = threadIdx.x; c0 < n4; c0 += round) {
            float4 part[kMaxRanks][kNormItems];  // [rank][item]  all in flight before the first add
#pragma unroll
            for (int k = 0; k < kNormItems; ++k) {
                const int c = c0 + k * blockDim.x;
                if (c < n4) {
#pragma unroll
                    for (int p = 0; p < kMaxRanks; ++p)
                        if (p < ranks) part[p][k] = ld_peer_f4(peers.partial[p] + 4 * (base + c));
                    x[k] = res[c];
                    w[k] = __ldg(w4 + c);
                }
            }
#pragma unroll
            for (int k = 0; k < kNormItems; ++k) {
                const int c = c0 + k * blockDim.x;
                if (c < n4) {
                    float4 sum = part[0][k];
#pragma unroll
                    for (int p = 1; p < kMaxRanks; ++p) {
                        if (p < ranks) {
                            const float4 v = part[p][k];
                            sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
                        }
                    }
                    float4 r = x[k];
                    r.x += sum.x; r.y += sum.y; r.z += sum.z; r.w += sum.w;
                    res[c] = r;
                    x[k] = r;
                    sumsq += r.x * r.x + r.y * r.y + r.z * r.z + r.w * r.w;  // rmsnorm.cu's expression
                }
            }
        }
        const float total = block_sum(sumsq, scratch);
        const float inv_rms = rsqrtf(total / (float)hidden + eps);

        for (int c0 = threadIdx.x; c0 < n4; c0 += round) {
#pragma unroll
            for (int k = 0; k < kNormItems; ++k) {
                const int c = c0 + k * blockDim.x;
                if (c < n4) {
                    float4 v = x[k];
                    uint2 wk = w[k];
                    if (!kept) {  // more than one round: re-read what this thread wrote (L1/L2 hits), as rmsnorm.cu does
                        v = res[c];
                        wk = __ldg(w4 + c);
                    }
                    uint2 packed;
                    packed.x = pack_bf16x2(v.x * inv_rms * bf16_lo(wk.x), v.y * inv_rms * bf16_hi(wk.x));
                    packed.y = pack_bf16x2(v.z * inv_rms * bf16_lo(wk.y), v.w * inv_rms * bf16_hi(wk.y));
                    o[c] = packed;
                }
            }
        }
    }
}

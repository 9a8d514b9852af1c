// Causal GQA prefill attention for Hopper (sm_90a only): wgmma (warpgroup MMA) from 128B-swizzled shared memory. The
// same contract, arguments and results as the portable mma.sync kernel attention_prefill_paged_bf16_d128
// (kernels/attention_prefill.cu), for the bf16 KV cache at head_dim 128 (QwQ's shape); every other shape and the fp8
// cache keep the portable kernel. Chosen at run time by AttentionOps when the device is compute capability 9.0 exactly
// and this module is embedded (docs/ENGINE_V2.md, "Prefill attention on Hopper").
//
// Why a separate folder: wgmma exists only on the arch-specific target sm_90a, whose code runs on compute capability
// 9.0 and nothing else (not 10.x, not 12.x). build.sh compiles kernels/*.cu for compute_80 and compute_90 (neither
// has wgmma) and kernels/sm90a/*.cu for compute_90a into kernels/ptx/sm90a/, which PtxLibrary loads only on 9.0.
//
// Three entries, at the end of this file, each a configuration of one template (prefill below); AttentionOps launches
// the first its PTX has of: the ping-pong entry (since session 19: a producer warpgroup issues the K/V tiles by TMA,
// two consumer warpgroups take turns on the tensor cores over 128-key tiles; H200 micro 573 TFLOP/s at 16k, 661-693
// since session 22's unmasked tiles left of the diagonal, level with torch's cuDNN attention), the TMA
// entry (session 16: two warpgroups in step, 64-key tiles, one __syncthreads a tile; 443-458), the cp.async entry
// (session 9: one warpgroup, 2-stage cp.async ring; 401-419). The first version, measured on an H100 with
// bench/micro/attention_prefill_sm90.cu (which includes this file and instantiates the template's other
// configurations), matched the mma.sync kernel bit for bit and ran 305 TFLOP/s at 2k and 360 at 16k against its 220 and
// 268. The 64-key entries still give the portable kernel's output bit for bit; the ping-pong's 128-key tiles round P
// over 128 keys (within ~1e-3 of it).
//
// Layouts (as the portable kernel), per sequence:
//   q    bf16 [T, nq, 128]             tokens at absolute positions start_pos .. start_pos+T-1 (RoPE applied)
//   K, V bf16 [blocks, nkv, 64, 128]   one layer of the paged pool, through the sequence's block table (attn::KvLayout);
//                                      positions 0 .. start_pos+T-1 already written
//   out  bf16 [T, nq, 128]
// Query row i (absolute position start_pos+i) attends to keys 0 .. start_pos+i.
//
// If it fails on the GPU, look first at:
//   - "illegal instruction" at launch: a wgmma needs the compute_90a / sm_90a target (not 90); otherwise a malformed
//     descriptor.
//   - "misaligned/illegal address": the 1024-byte alignment of sm90_smem, or smem_bytes() vs what is used.
//   - wrong numbers, no error: S wrong -> K-major descriptor (SBO/LBO, the +32 B k-step, swizzle mode bits 62-63);
//     only P V wrong -> the MN-major descriptor: LBO and SBO swapped is the classic mistake (here LBO = 8192 = the
//     other 64-dim half, SBO = 1024 = next 8 keys); rows shuffled within 8 -> the swizzle XOR; error only with
//     start > 0 or T not a multiple of 64 -> masking / tile counts.
//   - ptxas "wgmma ... serialized" warning (-Xptxas -v): correctness is fine, but the async overlap is lost. C7520:
//     a branch around a wgmma that ptxas cannot prove warpgroup-uniform. C7514 / C7515: an ordinary instruction reads
//     or writes an accumulator of a wgmma that may be in flight; ptxas does not correlate branches, so "if (a) issue;
//     ... if (a) wait;" counts as in flight after the join (the OVERLAP loop below is written without such pairs).
// bench/micro/attention_prefill_sm90_layout.py replays the index maps below on the CPU.
//
// ---- The kernel (namespace attn_prefill_sm90a) -------------------------------------------------------------------------
// One thread block per (query head, tile of 64*WGS query rows); WGS consumer warpgroups of 128 threads, each owning 64
// query rows, as FlashAttention-3's consumers do. Per 64-key tile (= one KV block, so its rows are contiguous in the
// pool):
//   S  = Q K^T   wgmma.m64n64k16 x 8 (D = 128 = 8 k-steps), A = Q and B = K both from shared memory (SS), fp32 acc
//   online softmax in registers (the same code as the mma.sync kernel: the wgmma accumulator layout of each warp is the
//                m16n8 layout, see "fragments" below), P rounded to bf16 in registers
//   O += P V     wgmma.m64n128k16 x 4 (64 keys = 4 k-steps), A = P from registers (RS), B = V from shared memory,
//                transposed (V is stored [key][dim]: N = dim is the contiguous axis, "MN-major")
// K/V tiles arrive through a STAGES-deep ring filled with cp.async by all threads (TMA and PP below differ); a tile's
// copies are waited for, fenced into the async proxy (wgmma reads shared memory through it, cp.async writes through the
// generic proxy: fence.proxy.async is required between them), then published with __syncthreads.
// OVERLAP (FA3's intra-warpgroup pipelining): iteration j issues S_j = Q K_j and then O += P_{j-1} V_{j-1}, waits for
// S_j only, does the softmax of tile j while the P V product runs on the tensor cores, then waits for it, rescales O and
// packs P_j. Needs the V tile of j-1 to stay resident one iteration longer, hence STAGES >= 3.
//
// ---- Shared-memory layout, swizzle and descriptors ---------------------------------------------------------------------
// Every operand (Q, K, V) is a [rows][128] bf16 matrix stored as two 64-column halves, each [rows][128 bytes] with the
// 128-byte swizzle (Swizzle<3,4,3>: byte-address bits [4,7) ^= bits [7,10)), i.e. the 16-byte chunk c (dims 8c..8c+7
// within the half) of row r sits at chunk position c ^ (r & 7):
//     offset(r, dim) = (dim / 64) * rows * 128 + r * 128 + (((dim % 64) / 8) ^ (r % 8)) * 16 + (dim % 8) * 2
// The hardware applies the XOR to absolute shared addresses, so each operand base is 1024-byte aligned (the dynamic
// shared buffer is rounded up to 1024 B) and every descriptor start below keeps bits [7,10) of the pattern origin at 0,
// so the descriptor's base-offset field stays 0. Why 128B swizzle: a 64-dim half row is exactly 128 bytes, the widest
// swizzle, so the 8 rows of a core-matrix group hit 8 different 16-byte bank groups (no conflicts for wgmma or for the
// cp.async writes), and the same physical layout serves K-major (Q, K) and MN-major (V) reads.
// Descriptor (PTX ISA "Matrix Descriptor Format"): bits 0-13 start address >> 4, 16-29 leading byte offset >> 4,
// 32-45 stride byte offset >> 4, 49-51 base offset (0), 62-63 swizzle mode (1 = 128B).
//   K-major (Q as A, K as B, imm-trans 0): canonical Sw128 o ((8,m),(8,2)):((128 B, SBO),(16 B...)) -- 8 rows of 128 B,
//     then the next 8-row group at SBO = 1024 B; LBO is unused for swizzled K-major (set to 16 B, encoded 1). A k-step
//     (16 dims = 32 bytes) ks starts at base + (ks / 4) * rows * 128 + (ks % 4) * 32: +32 B per step inside a 128-byte
//     row (the XOR is computed on the final address, so advancing the start inside the swizzle row is legal and is what
//     CUTLASS/ThunderKittens do), +rows*128 B to the second 64-dim half.
//   MN-major (V as B, imm-trans-b 1): canonical Sw128 o ((64 dims, n),(8 keys, k)):((1, LBO),(128 B, SBO)) -- 64 dims
//     (one 128-byte swizzle row) contiguous, the next 64 dims at LBO = 64 keys * 128 B = 8192 B (the other half), 8 keys
//     of 128 B each, the next 8 keys at SBO = 1024 B. A k-step (16 keys) kk starts at base + kk * 16 * 128 = +2048 B.
//
// ---- Register fragments (PTX ISA "Register Fragments", m64nNk16) --------------------------------------------------------
// Accumulator D of an m64nN wgmma: warp w of the warpgroup holds rows 16w..16w+15; lane (g = lane/4, t4 = lane%4) holds
// d[4i+0], d[4i+1] = (row 16w+g,   cols 8i+2t4, +1) and d[4i+2], d[4i+3] = (row 16w+g+8, same cols), i < N/8: per warp
// exactly the mma.m16n8 C layout of N/8 adjacent n-tiles, so s[8][4] / o[16][4] below are indexed like the mma.sync
// kernel's s[NT][4] / o[DT][4] and attn::online_softmax is reused as is.
// A from registers (bf16): 4 x b32 per thread = the mma.m16n8k16 A layout per warp: a0 (row g, k 2t4..+1),
// a1 (row g+8, k 2t4..), a2 (row g, k 2t4+8..), a3 (row g+8, k 2t4+8..). So P for keys 16kk..16kk+15 is the S
// accumulator of n-tiles 2kk, 2kk+1 packed pairwise -- the same identity the mma.sync kernel uses.

// wgmma is only in the arch-specific target: stop here, with the reason, rather than in ptxas ("not supported on
// .target sm_90"). nvcc defines __CUDA_ARCH_FEAT_SM90_ALL when it compiles device code for compute_90a / sm_90a.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "kernels/sm90a needs the arch-specific target: nvcc -arch=compute_90a (wgmma); build.sh does this"
#endif

#include "../attention.cuh"  // relative to this file: build.sh passes -I kernels, the micro-benchmark does not
#include "../wgmma.cuh"     // descriptors, fences, waits, pin

namespace attn_prefill_sm90a {
using namespace wg;

constexpr int D = 128;                 // head_dim (QwQ); the layout math below assumes two 64-dim halves
constexpr int BN = 64;                 // keys of one KV block: a TMA box's rows, and the key tile but for KT = 128
constexpr int ROW_BYTES = 128;         // one swizzle row: 64 bf16
constexpr int HALF_BYTES = 64 * ROW_BYTES;  // one 64-dim half of a 64-row operand: 8192
constexpr int OP_BYTES = 2 * HALF_BYTES;    // a 64-row x 128-dim operand (a K or V tile, a warpgroup's Q): 16384
static_assert(BN == attn::KvLayout::BLOCK, "a box must be one KV block");

// Byte offset of 16-byte chunk c (dims 8c..8c+7, c < 16) of row r (< ROWS) inside a ROWS-row operand (layout above:
// the second 64-dim half starts ROWS * 128 bytes in). ROWS = 64 but for the 128-key tiles of the KT = 128 build.
template <int ROWS = 64>
__device__ __forceinline__ uint32_t sw128_offset(int r, int c) {
    return (uint32_t)((c >> 3) * ROWS * ROW_BYTES + r * ROW_BYTES + (((c & 7) ^ (r & 7)) << 4));
}

// MN-major operand (V of KEYS keys): LBO = distance between the two 64-dim halves (KEYS * 128 B), SBO = 8 keys * 128 B.
template <int KEYS = 64>
__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t saddr) { return desc_sw128(saddr, KEYS * ROW_BYTES, 1024); }

// ---- TMA (the TMA and ping-pong entries; the cp.async entry copies with cp.async) --------------------------------------
// A tensor map (the driver's CUtensorMap: 128 bytes, 64-byte aligned), opaque here; the host builds it with
// cuTensorMapEncodeTiled over a K or V pool seen as rows of 128 bf16 ([blocks * nkv * 64, 128], 256-byte pitch), box
// 64 x 64 (one 64-dim half of a 64-key tile), 128-byte swizzle: the box lands exactly as sw128_offset lays out a half
// (Swizzle<3,4,3> on the absolute address, the destination 1024-byte aligned). Passed to the kernel by value as a
// const __grid_constant__ parameter, whose address the copy instruction takes.
struct alignas(64) TmaMap {
    unsigned long long opaque[16];
};
// mbarrier in shared memory: init with an arrival count, arrive announcing the bytes a TMA copy will deliver, and wait
// for the phase of the given parity to complete.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// Named barriers (ids 1-4 here; 0 is __syncthreads): sync waits until `threads` threads have reached the barrier by
// sync or arrive; arrive counts itself and goes on.
__device__ __forceinline__ void bar_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// setmaxnreg (sm_90a): a warpgroup gives registers back to, or takes them from, the block's pool; every warp of the
// warpgroup executes it. N: the new count a thread, a multiple of 8 from 24 to 256.
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
// One box (64 rows x 64 dims) at (dim c0, row c1) of the map into shared memory at dst; completes bytes on bar.
__device__ __forceinline__ void tma_load_box(uint32_t dst, const TmaMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// d (64 x 64, fp32) (+)= A (64 x 16, smem, K-major) * B (16 x 64, smem, K-major i.e. B^T = [64 keys][16 dims]).
// scale_d = 0: d = A*B (the first k-step overwrites the accumulator).
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        WG_REGS32 ", "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : WG_ACC32(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d (64 x 64, fp32) (+)= A (64 x 16, bf16 registers) * B (16 x 64, smem, K-major: imm-trans-b = 0). S = Q K^T with Q
// held in registers (QREG): the tensor cores then read only K from shared memory, half the bytes of the SS form.
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        WG_REGS32 ", "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : WG_ACC32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// S over a 128-key tile (KT = 128): d (64 x 128, fp32) (+)= A (64 x 16: Q from smem, K-major) * B (16 x 128: K, smem,
// K-major i.e. [128 keys][16 dims]).
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        WG_REGS64 ", "
        "%64, %65, p, 1, 1, 0, 0;\n}\n"
        : WG_ACC64(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}
// The same with Q from registers (QREG).
__device__ __forceinline__ void wgmma_m64n128k16_rs_kmajor(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                           int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        WG_REGS64 ", "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// d (64 x 128, fp32) (+)= A (64 x 16, bf16 registers) * B (16 x 128, smem, MN-major: imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b,
                                                    int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        WG_REGS64 ", "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// Shared memory the kernel needs (dynamic): Q for every warpgroup, the K/V ring, and 1 KB to align the base to 1024.
// kt: keys per tile (64, or 128 for the KT = 128 build).
__host__ __device__ constexpr int smem_bytes(int wgs, int stages, int kt = 64) {
    return wgs * OP_BYTES + stages * 2 * 2 * kt * ROW_BYTES + 1024;
}

// One (query head, m-tile) block. Arguments as attn_prefill::prefill (paged): q/out [T, nq, D] of this sequence,
// the layer's K/V pool [blocks, nkv, 64, D], the sequence's block table, T rows at positions start_pos.. .
// QREG: Q's fragments are read from shared memory into registers once (32 per thread) and S = Q K^T runs in the RS
// form. Why: an SS m64n64k16 reads 4 KB of shared memory per 32 tensor-core cycles, the SM's whole 128 B/cycle; with
// Q in registers S reads 2 KB, leaving room for P V's reads of V and the ring's cp.async writes.
// TMA: K and V tiles arrive by TMA (thread 0 issues four boxes a tile on the stage's mbarrier) instead of cp.async by
// every thread (16 copies and their address math a thread a tile, in a kernel ncu found issue-bound); tm_k / tm_v are
// then the pools' tensor maps. Keys at or past kv_end in the last tile arrive as stored (TMA cannot zero-fill part of a
// box): S masks them by a select, and their V rows are zeroed in shared memory before P V reads them (0 x NaN).
// PP (ping-pong, FlashAttention-3's schedule; needs TMA, OVERLAP and two warpgroups): a producer warp (threads 256 ..
// 287) issues every tile's boxes as soon as its stage is free, and the two consumer warpgroups take turns on the tensor
// cores. Why: with one __syncthreads a tile both warpgroups issue their products together and then both run softmax
// together, so the tensor cores idle through the softmax that P V does not cover; ncu found the kernel issue-bound
// (ALU 45%, issue slots 63%). Here warpgroup 0 issues S_j and P_{j-1} V_{j-1}, then lets warpgroup 1 issue its own
// (named barrier 2) and does its softmax while they run; warpgroup 1 hands the turn back (named barrier 1) after its
// issue. No block-wide barrier remains in the loop: a stage is given back by one arrival a consumer warp on its "empty"
// mbarrier after that warp's P V of the tile completed, and the producer waits on it before refilling the stage.
// KT (ping-pong only): keys per tile, 64 (one KV block) or 128 (two: a tile's boxes come from two blocks of the table),
// FlashAttention-3's tile for head_dim 128: twice the work per turn, barrier and mbarrier wait, and per softmax's row
// reductions, at 32 more accumulator registers (S: 64 instead of 32) and 16 more (P: 32) a thread.
// WSREG (ping-pong only): the producer is a whole warpgroup (threads 256 .. 383) that gives its registers to the
// consumers (setmaxnreg: 24 a thread for it, 240 for them, within the 168 a thread of a 384-thread block), as FA3 does:
// for the 128-key tiles and Q in registers, which at 224 a thread serialize their wgmma (C7512) or spill.
template <int WGS, int STAGES, bool OVERLAP, bool QREG = false, bool TMA = false, bool PP = false, int KT = 64,
          bool WSREG = false>
__device__ __forceinline__ void prefill(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
                                        const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out,
                                        int T, int start_pos, int nq, int nkv, float scale,
                                        const int* __restrict__ block_table, const TmaMap* tm_k = nullptr,
                                        const TmaMap* tm_v = nullptr) {
    static_assert(!PP || (TMA && OVERLAP && WGS == 2), "ping-pong: two consumer warpgroups, K/V by TMA, overlap");
    static_assert(KT == 64 || (PP && KT == 128), "128-key tiles in the ping-pong build only");
    static_assert(!WSREG || PP, "a producer warpgroup in the ping-pong build only");
    constexpr int THREADS = 128 * WGS;  // the consumer threads (PP: one producer warp follows them)
    constexpr int T_HALF = KT * ROW_BYTES;  // one 64-dim half of a K or V tile
    constexpr int T_OP = 2 * T_HALF;        // a K or V tile [KT keys x 128 dims]
    constexpr int T_STAGE = 2 * T_OP;       // K and V of one tile
    constexpr int NT = KT / 8;              // S's n-tiles of 8 keys
    constexpr int KK = KT / 16;             // P V's k-steps of 16 keys
    constexpr int BM = 64 * WGS;
    // Tiles that must stay resident behind the one being loaded: the tile in use, plus (OVERLAP) the previous tile
    // whose V is still being multiplied. AHEAD = how many tiles are in flight ahead of the one consumed.
    constexpr int LAG = OVERLAP ? 2 : 1;
    constexpr int AHEAD = STAGES - LAG;
    static_assert(PP ? STAGES >= 2 : AHEAD >= 1, "OVERLAP needs STAGES >= 3 (PP: 2), otherwise STAGES >= 2");
    constexpr int ROW_CHUNKS = D / 8;  // 16-byte chunks per 128-dim row
    static_assert((BM * ROW_CHUNKS) % THREADS == 0 && (KT * ROW_CHUNKS) % THREADS == 0, "copies divide evenly");
    constexpr float LOG2E = 1.4426950408889634f;
    const float NEG_INF = -__int_as_float(0x7f800000);

    extern __shared__ __align__(1024) unsigned char sm90_smem[];  // not smem_raw: that one is declared __align__(16)
    // The 128B swizzle is a function of absolute address bits [7,10): align the operands to 1024 B ourselves rather
    // than trust the declared alignment of dynamic shared memory.
    unsigned char* smem = sm90_smem + ((1024u - (mma::smem_addr(sm90_smem) & 1023u)) & 1023u);
    unsigned char* sQ = smem;                     // [WGS][64 rows x 128 dims] (OP_BYTES each)
    unsigned char* sKV = smem + WGS * OP_BYTES;   // [STAGES][K tile, V tile]

    const int head = blockIdx.x;
    const int m_tile = gridDim.y - 1 - blockIdx.y;  // heaviest tiles first, as the mma.sync kernel
    const int m0 = m_tile * BM;
    const int kvh = head / (nq / nkv);
    const int tid = threadIdx.x;
    // Consumer warpgroup: query rows m0 + 64 wg .. +63. Broadcast from lane 0 so that ptxas can prove it warp-uniform
    // (as CUTLASS's canonical_warp_group_idx does): the branches on it around wgmma are then not "divergent paths",
    // which it answers by serializing every wgmma (warning C7520).
    const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);  // PP: WGS for the producer warp
    const int warp = (tid >> 5) & 3;      // warp within the warpgroup: its rows 16 warp .. +15 of the 64
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int t4 = lane & 3;

    const int block_rows = min(BM, T - m0);
    const int kv_end = start_pos + m0 + block_rows;  // keys [0, kv_end) are visible to some row of the block
    const int n_tiles = (kv_end + KT - 1) / KT;

    // This warpgroup's rows and the tiles they see (wgmma is warpgroup-wide, so skipping is decided per warpgroup).
    const int wg_row0 = m0 + 64 * wg;
    const int wg_rows = max(0, min(64, T - wg_row0));
    const int wg_tiles = wg_rows > 0 ? (start_pos + wg_row0 + wg_rows + KT - 1) / KT : 0;
    const int wg_first_pos = start_pos + wg_row0;
    const int pos_lo = wg_first_pos + warp * 16 + g;  // absolute positions of this thread's two rows
    const int pos_hi = pos_lo + 8;

    const attn::KvLayout kv{block_table, nkv, 0};

    // ---- Q: all BM rows into the swizzled layout (rows >= T zero-filled), joins the first cp.async group. PP: each
    // warpgroup copies its own 64 rows (only it reads them, behind its own barrier), the producer none.
    constexpr int Q_THREADS = PP ? 128 : THREADS;
    if (wg < WGS)
#pragma unroll
    for (int i = 0; i < BM * ROW_CHUNKS / THREADS; ++i) {
        const int c = (PP ? (tid & 127) : tid) + i * Q_THREADS;
        const int r = (PP ? 64 * wg : 0) + c / ROW_CHUNKS;  // 0 .. BM-1
        const int cc = c % ROW_CHUNKS;
        const int row = m0 + r;
        const bool valid = row < T;
        const __nv_bfloat16* src = q + ((size_t)(valid ? row : 0) * nq + head) * D + cc * 8;
        mma::cp_async16(mma::smem_addr(sQ + (r >> 6) * OP_BYTES + sw128_offset<>(r & 63, cc)), src, valid);
    }

    // ---- K/V tile `tile` into ring stage `stage`. Keys >= kv_end are zero-filled without reading (NaN-safe), as in the
    // mma.sync kernel. One 16-byte chunk per thread per step: 16 consecutive threads read one 256-byte row (coalesced)
    // and each 8 of them write one 128-byte swizzle row (a permutation of its 8 bank groups: conflict-free).
    auto load_tile = [&](int tile, int stage) {
        const int n0 = tile * BN;
        const size_t row0 = kv.tile_row(kvh, n0);
        unsigned char* dK = sKV + stage * T_STAGE;
        unsigned char* dV = dK + T_OP;
#pragma unroll
        for (int i = 0; i < BN * ROW_CHUNKS / THREADS; ++i) {
            const int c = tid + i * THREADS;
            const int r = c / ROW_CHUNKS;
            const int cc = c % ROW_CHUNKS;
            const bool valid = n0 + r < kv_end;
            const size_t src = (row0 + (valid ? r : 0)) * D + cc * 8;
            const uint32_t off = sw128_offset<>(r, cc);
            mma::cp_async16(mma::smem_addr(dK + off), k_pool + src, valid);
            mma::cp_async16(mma::smem_addr(dV + off), v_pool + src, valid);
        }
    };

    // TMA: tile t of the K/V ring through four boxes on its stage's barrier, issued by one thread.
    __shared__ __align__(8) uint64_t full_bar[TMA ? STAGES : 1];  // stage s: its tile landed (phase = use count & 1)
    __shared__ __align__(8) uint64_t empty_bar[PP ? STAGES : 1];  // PP: stage s read by all 8 consumer warps
    // KT = 128: the two KV blocks of the tile, each into its 64 rows of every half; a block wholly past kv_end is not
    // read (its table entry may be any number) and its rows stay as they were (S masks them; V's are zeroed).
    auto tma_load_tile = [&](int tile, int stage) {
        const uint32_t dK = mma::smem_addr(sKV + stage * T_STAGE), dV = dK + T_OP;
        const uint32_t bar = mma::smem_addr(&full_bar[stage]);
        const int blocks = min(KT / BN, (kv_end - tile * KT + BN - 1) / BN);
        mbar_arrive_expect_tx(bar, (uint32_t)(blocks * 2 * OP_BYTES));
        for (int b = 0; b < blocks; ++b) {
            const int row0 = (int)kv.tile_row(kvh, tile * KT + b * BN);
            const uint32_t at = (uint32_t)(b * BN * ROW_BYTES);
            tma_load_box(dK + at, tm_k, 0, row0, bar);
            tma_load_box(dK + T_HALF + at, tm_k, 64, row0, bar);
            tma_load_box(dV + at, tm_v, 0, row0, bar);
            tma_load_box(dV + T_HALF + at, tm_v, 64, row0, bar);
        }
    };

    if constexpr (TMA) {
        // Q alone is commit group 0 (waited for at j = 0); the barriers are initialised and published before any copy.
        mma::cp_async_commit();
        if (tid == 0) {
#pragma unroll
            for (int st = 0; st < STAGES; ++st) {
                mbar_init(mma::smem_addr(&full_bar[st]), 1);
                if constexpr (PP) mbar_init(mma::smem_addr(&empty_bar[st]), 2 * 4);
            }
            mbar_fence_init();
        }
        __syncthreads();  // PP: the last block-wide barrier
        if constexpr (PP) {
            if (wg == WGS) {  // the producer warp: one lane issues every tile, each when its stage is free
                if constexpr (WSREG) setmaxnreg_dec<24>();
                if (tid == THREADS)
                    for (int t = 0; t < n_tiles; ++t) {
                        if (t >= STAGES) mbar_wait(mma::smem_addr(&empty_bar[t % STAGES]), (uint32_t)(t / STAGES - 1) & 1u);
                        tma_load_tile(t, t % STAGES);
                    }
                return;
            }
            if constexpr (WSREG) setmaxnreg_inc<240>();
        } else if (tid == 0) {
            for (int t = 0; t < AHEAD && t < n_tiles; ++t) tma_load_tile(t, t);
        }
    } else {
        // Prologue: tiles 0 .. AHEAD-1, one commit group each (Q rides in group 0), committed even when empty so that
        // group j always holds tile j and the wait count below is a constant.
#pragma unroll
        for (int t = 0; t < AHEAD; ++t) {
            if (t < n_tiles) load_tile(t, t);
            mma::cp_async_commit();
        }
    }

    const uint32_t q_base = mma::smem_addr(sQ + wg * OP_BYTES);
    const uint32_t kv_base = mma::smem_addr(sKV);

    float o[16][4];
#pragma unroll
    for (int i = 0; i < 16; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float s[NT][4];  // overwritten by the first k-step of every S (scale-d = 0); zeroed once so nothing reads garbage
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    uint32_t p[KK][4];  // P (bf16 pairs) as the A operand of the KK k-steps of P V
#pragma unroll
    for (int i = 0; i < KK; ++i) p[i][0] = p[i][1] = p[i][2] = p[i][3] = 0u;
    float m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.f, l_hi = 0.f;
    const float sl2 = scale * LOG2E;

    // QREG: Q of this thread's rows (16 warp + g and + 8 of the warpgroup's 64) as the A operand of the 8 k-steps, in
    // the m16n8k16 A layout: qf[ks] = {(lo, 16ks + 2t4), (hi, same), (lo, 16ks + 2t4 + 8), (hi, same)}, pairs of dims.
    // Dims 16ks + 2t4 (+1) sit in 16-byte chunk 2ks of the row at byte 4 t4 (sw128_offset), + 8 in chunk 2ks + 1.
    uint32_t qf[QREG ? D / 16 : 1][4];
    auto load_q_fragments = [&]() {
        const unsigned char* sq = sQ + wg * OP_BYTES;
        const int lo = warp * 16 + g, hi = lo + 8;
#pragma unroll
        for (int ks = 0; ks < (QREG ? D / 16 : 0); ++ks) {
            qf[ks][0] = *reinterpret_cast<const uint32_t*>(sq + sw128_offset<>(lo, 2 * ks) + 4 * t4);
            qf[ks][1] = *reinterpret_cast<const uint32_t*>(sq + sw128_offset<>(hi, 2 * ks) + 4 * t4);
            qf[ks][2] = *reinterpret_cast<const uint32_t*>(sq + sw128_offset<>(lo, 2 * ks + 1) + 4 * t4);
            qf[ks][3] = *reinterpret_cast<const uint32_t*>(sq + sw128_offset<>(hi, 2 * ks + 1) + 4 * t4);
        }
    };

    // S = Q K_j^T for this warpgroup's 64 rows (8 k-steps over the head dim).
    auto issue_s = [&](int j) {
        const uint32_t k_base = kv_base + (j % STAGES) * T_STAGE;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const uint32_t q_off = (ks >> 2) * HALF_BYTES + (ks & 3) * 32, k_off = (ks >> 2) * T_HALF + (ks & 3) * 32;
            if constexpr (KT == 128) {
                if constexpr (QREG) wgmma_m64n128k16_rs_kmajor(s, qf[ks], desc_kmajor(k_base + k_off), ks > 0);
                else wgmma_m64n128k16_ss(s, desc_kmajor(q_base + q_off), desc_kmajor(k_base + k_off), ks > 0);
            } else {
                if constexpr (QREG) wgmma_m64n64k16_rs(s, qf[ks], desc_kmajor(k_base + k_off), ks > 0);
                else wgmma_m64n64k16_ss(s, desc_kmajor(q_base + q_off), desc_kmajor(k_base + k_off), ks > 0);
            }
        }
    };
    // O += P V_j (4 k-steps over the tile's 64 keys).
    auto issue_pv = [&](int j) {
        const uint32_t v_base = kv_base + (j % STAGES) * T_STAGE + T_OP;
#pragma unroll
        for (int kk = 0; kk < KK; ++kk) wgmma_m64n128k16_rs(o, p[kk], desc_mnmajor<KT>(v_base + kk * 16 * ROW_BYTES), 1);
    };
    // Causal mask (only on tiles that cross this warpgroup's diagonal), online softmax with the scale folded into the
    // exponent; returns alpha. MayMask<false> (attention.cuh says why a type): a tile wholly left of the warpgroup's
    // diagonal, without the mask code.
    auto softmax = [&](int j, float& alpha_lo, float& alpha_hi, auto may_mask) {
        if constexpr (decltype(may_mask)::value) {
            const int n0 = j * KT;
            const bool need_mask = n0 + KT - 1 > wg_first_pos;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float v = s[nt][e];  // raw: the scale is folded into the exponent
                    if (need_mask) {
                        const int key = n0 + nt * 8 + 2 * t4 + (e & 1);
                        if (key > ((e < 2) ? pos_lo : pos_hi)) v = NEG_INF;
                    }
                    s[nt][e] = v;
                }
        }
        attn::online_softmax_scaled(s, sl2, m_lo, m_hi, l_lo, l_hi, alpha_lo, alpha_hi);
    };
    auto rescale_and_pack = [&](float alpha_lo, float alpha_hi) {
#pragma unroll
        for (int dt = 0; dt < 16; ++dt) {
            o[dt][0] *= alpha_lo;
            o[dt][1] *= alpha_lo;
            o[dt][2] *= alpha_hi;
            o[dt][3] *= alpha_hi;
        }
#pragma unroll
        for (int kk = 0; kk < KK; ++kk) {
            p[kk][0] = mma::pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            p[kk][1] = mma::pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            p[kk][2] = mma::pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            p[kk][3] = mma::pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }
    };

    // TMA: waits for tile j's boxes and, on the last tile, zeroes V's rows past the keys (their contents are not ours: 0
    // x NaN in P V) with `count` threads from `first`, then publishes them to wgmma behind `publish`, a barrier of those
    // threads (the ring step's whole block, or PP's one warpgroup).
    auto land_tile = [&](int j, int first, int count, auto publish) {
        mbar_wait(mma::smem_addr(&full_bar[j % STAGES]), (uint32_t)(j / STAGES) & 1u);
        const int n0 = j * KT;
        if (n0 + KT > kv_end) {
            unsigned char* dV = sKV + (j % STAGES) * T_STAGE + T_OP;
            const int valid = kv_end - n0;
            for (int c = first; c < (KT - valid) * ROW_CHUNKS; c += count)
                *reinterpret_cast<uint4*>(dV + sw128_offset<KT>(valid + c / ROW_CHUNKS, c % ROW_CHUNKS)) = make_uint4(0u, 0u, 0u, 0u);
            fence_proxy_async_smem();  // generic writes -> visible to wgmma
            publish();
        }
    };

    // One step of the K/V ring for iteration j, on every thread of the block (it holds a barrier): waits for tile j
    // (commit group j; AHEAD + j groups are committed, so at most AHEAD - 1 may still be in flight), publishes it, and
    // refills the stage of tile j - LAG, which every warpgroup is done with by the barrier.
    auto ring_step = [&](int j) {
        if constexpr (TMA) {
            __syncthreads();  // every warpgroup is done with tile j - LAG: its stage may be refilled
            const int t = j + AHEAD;
            if (tid == 0 && t < n_tiles) tma_load_tile(t, t % STAGES);
            if (j == 0) {
                mma::cp_async_wait<0>();   // Q
                fence_proxy_async_smem();  // -> visible to wgmma
                __syncthreads();
                if constexpr (QREG) load_q_fragments();
            }
            if (j < n_tiles) land_tile(j, tid, THREADS, [] { __syncthreads(); });
        } else {
            mma::cp_async_wait<AHEAD - 1>();
            fence_proxy_async_smem();  // this thread's landed copies -> visible to wgmma (async proxy)
            __syncthreads();           // ... and everyone's; also: every warpgroup is done with tile j - LAG
            const int t = j + AHEAD;   // goes into the stage of tile j - LAG, just released
            if (t < n_tiles) load_tile(t, t % STAGES);
            mma::cp_async_commit();
            if constexpr (QREG)
                if (j == 0) load_q_fragments();  // Q landed with tile 0 (commit group 0), published by the barrier above
        }
    };

    // PP: tile j (which this warpgroup reads) landed and is visible to its wgmma; the last tile's V rows past the keys
    // zeroed. Both warpgroups zero those rows of a tile both read, each behind its own barrier: the second writes the
    // zeros the first already wrote, which its wgmma may be reading (the same bytes either way).
    auto acquire = [&](int j) {
        if (j == 0) {
            mma::cp_async_wait<0>();  // this thread's part of the warpgroup's Q
            fence_proxy_async_smem();
            bar_sync(3 + wg, 128);
            if constexpr (QREG) load_q_fragments();
        }
        land_tile(j, tid & 127, 128, [&] { bar_sync(3 + wg, 128); });
    };
    // PP: this warp is done with tile t (its P V completed; or the warpgroup never reads it, once it has landed).
    auto release = [&](int t) {
        if (lane == 0) mbar_arrive(mma::smem_addr(&empty_bar[t % STAGES]));
    };
    // PP: the turns (FA3's warp scheduler barriers). Warpgroup w waits on barrier 1 + w for the other's arrival and
    // arrives on the other's after issuing; warpgroup 1 arrives once first (warpgroup 0 starts), and not after its last
    // issue, which nobody waits for. Every warpgroup takes n_tiles + 1 turns, issuing or not, so the counts match.
    auto turn_begin = [&]() {
        if constexpr (PP) bar_sync(1 + wg, 256);
    };
    auto turn_end = [&](int j) {
        if constexpr (PP)
            if (!(wg == 1 && j == n_tiles)) bar_arrive(2 - wg, 256);
    };

    if constexpr (!OVERLAP) {
        for (int j = 0; j < n_tiles; ++j) {
            ring_step(j);
            if (j < wg_tiles) {
                wg_fence();
                issue_s(j);
                wg_commit();
                wg_wait<0>();
                pin(s);
                if constexpr (QREG) pin(qf);  // the RS wgmma read them asynchronously until the wait
                float a_lo, a_hi;
                softmax(j, a_lo, a_hi, attn::MayMask<true>{});
                rescale_and_pack(a_lo, a_hi);
                pin(o);
                pin(p);
                wg_fence();  // o and p were written by ordinary instructions since the last wgmma
                issue_pv(j);
                wg_commit();
                wg_wait<0>();
                pin(o);
                pin(p);
            }
        }
    } else {
        // Iteration j issues S_j = Q K_j, then O += P_{j-1} V_{j-1}, does the softmax of tile j while that product runs,
        // waits for it, rescales O and packs P_j; one more iteration runs the last tile's P V. Written as a prologue
        // (S_0 alone), a steady loop with no branch around a wgmma, and a tail (the last P V, then the ring steps of the
        // other warpgroup's tiles), because ptxas tracks the wgmma in flight without correlating branches: the single
        // loop with "if (do_s)" / "if (do_pv)" made it assume P V could still be running where O is rescaled, and it
        // serialized every wgmma (C7514, sessions 9-14).
        int j = 0;
        if constexpr (PP) {
            if (wg == 1) bar_arrive(1, 256);  // warpgroup 0's first turn
            if (wg_tiles > 0) acquire(0);
        } else {
            ring_step(0);
        }
        turn_begin();
        if (wg_tiles > 0) {
            wg_fence();
            issue_s(0);
            wg_commit();
        }
        turn_end(0);
        wg_wait<0>();  // on every path (ptxas tracks wgmma in flight without correlating the two branches)
        pin(s);
        if constexpr (QREG) pin(qf);
        if (wg_tiles > 0) {
            float a_lo, a_hi;
            softmax(0, a_lo, a_hi, attn::MayMask<true>{});
            rescale_and_pack(a_lo, a_hi);  // O is still zero: the rescale is harmless
        }
        // The steady iterations: those of tiles left of this warpgroup's diagonal without the mask code, then the one or
        // two that cross it (first_mask: the first tile with a key past the warpgroup's first row) with it; one body.
        auto steady = [&](int j, auto may_mask) {
            if constexpr (PP) acquire(j);
            else ring_step(j);
            turn_begin();
            pin(o);
            pin(p);
            wg_fence();  // o and p were written by ordinary instructions since the last wgmma
            issue_s(j);
            wg_commit();
            issue_pv(j - 1);
            wg_commit();
            turn_end(j);
            wg_wait<1>();  // S_j done; P_{j-1} V_{j-1} may still run: nothing below touches o or p until the next wait
            pin(s);
            if constexpr (QREG) pin(qf);
            float a_lo, a_hi;
            softmax(j, a_lo, a_hi, may_mask);
            wg_wait<0>();
            pin(o);
            pin(p);
            if constexpr (PP) release(j - 1);
            rescale_and_pack(a_lo, a_hi);
        };
        const int first_mask = (wg_first_pos + 1) / KT;
        for (j = 1; j < min(first_mask, wg_tiles); ++j) steady(j, attn::MayMask<false>{});
        for (; j < wg_tiles; ++j) steady(j, attn::MayMask<true>{});
        // j == max(1, wg_tiles): the last tile's P V here, then the ring steps (PP: the turns and releases) of the
        // tiles that only the block's other warpgroup reads
        for (; j < n_tiles + 1; ++j) {
            if constexpr (!PP) ring_step(j);
            turn_begin();
            if (j == wg_tiles) {
                pin(o);
                pin(p);
                wg_fence();
                issue_pv(j - 1);
                wg_commit();
            }
            turn_end(j);
            wg_wait<0>();
            pin(o);
            pin(p);
            if constexpr (PP) {
                if (j - 1 >= wg_tiles) mbar_wait(mma::smem_addr(&full_bar[(j - 1) % STAGES]), (uint32_t)((j - 1) / STAGES) & 1u);
                release(j - 1);
            }
        }
    }
    mma::cp_async_wait<0>();  // nothing may be in flight when the block exits

    if (wg_rows == 0) return;
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    const float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    const int r_lo = wg_row0 + warp * 16 + g;
    const int r_hi = r_lo + 8;
    if (r_lo < T) {
        __nv_bfloat16* dst = out + ((size_t)r_lo * nq + head) * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < 16; ++dt)
            *reinterpret_cast<uint32_t*>(dst + dt * 8) = mma::pack_bf16x2(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
    }
    if (r_hi < T) {
        __nv_bfloat16* dst = out + ((size_t)r_hi * nq + head) * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < 16; ++dt)
            *reinterpret_cast<uint32_t*>(dst + dt * 8) = mma::pack_bf16x2(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
    }
}

// The engine's configuration: one consumer warpgroup (64 query rows per block), a 2-stage ring, no overlap. Two
// blocks fit on a multiprocessor (2 x 82,944 B of shared memory), hence the launch bound of the entry below.
constexpr int ENGINE_WGS = 1;
constexpr int ENGINE_STAGES = 2;
static_assert(smem_bytes(ENGINE_WGS, ENGINE_STAGES) == 82944, "AttentionOps.HopperPrefillSmemBytes must match");

// The TMA entry's configuration: two consumer warpgroups (128 query rows per block) share each K/V tile, a 3-stage
// ring, softmax overlapped with P V; one block a multiprocessor (132,096 B). Why not the cp.async one's: with the
// copies off the threads this is the fastest variant of the micro-benchmark (H200, 16k: 471.5 TFLOP/s against 415.9
// for the cp.async entry and 393.0 for "wg1 s2 tma", session 16), whereas without TMA two warpgroups lose.
constexpr int ENGINE_TMA_WGS = 2;
constexpr int ENGINE_TMA_STAGES = 3;
static_assert(smem_bytes(ENGINE_TMA_WGS, ENGINE_TMA_STAGES) == 132096, "AttentionOps.HopperPrefillTmaSmemBytes must match");

// The ping-pong entry's configuration (prefill's PP flag): the TMA entry's two consumer warpgroups, 128-key tiles (KT)
// in a 3-stage ring, and a producer warpgroup that hands its registers to them (WSREG): 384 threads, 230,400 B of shared
// memory (of the 232,448 a block may opt into on 9.0). The micro-benchmark on an H200 (session 19), at 16k / 2k / the
// last 4k chunk of 16k: 566-588 / 424-426 / 559-584 TFLOP/s against 443-453 / 355-356 / 440-444 for the TMA entry.
// Its steps, each measured: one producer warp and 64-key tiles ran 536-546 / 404-409 / 519-534 (2 stages 375-380 at
// 16k: the producer then waits on the slower warpgroup's P V before each tile; 4 stages 502-549); 128-key tiles at 224
// registers a thread (one producer warp) serialize their wgmma (ptxas C7512: 439-445 at 16k); a producer warpgroup with
// 64-key tiles 491-521, with Q in registers 546.
constexpr int ENGINE_PP_STAGES = 3;
constexpr int ENGINE_PP_KT = 128;
constexpr int ENGINE_PP_THREADS = 128 * ENGINE_TMA_WGS + 128;
static_assert(smem_bytes(ENGINE_TMA_WGS, ENGINE_PP_STAGES, ENGINE_PP_KT) == 230400,
              "AttentionOps.HopperPrefillPingPongSmemBytes must match");

// The entries' common part (below): this block's sequence (blockIdx.z) from seq_info, the exit of m-tiles past its
// rows, and its slices of q, out and the block table, then the template in the entry's configuration.
template <int WGS, int STAGES, bool OVERLAP, bool TMA = false, bool PP = false, int KT = 64, bool WSREG = false>
__device__ __forceinline__ void paged(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
                                      const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out,
                                      const int* __restrict__ seq_info, const int* __restrict__ block_tables,
                                      int max_blocks, int nq, int nkv, float scale, const TmaMap* tm_k = nullptr,
                                      const TmaMap* tm_v = nullptr) {
    kernel_entry_barrier();
    const int4 info = reinterpret_cast<const int4*>(seq_info)[blockIdx.z];
    const int T = info.y;
    if ((int)(gridDim.y - 1 - blockIdx.y) * 64 * WGS >= T) return;
    const size_t first = (size_t)info.x * nq * D;
    prefill<WGS, STAGES, OVERLAP, false, TMA, PP, KT, WSREG>(q + first, k_pool, v_pool, out + first, T, info.z, nq, nkv,
                                                              scale, block_tables + (size_t)blockIdx.z * max_blocks,
                                                              tm_k, tm_v);
}

}  // namespace attn_prefill_sm90a

// Paged, many sequences in one launch: the arguments, seq_info / block table contract and results of
// attention_prefill_paged_bf16_d128 (kernels/attention_prefill.cu), which it replaces on compute capability 9.0.
// seq_info int32 [sequences, 4] = {first query row in q/out, query rows T, cached positions before them (start_pos),
// unused}; block_tables int32 [sequences, max_blocks]; K and V are one layer of the pool, [blocks, nkv, 64, 128].
// Only the launch differs: block 128 threads (one warpgroup), grid (nq, ceil(max T / 64), sequences) -- 64 query rows
// per block, not 128 -- and dynamic smem attn_prefill_sm90a::smem_bytes(1, 2) = 82,944 B. blockIdx maps as in the
// portable entry: x = query head, y = m-tile counted from the last (heaviest first), z = sequence; m-tiles past a
// sequence's T exit at once.
extern "C" __global__ void __launch_bounds__(128, 2) attention_prefill_paged_bf16_d128_sm90a(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
    const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out, const int* __restrict__ seq_info,
    const int* __restrict__ block_tables, int max_blocks, int nq, int nkv, float scale) {
    attn_prefill_sm90a::paged<attn_prefill_sm90a::ENGINE_WGS, attn_prefill_sm90a::ENGINE_STAGES, false>(
        q, k_pool, v_pool, out, seq_info, block_tables, max_blocks, nq, nkv, scale);
}

// The same with K and V by TMA, in the TMA configuration above (prefill's TMA flag): block 256 threads (two
// warpgroups), grid (nq, ceil(max T / 128), sequences), dynamic smem smem_bytes(2, 3) = 132,096 B. tm_k / tm_v map this
// layer's K and V pools as rows of 128 bf16 (AttentionOps encodes them per launch with cuTensorMapEncodeTiled: 256-byte
// pitch, 64 x 64 boxes, 128-byte swizzle). AttentionOps launches this one where the PTX has it, else the entry above.
extern "C" __global__ void __launch_bounds__(256, 1) attention_prefill_paged_bf16_d128_sm90a_tma(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
    const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out, const int* __restrict__ seq_info,
    const int* __restrict__ block_tables, int max_blocks, int nq, int nkv, float scale,
    const __grid_constant__ attn_prefill_sm90a::TmaMap tm_k, const __grid_constant__ attn_prefill_sm90a::TmaMap tm_v) {
    attn_prefill_sm90a::paged<attn_prefill_sm90a::ENGINE_TMA_WGS, attn_prefill_sm90a::ENGINE_TMA_STAGES, true, true>(
        q, k_pool, v_pool, out, seq_info, block_tables, max_blocks, nq, nkv, scale, &tm_k, &tm_v);
}

// The same in ping-pong (the configuration above): block 384 threads (two consumer warpgroups, then the producer
// warpgroup), dynamic smem smem_bytes(2, 3, 128) = 230,400 B, the TMA entry's grid and arguments. AttentionOps launches
// this one where the PTX has it.
extern "C" __global__ void __launch_bounds__(attn_prefill_sm90a::ENGINE_PP_THREADS, 1) attention_prefill_paged_bf16_d128_sm90a_pingpong(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
    const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out, const int* __restrict__ seq_info,
    const int* __restrict__ block_tables, int max_blocks, int nq, int nkv, float scale,
    const __grid_constant__ attn_prefill_sm90a::TmaMap tm_k, const __grid_constant__ attn_prefill_sm90a::TmaMap tm_v) {
    attn_prefill_sm90a::paged<attn_prefill_sm90a::ENGINE_TMA_WGS, attn_prefill_sm90a::ENGINE_PP_STAGES, true, true, true,
                              attn_prefill_sm90a::ENGINE_PP_KT, true>(
        q, k_pool, v_pool, out, seq_info, block_tables, max_blocks, nq, nkv, scale, &tm_k, &tm_v);
}

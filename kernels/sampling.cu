// Token sampling on the last position's logits, entirely on the device (no vocab-sized host copies).
//
// Pipeline (one launch chain, no host sync), same order as HF's logits processors for generate():
//   logit bias -> repetition penalty -> presence/frequency penalties -> temperature -> top-k -> top-p -> min-p -> draw
//
//   sampling_prepare_f32   grid of TILE-sized tiles: applies bias/penalties/temperature into `processed`,
//                          writes each tile's (max, argmax) partial.
//   sampling_argmax_f32    greedy only (1 block): reduces the partials, lowest id wins ties, records the token.
//   sampling_compact_f32   same grid: reduces the partial max M, keeps per tile, in id order, the candidates
//                          d = x - M >= -28 (everything else has weight exp(d) < 2^-40, i.e. exactly 0 below).
//   sampling_radix_pass_f32  same grid, launched 3 times per threshold (11/11/10-bit digits): top-k threshold
//                          (counts) then top-p threshold (integer mass) by a multi-block radix select: per-tile
//                          shared histograms, one global histogram, the last block to finish picks the digit.
//   sampling_draw_f32      same grid: min-p cut and per-tile kept mass; the last block draws r, finds the tile and
//                          the token by a prefix scan in id order; records it (counts[token]++) into `result`.
// When every logit is -inf or NaN after bias and penalties (NaN weights, or a bias that bans the rest) there is
// nothing to pick: the token is SAMPLING_NO_TOKEN and nothing is counted, where any id would be a silent guess; the
// host reads it and says why (GpuSampler, as CpuSampler does).
// Every kernel is O(vocab / grid) per block: no single-block pass over the whole vocabulary.
//
// Exactness contract with the C# reference (QwQ.Cuda.Sampling.CpuSampler / SamplingMath): every float op is
// spelled out with an explicit rounding intrinsic (no FMA contraction surprises), exp is our own polynomial,
// and all probability mass is integer: q = floor(exp(d) * 2^40) as uint64, so sums are order independent and the
// GPU and the CPU produce bit-identical weights, thresholds and tokens for the same (seed, step).
// Build: nvcc -ccbin clang-14 -ptx -arch=compute_80 -O3 -std=c++17 kernels/sampling.cu -o kernels/ptx/sampling.ptx
// (never with --use_fast_math: it would change the rounding of the divisions).

#include "common.cuh"

#define SAMPLING_TILE 1024        // logits per tile of prepare/compact
#define SAMPLING_PREP_THREADS 256 // 4 logits per thread
#define SAMPLING_ITEMS 4
#define SAMPLING_SELECT_THREADS 1024
#define SAMPLING_RADIX_BINS 2048  // 11-bit digits: passes of 11, 11, 10 bits
#define SAMPLING_NO_TOKEN (-1)    // no logit left to pick from (GpuSampler.NoToken)

typedef unsigned long long u64;

// flags of sampling_prepare_f32
#define SAMPLING_FLAG_BIAS 1
#define SAMPLING_FLAG_REPETITION 2
#define SAMPLING_FLAG_PRESENCE_FREQUENCY 4
#define SAMPLING_FLAG_TEMPERATURE 8

// ---------------------------------------------------------------- shared math (mirrors SamplingMath.cs)

// Order-preserving map float -> uint32 (larger float => larger key). -0 is normalised to +0 before this.
__device__ __forceinline__ unsigned sampling_key(float x)
{
    unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// exp(d) for d in [-28, 0], deterministic: Cody-Waite reduction + degree-7 Taylor polynomial, explicit fma.
// exp(0) == 1 exactly. Constants are given as bit patterns so both sides parse them identically.
__device__ __forceinline__ float sampling_exp(float d)
{
    const float log2e = __uint_as_float(0x3fb8aa3bu);
    const float ln2hi = __uint_as_float(0x3f317200u);
    const float ln2lo = __uint_as_float(0x35bfbe8eu);
    float n = rintf(__fmul_rn(d, log2e));
    float r = __fmaf_rn(-n, ln2hi, d);
    r = __fmaf_rn(-n, ln2lo, r);
    float p = __uint_as_float(0x39500d01u);          // 1/5040
    p = __fmaf_rn(p, r, __uint_as_float(0x3ab60b61u)); // 1/720
    p = __fmaf_rn(p, r, __uint_as_float(0x3c088889u)); // 1/120
    p = __fmaf_rn(p, r, __uint_as_float(0x3d2aaaabu)); // 1/24
    p = __fmaf_rn(p, r, __uint_as_float(0x3e2aaaabu)); // 1/6
    p = __fmaf_rn(p, r, 0.5f);
    p = __fmaf_rn(p, r, 1.0f);
    p = __fmaf_rn(p, r, 1.0f);
    int e = (int)n; // in [-41, 0]: 2^e is a normal float
    return __fmul_rn(p, __int_as_float((e + 127) << 23));
}

// Integer weight of a candidate: floor(w * 2^40). Sum over 152064 tokens < 2^58.
__device__ __forceinline__ u64 sampling_weight(float w)
{
    return __float2ull_rz(__fmul_rn(w, 1099511627776.0f));
}

// d = x - M, with x == M (including +-inf ties) meaning d = 0.
__device__ __forceinline__ float sampling_delta(float x, float m)
{
    return x == m ? 0.0f : __fsub_rn(x, m);
}

__device__ __forceinline__ u64 sampling_mix64(u64 z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Counter-based RNG: a 64-bit uniform word from (seed, step) alone.
__device__ __forceinline__ u64 sampling_rand64(u64 seed, u64 step)
{
    return sampling_mix64(sampling_mix64(seed) ^ step);
}

// ceil(p * total) exactly, p a float in (0, 1] (p = m * 2^-s).
__device__ __forceinline__ u64 sampling_ceil_mul(float p, u64 total)
{
    unsigned bits = __float_as_uint(p);
    unsigned ex = (bits >> 23) & 0xFFu;
    u64 m = bits & 0x7FFFFFu;
    int s;
    if (ex == 0) s = 149; else { m |= 0x800000u; s = 150 - (int)ex; }
    if (m == 0 || total == 0) return 0;
    u64 lo = m * total;
    u64 hi = __umul64hi(m, total);
    if (s >= 128) return 1; // 0 < m*total < 2^82 <= 2^s
    // (hi:lo + 2^s - 1) >> s
    u64 addLo = s >= 64 ? ~0ull : ((1ull << s) - 1ull);
    u64 addHi = s >= 64 ? ((1ull << (s - 64)) - 1ull) : 0ull;
    u64 nlo = lo + addLo;
    u64 carry = nlo < lo ? 1ull : 0ull;
    u64 nhi = hi + addHi + carry;
    if (s == 0) return nlo;
    if (s >= 64) return nhi >> (s - 64);
    return (nlo >> s) | (nhi << (64 - s));
}

// ---------------------------------------------------------------- block helpers

// Exclusive prefix sum over the block; *total receives the block sum. All threads must call it.
// scratch: 32 u64 of shared memory; reusable right after return.
template <int THREADS>
__device__ __forceinline__ u64 sampling_block_scan(u64 v, u64* scratch, u64* total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1)
    {
        u64 y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    if (warp == 0)
    {
        u64 s = lane < THREADS / 32 ? scratch[lane] : 0ull;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            u64 y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        scratch[lane] = s;
    }
    __syncthreads();
    u64 before = warp > 0 ? scratch[warp - 1] : 0ull;
    *total = scratch[THREADS / 32 - 1];
    __syncthreads();
    return before + x - v;
}

// (value, id) pair: larger value wins, lowest id on ties.
__device__ __forceinline__ bool sampling_better(float v, int i, float bv, int bi)
{
    return v > bv || (v == bv && i < bi);
}

template <int THREADS>
__device__ __forceinline__ void sampling_block_argmax(float& v, int& i, float* sv, int* si)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_down_sync(0xffffffffu, v, o);
        int oi = __shfl_down_sync(0xffffffffu, i, o);
        if (sampling_better(ov, oi, v, i)) { v = ov; i = oi; }
    }
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    if (warp == 0)
    {
        v = lane < THREADS / 32 ? sv[lane] : -INFINITY;
        i = lane < THREADS / 32 ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
        {
            float ov = __shfl_down_sync(0xffffffffu, v, o);
            int oi = __shfl_down_sync(0xffffffffu, i, o);
            if (sampling_better(ov, oi, v, i)) { v = ov; i = oi; }
        }
        if (lane == 0) { sv[0] = v; si[0] = i; }
    }
    __syncthreads();
    v = sv[0];
    i = si[0];
    __syncthreads();
}

// Device-side state shared by the radix passes and the draw (one per sampler; zeroed once at allocation).
// counter is the "last block done" ticket of the current launch; every kernel leaves it at 0.
struct SamplingState
{
    unsigned prefix;    // digits chosen so far by the current radix select
    unsigned mask;      // bits of prefix that are fixed
    unsigned minKey;    // candidates considered by the current select: key >= minKey
    unsigned threshold; // kept candidates: key >= threshold (0 = all); reset to 0 by sampling_compact_f32
    u64 need;           // weight still needed inside the selected digit's bin
    unsigned active;    // 1 while a select is in progress (0: top-k keeps everything, later passes skip)
    unsigned counter;   // blocks done in the current launch
};

// ---------------------------------------------------------------- kernels

// processed[v] = temperature(penalties(bias(logits[v]))) for v < validVocab; NaN -> -inf, -0 -> +0.
// blockMax/blockArg[blockIdx.x] = the tile's (max, lowest argmax).
// grid = ceil(validVocab / SAMPLING_TILE), block = SAMPLING_PREP_THREADS.
extern "C" __global__ void __launch_bounds__(SAMPLING_PREP_THREADS) sampling_prepare_f32(
    const float* __restrict__ logits,  // [vocabRows] fp32, only the first validVocab read
    const float* __restrict__ bias,    // [validVocab] fp32 (read when FLAG_BIAS)
    const int* __restrict__ counts,    // [vocabRows] int32 occurrences so far (read when penalties are on)
    float* __restrict__ processed,     // [validVocab] fp32 out
    float* __restrict__ blockMax,      // [gridDim.x] fp32 out
    int* __restrict__ blockArg,        // [gridDim.x] int32 out
    int validVocab, int flags, float repetitionPenalty, float presencePenalty, float frequencyPenalty,
    float temperature)
{
    kernel_entry_barrier();
    __shared__ float sv[32];
    __shared__ int si[32];
    float best = -INFINITY;
    int bestId = 0x7fffffff;
    const int base = blockIdx.x * SAMPLING_TILE + threadIdx.x;
#pragma unroll
    for (int j = 0; j < SAMPLING_ITEMS; ++j)
    {
        const int v = base + j * SAMPLING_PREP_THREADS;
        if (v >= validVocab) break;
        float x = logits[v];
        if (flags & SAMPLING_FLAG_BIAS) x = __fadd_rn(x, bias[v]);
        if (flags & (SAMPLING_FLAG_REPETITION | SAMPLING_FLAG_PRESENCE_FREQUENCY))
        {
            const int c = counts[v];
            if (c > 0)
            {
                if (flags & SAMPLING_FLAG_REPETITION)
                    x = x < 0.0f ? __fmul_rn(x, repetitionPenalty) : __fdiv_rn(x, repetitionPenalty);
                if (flags & SAMPLING_FLAG_PRESENCE_FREQUENCY)
                    x = __fsub_rn(x, __fadd_rn(presencePenalty, __fmul_rn(frequencyPenalty, (float)c)));
            }
        }
        if (flags & SAMPLING_FLAG_TEMPERATURE) x = __fdiv_rn(x, temperature);
        if (x != x) x = -INFINITY;
        if (x == 0.0f) x = 0.0f;
        processed[v] = x;
        if (sampling_better(x, v, best, bestId)) { best = x; bestId = v; }
    }
    sampling_block_argmax<SAMPLING_PREP_THREADS>(best, bestId, sv, si);
    if (threadIdx.x == 0) { blockMax[blockIdx.x] = best; blockArg[blockIdx.x] = bestId; }
}

// Greedy: token = argmax (lowest id on ties); counts[token]++; result[0] = token (SAMPLING_NO_TOKEN, nothing
// counted, when every logit is -inf). 1 block of 1024.
extern "C" __global__ void __launch_bounds__(SAMPLING_SELECT_THREADS) sampling_argmax_f32(
    const float* __restrict__ blockMax, const int* __restrict__ blockArg, int numBlocks,
    int* counts,  // [vocabRows] int32
    int* result)  // [1] int32
{
    kernel_entry_barrier();
    __shared__ float sv[32];
    __shared__ int si[32];
    float best = -INFINITY;
    int bestId = 0x7fffffff;
    for (int b = threadIdx.x; b < numBlocks; b += SAMPLING_SELECT_THREADS)
        if (sampling_better(blockMax[b], blockArg[b], best, bestId)) { best = blockMax[b]; bestId = blockArg[b]; }
    sampling_block_argmax<SAMPLING_SELECT_THREADS>(best, bestId, sv, si);
    if (threadIdx.x == 0)
    {
        const bool none = best == -INFINITY;
        result[0] = none ? SAMPLING_NO_TOKEN : bestId;
        if (!none) counts[bestId] += 1;
    }
}

// Greedy for many sequences at once, when no bias or penalty changes the logits: row r's token = argmax of its own
// logits (lowest id on ties, NaN as -inf, as sampling_prepare_f32 + sampling_argmax_f32 decide), counted in that
// sequence's own counts and written to tokens[r] (SAMPLING_NO_TOKEN, nothing counted, when every logit is NaN or
// -inf). One block of 1024 threads per row; one launch for the batch.
extern "C" __global__ void __launch_bounds__(SAMPLING_SELECT_THREADS) sampling_greedy_rows_f32(
    const float* const* __restrict__ logits_rows,  // [R] device pointers, each to validVocab+ fp32
    int* const* __restrict__ counts_rows,          // [R] device pointers, each to vocabRows int32
    int* __restrict__ tokens,                      // [R] int32 out
    int validVocab)
{
    kernel_entry_barrier();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* logits = logits_rows[blockIdx.x];
    float best = -INFINITY;
    int bestId = 0x7fffffff;
    for (int v = threadIdx.x; v < validVocab; v += SAMPLING_SELECT_THREADS)
    {
        float x = logits[v];
        if (x != x) x = -INFINITY;
        if (sampling_better(x, v, best, bestId)) { best = x; bestId = v; }
    }
    sampling_block_argmax<SAMPLING_SELECT_THREADS>(best, bestId, sv, si);
    if (threadIdx.x == 0)
    {
        const bool none = best == -INFINITY;
        tokens[blockIdx.x] = none ? SAMPLING_NO_TOKEN : bestId;
        if (!none) counts_rows[blockIdx.x][bestId] += 1;
    }
}

// Candidates of each tile, in id order, into that tile's segment: segId/segKey/segW[blockIdx.x * TILE + j].
// grid = ceil(validVocab / SAMPLING_TILE), block = SAMPLING_PREP_THREADS.
extern "C" __global__ void __launch_bounds__(SAMPLING_PREP_THREADS) sampling_compact_f32(
    const float* __restrict__ processed,  // [validVocab] fp32
    const float* __restrict__ blockMax,   // [gridDim.x] fp32
    int validVocab,
    int* __restrict__ segId,        // [gridDim.x * TILE] int32
    unsigned* __restrict__ segKey,  // [gridDim.x * TILE] uint32 order-preserving key of processed[id]
    float* __restrict__ segW,       // [gridDim.x * TILE] fp32 exp(processed[id] - M)
    int* __restrict__ segCount,     // [gridDim.x] int32
    SamplingState* state)           // [1]: threshold and select state reset here (nothing reads it in this launch)
{
    kernel_entry_barrier();
    if (blockIdx.x == 0 && threadIdx.x == 0)
    {
        state->threshold = 0u;
        state->active = 0u;
    }
    __shared__ float sm[32];
    __shared__ u64 scan[32];
    // Global max from the per-tile partials (a few hundred floats).
    float m = -INFINITY;
    for (int b = threadIdx.x; b < gridDim.x; b += SAMPLING_PREP_THREADS) m = fmaxf(m, blockMax[b]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = m;
    __syncthreads();
    m = sm[0];
    for (int w = 1; w < SAMPLING_PREP_THREADS / 32; ++w) m = fmaxf(m, sm[w]);

    // M = -inf: every logit is -inf or NaN, and d = 0 would make each a candidate of weight 1 (a uniform draw over
    // the vocabulary); none is, so the draw finds nothing and says so.
    const bool none = m == -INFINITY;

    // Each thread owns SAMPLING_ITEMS consecutive ids so the block scan keeps id order.
    const int first = blockIdx.x * SAMPLING_TILE + threadIdx.x * SAMPLING_ITEMS;
    float x[SAMPLING_ITEMS];
    float d[SAMPLING_ITEMS];
    int mine = 0;
#pragma unroll
    for (int j = 0; j < SAMPLING_ITEMS; ++j)
    {
        const int v = first + j;
        x[j] = v < validVocab ? processed[v] : -INFINITY;
        d[j] = v < validVocab && !none ? sampling_delta(x[j], m) : -INFINITY;
        if (d[j] >= -28.0f) ++mine;
    }
    u64 total;
    int at = (int)sampling_block_scan<SAMPLING_PREP_THREADS>((u64)mine, scan, &total);
    const int seg = blockIdx.x * SAMPLING_TILE;
#pragma unroll
    for (int j = 0; j < SAMPLING_ITEMS; ++j)
    {
        if (d[j] >= -28.0f)
        {
            segId[seg + at] = first + j;
            segKey[seg + at] = sampling_key(x[j]);
            segW[seg + at] = sampling_exp(d[j]);
            ++at;
        }
    }
    if (threadIdx.x == 0) segCount[blockIdx.x] = (int)total;
}

// Called by every block after its global atomics; true in exactly one block (the last to arrive), which then
// sees every other block's global writes. Ticket reset by that block.
__device__ __forceinline__ bool sampling_last_block(unsigned* counter, int* flag)
{
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *flag = atomicAdd(counter, 1u) == gridDim.x - 1 ? 1 : 0;
    __syncthreads();
    const bool last = *flag != 0;
    if (last) __threadfence();
    return last;
}

// One pass of a multi-block radix select over the tiles' candidate segments (grid = numTiles, block =
// SAMPLING_PREP_THREADS). Finds the largest key t (present among the considered candidates) such that the weight
// of {key >= t} reaches `need`: weight 1 per candidate (byMass = 0, top-k: need = topK, t = the topK-th largest
// key) or its integer mass (byMass = 1, top-p: need = ceil(topP * mass of the candidates with key >= threshold)).
// Digits of 11, 11, 10 bits (passes 0, 1, 2; shifts 21, 10, 0); bins are scanned from the top.
// Every block histograms its tile in shared memory with 32-bit atomics (64-bit shared atomics are CAS loops on
// sm_80/sm_90 and collapse under the heavy bin contention of clustered logits), then adds its non-zero bins to
// the global u64 histogram; the last block picks the digit, updates `state` and re-zeroes the histogram.
// Pass 2 leaves the result in state->threshold. Exactly the thresholds of CpuSampler (pinned by
// RadixSelectModelTests).
extern "C" __global__ void __launch_bounds__(SAMPLING_PREP_THREADS) sampling_radix_pass_f32(
    const unsigned* __restrict__ segKey,  // [numTiles * TILE] uint32
    const float* __restrict__ segW,       // [numTiles * TILE] fp32
    const int* __restrict__ segCount,     // [numTiles] int32
    int pass,                             // 0, 1, 2
    int byMass,                           // 0: top-k (counts), 1: top-p (integer mass)
    int topK,                             // pass 0 of top-k: the k (>= 1)
    float topP,                           // pass 0 of top-p: p in (0, 1)
    u64* hist,                            // [SAMPLING_RADIX_BINS] u64, all 0 between launches
    SamplingState* state)
{
    kernel_entry_barrier();
    __shared__ unsigned hlo[SAMPLING_RADIX_BINS]; // counts, or the low 20 bits of the masses
    __shared__ unsigned hhi[SAMPLING_RADIX_BINS]; // masses >> 20 (<= 2^20 each, <= 1024 per tile: fits)
    __shared__ u64 scan[32];
    __shared__ unsigned selDigit;
    __shared__ u64 selNeed;
    __shared__ int lastFlag;
    const int tid = threadIdx.x;
    const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    const unsigned digitMask = pass == 2 ? 1023u : 2047u;
    unsigned prefix = 0, mask = 0, minKey = 0;
    if (pass == 0)
    {
        minKey = byMass ? state->threshold : 0u;
    }
    else
    {
        if (state->active == 0) return; // uniform over the grid: nobody touches the counter
        prefix = state->prefix;
        mask = state->mask;
        minKey = state->minKey;
    }

    for (int b = tid; b < SAMPLING_RADIX_BINS; b += SAMPLING_PREP_THREADS) { hlo[b] = 0u; hhi[b] = 0u; }
    __syncthreads();
    const int seg = blockIdx.x * SAMPLING_TILE;
    const int cnt = segCount[blockIdx.x];
    for (int j = tid; j < cnt; j += SAMPLING_PREP_THREADS)
    {
        const unsigned k = segKey[seg + j];
        if (k >= minKey && (k & mask) == prefix)
        {
            const unsigned bin = (k >> shift) & digitMask;
            if (byMass)
            {
                const u64 q = sampling_weight(segW[seg + j]);
                if (q)
                {
                    atomicAdd(&hlo[bin], (unsigned)(q & 0xFFFFFull));
                    atomicAdd(&hhi[bin], (unsigned)(q >> 20));
                }
            }
            else
            {
                atomicAdd(&hlo[bin], 1u);
            }
        }
    }
    __syncthreads();
    for (int b = tid; b < SAMPLING_RADIX_BINS; b += SAMPLING_PREP_THREADS)
    {
        const u64 v = (u64)hlo[b] + ((u64)hhi[b] << 20);
        if (v) atomicAdd(&hist[b], v);
    }
    if (!sampling_last_block(&state->counter, &lastFlag)) return;

    // Last block: thread t owns bins 2047-8t .. 2040-8t (a scan in descending bin order).
    constexpr int PER = SAMPLING_RADIX_BINS / SAMPLING_PREP_THREADS; // 8
    u64 h[PER];
    u64 sum = 0;
#pragma unroll
    for (int i = 0; i < PER; ++i)
    {
        h[i] = __ldcg(&hist[SAMPLING_RADIX_BINS - 1 - PER * tid - i]);
        sum += h[i];
    }
    u64 total;
    u64 above = sampling_block_scan<SAMPLING_PREP_THREADS>(sum, scan, &total);
#pragma unroll
    for (int i = 0; i < PER; ++i) hist[SAMPLING_RADIX_BINS - 1 - PER * tid - i] = 0ull; // ready for the next pass

    u64 need;
    bool keepAll = false;
    if (pass == 0)
    {
        if (byMass)
        {
            u64 target = sampling_ceil_mul(topP, total);
            if (target > total) target = total;
            if (target < 1) target = 1;
            need = target;
        }
        else
        {
            need = (u64)topK;
            keepAll = need >= total; // top-k with k >= candidates keeps them all (threshold 0)
        }
    }
    else
    {
        need = state->need;
    }
    if (tid == 0) { selDigit = 0u; selNeed = 1ull; }
    __syncthreads();
    if (!keepAll)
    {
#pragma unroll
        for (int i = 0; i < PER; ++i)
        {
            const u64 hv = h[i];
            if (hv > 0 && above < need && need <= above + hv)
            {
                selDigit = (unsigned)(SAMPLING_RADIX_BINS - 1 - PER * tid - i);
                selNeed = need - above;
            }
            above += hv;
        }
    }
    __syncthreads();
    if (tid == 0)
    {
        if (keepAll)
        {
            state->threshold = 0u;
            state->active = 0u;
        }
        else
        {
            const unsigned np = prefix | (selDigit << shift);
            if (pass == 2)
            {
                state->threshold = np;
                state->active = 0u;
            }
            else
            {
                state->prefix = np;
                state->mask = mask | (digitMask << shift);
                state->need = selNeed;
                state->minKey = minKey;
                state->active = 1u;
            }
        }
        state->counter = 0u;
    }
}

// min-p and the draw (grid = numTiles, block = SAMPLING_PREP_THREADS): every block sums the integer weights of
// its tile's kept candidates (key >= state->threshold and exp(d) >= minP) into tileMass; the last block draws
// r uniform in [0, total), finds the tile, then the token by a prefix scan in id order, exactly as CpuSampler.
// Records the token (counts[token]++) and writes it to result (SAMPLING_NO_TOKEN when no candidate was kept).
extern "C" __global__ void __launch_bounds__(SAMPLING_PREP_THREADS) sampling_draw_f32(
    const int* __restrict__ segId,        // [numTiles * TILE] int32
    const unsigned* __restrict__ segKey,  // [numTiles * TILE] uint32
    const float* __restrict__ segW,       // [numTiles * TILE] fp32
    const int* __restrict__ segCount,     // [numTiles] int32
    float minP,                           // 0 = off
    u64 seed, u64 step,
    SamplingState* state,
    u64* tileMass,       // [numTiles] u64 scratch
    int* counts,         // [vocabRows] int32, counts[token]++
    int* result,         // [1] int32
    u64* debugWeights)   // [validVocab] u64, zeroed by the caller, or null: kept candidates' integer weights
{
    kernel_entry_barrier();
    __shared__ u64 scan[32];
    __shared__ int lastFlag;
    __shared__ int selTile;
    __shared__ u64 selBase;
    __shared__ int selToken;
    const int tid = threadIdx.x;
    const unsigned threshold = state->threshold;

    // Each thread owns SAMPLING_ITEMS consecutive slots of the segment (id order within the tile).
    int seg = blockIdx.x * SAMPLING_TILE;
    int cnt = segCount[blockIdx.x];
    u64 q[SAMPLING_ITEMS];
    u64 local = 0;
#pragma unroll
    for (int i = 0; i < SAMPLING_ITEMS; ++i)
    {
        const int j = tid * SAMPLING_ITEMS + i;
        q[i] = 0ull;
        if (j < cnt)
        {
            const float w = segW[seg + j];
            if (segKey[seg + j] >= threshold && w >= minP) q[i] = sampling_weight(w);
        }
        local += q[i];
        if (debugWeights != 0 && q[i] != 0ull) debugWeights[segId[seg + j]] = q[i];
    }
    u64 tileTotal;
    sampling_block_scan<SAMPLING_PREP_THREADS>(local, scan, &tileTotal);
    if (tid == 0) tileMass[blockIdx.x] = tileTotal;
    if (!sampling_last_block(&state->counter, &lastFlag)) return;

    // Last block: r in [0, z), then the tile holding r (numTiles <= 4 * SAMPLING_PREP_THREADS).
    const int nt = gridDim.x;
    const int per = (nt + SAMPLING_PREP_THREADS - 1) / SAMPLING_PREP_THREADS;
    const int t0 = min(nt, tid * per), t1 = min(nt, t0 + per);
    u64 s = 0;
    for (int t = t0; t < t1; ++t) s += __ldcg(&tileMass[t]);
    u64 z;
    const u64 before = sampling_block_scan<SAMPLING_PREP_THREADS>(s, scan, &z);
    const u64 r = __umul64hi(sampling_rand64(seed, step), z); // uniform in [0, z)
    if (tid == 0) { selTile = -1; selBase = 0ull; selToken = -1; }
    __syncthreads();
    if (s > 0 && before <= r && r < before + s)
    {
        u64 acc = before;
        for (int t = t0; t < t1; ++t)
        {
            const u64 m = __ldcg(&tileMass[t]);
            if (r < acc + m) { selTile = t; selBase = acc; break; }
            acc += m;
        }
    }
    __syncthreads();
    const int tile = selTile;
    if (tile >= 0)
    {
        seg = tile * SAMPLING_TILE;
        cnt = segCount[tile];
        local = 0;
#pragma unroll
        for (int i = 0; i < SAMPLING_ITEMS; ++i)
        {
            const int j = tid * SAMPLING_ITEMS + i;
            q[i] = 0ull;
            if (j < cnt)
            {
                const float w = segW[seg + j];
                if (segKey[seg + j] >= threshold && w >= minP) q[i] = sampling_weight(w);
            }
            local += q[i];
        }
        u64 unused;
        const u64 pre = selBase + sampling_block_scan<SAMPLING_PREP_THREADS>(local, scan, &unused);
        if (local > 0 && pre <= r && r < pre + local)
        {
            u64 acc = pre;
#pragma unroll
            for (int i = 0; i < SAMPLING_ITEMS; ++i)
            {
                acc += q[i];
                if (acc > r) { selToken = segId[seg + tid * SAMPLING_ITEMS + i]; break; }
            }
        }
    }
    __syncthreads();
    if (tid == 0)
    {
        // selToken < 0 only when nothing was kept (z = 0: no candidate, M = -inf); with any candidate z >= 2^40
        // (the top token's weight) and r < z finds one.
        result[0] = selToken >= 0 ? selToken : SAMPLING_NO_TOKEN;
        if (selToken >= 0) counts[selToken] += 1;
        state->counter = 0u;
    }
}

// counts[tokens[i]]++ for each i (seeding penalties, e.g. with the prompt). Ids outside [0, vocabRows) ignored.
extern "C" __global__ void sampling_record_i32(const int* __restrict__ tokens, int n, int* counts, int vocabRows)
{
    kernel_entry_barrier();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
    {
        const int t = tokens[i];
        if (t >= 0 && t < vocabRows) atomicAdd(&counts[t], 1);
    }
}

// p[i] = 0 for i < n (u32 words); stream-ordered reset of counts / debug buffers.
extern "C" __global__ void sampling_zero_u32(unsigned* p, int n)
{
    kernel_entry_barrier();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = 0u;
}

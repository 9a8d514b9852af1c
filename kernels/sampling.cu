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
//   sampling_select_f32    1 block of 1024: concatenates the tiles' candidates in id order, top-k and top-p
//                          thresholds by radix select on the float keys, min-p cut, then the draw by a prefix
//                          scan in id order; records the token (counts[token]++) and writes it to `result`.
//
// Exactness contract with the C# reference (QwQ.Cuda.Sampling.CpuSampler / SamplingMath): every float op is
// spelled out with an explicit rounding intrinsic (no FMA contraction surprises), exp is our own polynomial,
// and all probability mass is integer: q = floor(exp(d) * 2^40) as uint64, so sums are order independent and the
// GPU and the CPU produce bit-identical weights, thresholds and tokens for the same (seed, step).
// Build: nvcc -ccbin clang-14 -ptx -arch=compute_80 -O3 -std=c++17 kernels/sampling.cu -o kernels/ptx/sampling.ptx
// (never with --use_fast_math: it would change the rounding of the divisions).

#define SAMPLING_TILE 1024        // logits per tile of prepare/compact
#define SAMPLING_PREP_THREADS 256 // 4 logits per thread
#define SAMPLING_ITEMS 4
#define SAMPLING_SELECT_THREADS 1024
#define SAMPLING_RADIX_BINS 2048  // 11-bit digits: passes of 11, 11, 10 bits

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

// Greedy: token = argmax (lowest id on ties); counts[token]++; result[0] = token. 1 block of 1024.
extern "C" __global__ void __launch_bounds__(SAMPLING_SELECT_THREADS) sampling_argmax_f32(
    const float* __restrict__ blockMax, const int* __restrict__ blockArg, int numBlocks,
    int* counts,  // [vocabRows] int32
    int* result)  // [1] int32
{
    __shared__ float sv[32];
    __shared__ int si[32];
    float best = -INFINITY;
    int bestId = 0x7fffffff;
    for (int b = threadIdx.x; b < numBlocks; b += SAMPLING_SELECT_THREADS)
        if (sampling_better(blockMax[b], blockArg[b], best, bestId)) { best = blockMax[b]; bestId = blockArg[b]; }
    sampling_block_argmax<SAMPLING_SELECT_THREADS>(best, bestId, sv, si);
    if (threadIdx.x == 0)
    {
        result[0] = bestId;
        counts[bestId] += 1;
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
    int* __restrict__ segCount)     // [gridDim.x] int32
{
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
        d[j] = v < validVocab ? sampling_delta(x[j], m) : -INFINITY;
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

// Largest key t (a key present among the filtered candidates) such that the weight of {key >= t} reaches
// `need`, over candidates with key >= minKey. Weight: 1 per candidate (top-k: t = the need-th largest key),
// or its integer probability mass (top-p). Requires 1 <= need <= total filtered weight.
__device__ unsigned sampling_radix_select(
    const unsigned* key, const float* w, int n, unsigned minKey, u64 need, bool byMass,
    u64* hist, u64* scan, unsigned* selDigit, u64* selNeed)
{
    const int tid = threadIdx.x;
    unsigned prefix = 0, mask = 0;
#pragma unroll
    for (int pass = 0; pass < 3; ++pass)
    {
        const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
        const int nb = pass == 2 ? 1024 : 2048;
        for (int b = tid; b < SAMPLING_RADIX_BINS; b += SAMPLING_SELECT_THREADS) hist[b] = 0ull;
        __syncthreads();
        for (int i = tid; i < n; i += SAMPLING_SELECT_THREADS)
        {
            const unsigned k = key[i];
            if (k >= minKey && (k & mask) == prefix)
            {
                const u64 wt = byMass ? sampling_weight(w[i]) : 1ull;
                if (wt) atomicAdd(&hist[(k >> shift) & (unsigned)(nb - 1)], wt);
            }
        }
        __syncthreads();
        // Thread t looks at bins nb-1-2t and nb-2-2t: a block scan in descending bin order.
        const int b0 = nb - 1 - 2 * tid, b1 = nb - 2 - 2 * tid;
        const u64 h0 = b0 >= 0 ? hist[b0] : 0ull;
        const u64 h1 = b1 >= 0 ? hist[b1] : 0ull;
        u64 total;
        const u64 above = sampling_block_scan<SAMPLING_SELECT_THREADS>(h0 + h1, scan, &total);
        if (h0 > 0 && above < need && need <= above + h0) { *selDigit = (unsigned)b0; *selNeed = need - above; }
        else if (h1 > 0 && above + h0 < need && need <= above + h0 + h1) { *selDigit = (unsigned)b1; *selNeed = need - above - h0; }
        __syncthreads();
        prefix |= *selDigit << shift;
        mask |= (unsigned)(nb - 1) << shift;
        need = *selNeed;
        __syncthreads();
    }
    return prefix;
}

// The rest of the pipeline on the candidates; 1 block of SAMPLING_SELECT_THREADS.
// dense* are scratch (not restrict/const: written then read in this kernel).
extern "C" __global__ void __launch_bounds__(SAMPLING_SELECT_THREADS) sampling_select_f32(
    const int* __restrict__ segId, const unsigned* __restrict__ segKey, const float* __restrict__ segW,
    const int* __restrict__ segCount, int numBlocks,  // numBlocks <= SAMPLING_SELECT_THREADS
    int* denseId,        // [validVocab] int32 scratch
    unsigned* denseKey,  // [validVocab] uint32 scratch
    float* denseW,       // [validVocab] fp32 scratch
    int topK,            // 0 = off
    float topP,          // 1 = off
    float minP,          // 0 = off
    u64 seed, u64 step,
    int* counts,         // [vocabRows] int32, counts[token]++
    int* result,         // [1] int32
    u64* debugWeights)   // [validVocab] u64, zeroed by the caller, or null: kept candidates' integer weights
{
    __shared__ u64 hist[SAMPLING_RADIX_BINS];
    __shared__ u64 scan[32];
    __shared__ int segOff[SAMPLING_SELECT_THREADS + 1];
    __shared__ unsigned selDigit;
    __shared__ u64 selNeed;
    __shared__ int selToken;
    const int tid = threadIdx.x;

    // 1. Concatenate the tiles' candidate segments (id order is preserved).
    u64 total;
    const int c = tid < numBlocks ? segCount[tid] : 0;
    const int off = (int)sampling_block_scan<SAMPLING_SELECT_THREADS>((u64)c, scan, &total);
    segOff[tid] = off;
    if (tid == 0) { segOff[SAMPLING_SELECT_THREADS] = (int)total; selToken = -1; }
    __syncthreads();
    const int n = (int)total;
    for (int j = tid; j < n; j += SAMPLING_SELECT_THREADS)
    {
        int lo = 0, hi = numBlocks - 1; // last segment with segOff <= j
        while (lo < hi)
        {
            const int mid = (lo + hi + 1) >> 1;
            if (segOff[mid] <= j) lo = mid; else hi = mid - 1;
        }
        const int src = lo * SAMPLING_TILE + (j - segOff[lo]);
        denseId[j] = segId[src];
        denseKey[j] = segKey[src];
        denseW[j] = segW[src];
    }
    __syncthreads();

    // 2. top-k: keep keys >= the k-th largest (ties at the threshold all kept, as HF).
    unsigned threshold = 0;
    if (topK > 0 && topK < n)
        threshold = sampling_radix_select(denseKey, denseW, n, 0u, (u64)topK, false, hist, scan, &selDigit, &selNeed);

    // 3. top-p: largest threshold whose kept mass is >= ceil(topP * mass of the top-k survivors).
    if (topP < 1.0f)
    {
        u64 part = 0;
        for (int i = tid; i < n; i += SAMPLING_SELECT_THREADS)
            if (denseKey[i] >= threshold) part += sampling_weight(denseW[i]);
        u64 mass;
        sampling_block_scan<SAMPLING_SELECT_THREADS>(part, scan, &mass);
        u64 target = sampling_ceil_mul(topP, mass);
        if (target > mass) target = mass;
        if (target < 1) target = 1;
        threshold = sampling_radix_select(denseKey, denseW, n, threshold, target, true, hist, scan, &selDigit, &selNeed);
    }

    // 4. min-p (w = p / p_max) and the draw: prefix scan of the kept weights in id order over contiguous chunks.
    const int chunk = (n + SAMPLING_SELECT_THREADS - 1) / SAMPLING_SELECT_THREADS;
    const int lo = min(n, tid * chunk), hi = min(n, lo + chunk);
    u64 local = 0;
    for (int i = lo; i < hi; ++i)
        if (denseKey[i] >= threshold && denseW[i] >= minP) local += sampling_weight(denseW[i]);
    u64 z;
    const u64 before = sampling_block_scan<SAMPLING_SELECT_THREADS>(local, scan, &z);
    const u64 r = __umul64hi(sampling_rand64(seed, step), z); // uniform in [0, z)
    if (local > 0 && before <= r && r < before + local)
    {
        u64 acc = before;
        for (int i = lo; i < hi; ++i)
        {
            if (denseKey[i] >= threshold && denseW[i] >= minP)
            {
                acc += sampling_weight(denseW[i]);
                if (acc > r) { selToken = denseId[i]; break; }
            }
        }
    }
    if (debugWeights != 0)
        for (int i = lo; i < hi; ++i)
            if (denseKey[i] >= threshold && denseW[i] >= minP) debugWeights[denseId[i]] = sampling_weight(denseW[i]);
    __syncthreads();
    if (tid == 0)
    {
        const int token = selToken >= 0 ? selToken : (n > 0 ? denseId[0] : 0); // unreachable fallback: z >= 2^40
        result[0] = token;
        counts[token] += 1;
    }
}

// counts[tokens[i]]++ for each i (seeding penalties, e.g. with the prompt). Ids outside [0, vocabRows) ignored.
extern "C" __global__ void sampling_record_i32(const int* __restrict__ tokens, int n, int* counts, int vocabRows)
{
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
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = 0u;
}

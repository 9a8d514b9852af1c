// What the GEMV micro-benchmarks (fp8_gemv.cu, int4_gemv.cu, tc_gemv.cu) share: the error check on every CUDA call, a hash for
// filling device memory with random bits, the launch timer, the output comparison, device copies and the split-k
// workspace, random e4m3 codes and bf16 inputs, the weight copies' layout, the split sweep. Include after <cstdio>,
// <cstdlib>, <cstring>, <cmath>, <algorithm> and <vector>.
#pragma once

#include <tuple>

#define CK(call)                                                                                         \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess) {                                                                         \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #call); \
            exit(1);                                                                                     \
        }                                                                                                \
    } while (0)

__host__ __device__ __forceinline__ uint32_t hash32(uint32_t v) {
    v ^= v >> 16; v *= 0x7feb352du; v ^= v >> 15; v *= 0x846ca68bu; v ^= v >> 16;
    return v;
}

// Times launch(c) for c = 0 .. copies - 1 (one copy of the weights each, so the bytes come from DRAM): the minimum
// over 3 timed passes, after one untimed, of the mean time per launch, in µs. Checks the launches' errors.
struct LaunchTimer {
    cudaEvent_t a, b;
    LaunchTimer() { CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); }
    template <class Launch>
    float best_us(int copies, Launch&& launch) {
        float best = 1e30f;
        for (int it = 0; it < 4; ++it) {
            CK(cudaEventRecord(a));
            for (int c = 0; c < copies; ++c) launch(c);
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms; CK(cudaEventElapsedTime(&ms, a, b));
            if (it > 0) best = std::min(best, ms * 1000.f / copies);
        }
        CK(cudaGetLastError());
        return best;
    }
};

// max |got - ref| / max |ref| over count outputs; infinite if any output is not finite (the benchmarks poison y
// with NaN before a checked launch, so an unwritten output fails).
inline double relative_max_error(const float* got, const float* ref, size_t count) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < count; ++i) {
        if (!std::isfinite(got[i])) return (double)INFINITY;
        md = std::max(md, (double)std::fabs(got[i] - ref[i]));
        mr = std::max(mr, (double)std::fabs(ref[i]));
    }
    return mr > 0 ? md / mr : md;
}

// A device copy of a host vector.
template <class T>
T* device_copy(const std::vector<T>& host) {
    T* d;
    CK(cudaMalloc(&d, host.size() * sizeof(T)));
    CK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

// The split-k workspace of the GEMVs (kernels/gemv_tc.cu's layout): tickets, then the partial sums, zeroed once (every
// launch leaves them zero).
struct SplitWorkspace {
    int* tickets;
    float* part;
    SplitWorkspace(long ticketBytes, long partBytes) {
        uint8_t* ws;
        CK(cudaMalloc(&ws, ticketBytes + partBytes));
        CK(cudaMemset(ws, 0, ticketBytes + partBytes));
        tickets = (int*)ws;
        part = (float*)(ws + ticketBytes);
    }
};

// Random e4m3 codes, 4 per word; the NaN codes (0x7F, 0xFF) become 0x7E / 0xFE (±448).
__global__ void fill_e4m3_codes(uint32_t* p, long long words, uint32_t seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < words; i += (long long)gridDim.x * blockDim.x) {
        uint32_t v = hash32((uint32_t)i * 2654435761u ^ hash32(seed + (uint32_t)(i >> 32)));
#pragma unroll
        for (int b = 0; b < 4; ++b)
            if (((v >> (8 * b)) & 0x7F) == 0x7F) v &= ~(1u << (8 * b));
        p[i] = v;
    }
}

// Host draws with a fixed seed (an LCG: the same inputs on every run).
struct HostRandom {
    uint32_t state = 987654321u;
    float uniform() {  // [0, 1)
        state = state * 1664525u + 1013904223u;
        return (state >> 8) * (1.0f / 16777216.0f);
    }
    // count bf16 bit patterns uniform in [lo, hi), rounded to nearest even
    std::vector<uint16_t> bf16(size_t count, float lo, float hi) {
        std::vector<uint16_t> out(count);
        for (auto& v : out) {
            const float f = lo + (hi - lo) * uniform();
            uint32_t b; memcpy(&b, &f, 4);
            v = (uint16_t)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
        }
        return out;
    }
};

// Copies of one weight at a 4 KB stride, enough (8..32) that >= ~400 MB lie between two reads of one copy: L2 (50-60
// MB) never serves a timed read.
inline size_t copy_stride(size_t bytes) { return (bytes + 4095) & ~(size_t)4095; }
inline int copies_for(size_t stride) { return (int)std::min<size_t>(32, std::max<size_t>(8, (size_t)(400e6 / stride) + 1)); }

// One candidate over its split counts: the best time, the worst error, every split's time.
struct Sweep {
    float best = 1e30f;
    int split = 0;
    double worst = 0;
    char timings[512] = {};
    int used = 0;
    void add(int sp, float us, double err) {
        worst = std::max(worst, err);
        used += snprintf(timings + used, sizeof timings - used, " %d:%.1f", sp, us);
        if (us < best) { best = us; split = sp; }
    }
    // The benchmarks' bound: fp32 sums in another order. Tensor-core fp32 accumulation does not round to nearest, so over
    // the 27,648 inputs of down a different split order moves max|y - ref| / max|ref| to ~3e-5 (tc_gemv.cu, H200).
    bool ok() const { return split != 0 && worst <= 1e-4; }
    void print(const char* name, double bytes) const {
        printf("  %-16s best %6.1f us %4.2f TB/s s%-2d %s err %.1e |%s\n", name, best, bytes / best / 1e6, split,
               ok() ? "PASS" : "FAIL", worst, timings);
    }
};

// A product shape: n output rows, k inputs. QwQ-32B's four on one GPU:
struct Shape { int n, k; const char* name; };
static const Shape kQwqShapes[] = {{7168, 5120, "qkv"}, {5120, 5120, "o"}, {55296, 5120, "gate_up"}, {5120, 27648, "down"}};

// Prints the device and returns its multiprocessor count.
inline int print_device() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    return prop.multiProcessorCount;
}

// Whether `splits` k splits fit the kernels' rules and the workspace: splits fall on multiples of `granule` inputs
// (a chunk or a scale group), one int ticket per 16-row tile, `floats` partial sums per (tile, split).
inline bool splits_fit(int n, int k, int splits, int granule, long floats, long ticketBytes, long partBytes) {
    const long tiles = (n + 15) / 16;
    if (splits == 1) return true;
    return splits <= k / granule && tiles * 4 <= ticketBytes && tiles * splits * floats * 4 <= partBytes;
}

// The pool that holds `copies_of(s)` copies at `stride_of(s)` of the largest shape, and the largest n and k.
template <class StrideOf, class CopiesOf, size_t N>
size_t pool_bytes(const Shape (&shapes)[N], StrideOf stride_of, CopiesOf copies_of, int& maxN, int& maxK) {
    size_t bytes = 0;
    maxN = maxK = 0;
    for (auto& s : shapes) {
        bytes = std::max(bytes, stride_of(s) * copies_of(s));
        maxN = std::max(maxN, s.n);
        maxK = std::max(maxK, s.k);
    }
    return bytes;
}

// The inputs, outputs and workspace of one GEMV benchmark over up to `rows` rows of x: fp8 scales (if asked: drawn
// first, U(0.5, 1.5) / 448), x U(-2, 2) in bf16 [rows, maxK], y and the reference output [rows, maxN] fp32, the split
// workspace, and the roofline read's sink.
struct GemvBuffers {
    const float* scale = nullptr;
    const __nv_bfloat16* x;
    float *y, *yref;
    SplitWorkspace ws;
    uint32_t* dummy;
    std::vector<float> href, hv;
    GemvBuffers(int rows, int maxN, int maxK, bool fp8Scales, long ticketBytes, long partBytes, HostRandom& rng)
        : ws(ticketBytes, partBytes), href((size_t)rows * maxN), hv((size_t)rows * maxN) {
        if (fp8Scales) {
            std::vector<float> hs(maxN);
            for (auto& v : hs) v = (0.5f + rng.uniform()) / 448.0f;
            scale = device_copy(hs);
        }
        x = (const __nv_bfloat16*)device_copy(rng.bf16((size_t)rows * maxK, -2.0f, 2.0f));
        CK(cudaMalloc(&y, (size_t)rows * maxN * 4));
        CK(cudaMalloc(&yref, (size_t)rows * maxN * 4));
        CK(cudaMalloc(&dummy, 4));
    }
    // What the kernels take, by name: std::tie(scale, x, y, yref, part, tickets) = io.views();
    auto views() const { return std::make_tuple(scale, x, y, yref, ws.part, ws.tickets); }
    // yref (m rows of n, just written by the reference launch) to the host
    void take_reference(int m, int n) {
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(href.data(), yref, (size_t)m * n * 4, cudaMemcpyDeviceToHost));
    }
    // y := NaN, so that an output the next launch leaves unwritten fails check
    void poison(int m, int n) { CK(cudaMemset(y, 0xFF, (size_t)m * n * 4)); }
    // relative_max_error of y against the reference, m rows of n
    double check(int m, int n) {
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(hv.data(), y, (size_t)m * n * 4, cudaMemcpyDeviceToHost));
        return relative_max_error(hv.data(), href.data(), (size_t)m * n);
    }
};

// One shape and row count: the current kernel's best time and split, and the fastest candidate that passed its check.
struct Outcome {
    float cur = 1e30f, var = 1e30f;
    int curSplit = 0, varSplit = 0;
    const char* varName = "";
    void take(const char* name, const Sweep& sw, bool isCurrent) {
        if (isCurrent) { cur = sw.best; curSplit = sw.split; }
        else if (sw.ok() && sw.best < var) { var = sw.best; varSplit = sw.split; varName = name; }
    }
};

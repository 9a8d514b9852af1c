// What the GEMV micro-benchmarks (fp8_gemv.cu, int4_gemv.cu) share: the error check on every CUDA call, a hash for
// filling device memory with random bits, the launch timer, the output comparison, device copies and the split-k
// workspace. Include after <cstdio>, <cstdlib>, <cmath>, <algorithm> and <vector>.
#pragma once

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

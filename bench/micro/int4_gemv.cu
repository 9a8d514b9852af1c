// Micro-benchmark of the int4 GEMV (kernels/gemv_int4.cu) at QwQ-32B's four product shapes and 1/8/32 rows, against a
// plain 16-byte streaming read of the same bytes; each candidate cycles over 8 copies so the bytes come from DRAM.
// Not part of the build. On the GPU machine: nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/int4bench bench/micro/int4_gemv.cu && /tmp/int4bench
// Output of one run: bench/results/2026-11-27-NVIDIA-H100-80GB-HBM3-2ae4938-int4-gemv-micro.txt.
#include <cstdio>
#include <vector>
#include "../../kernels/gemv_int4.cu"
#include "stream_read.cuh"

template <int NB, int U, int MINB>
__global__ void __launch_bounds__(128, MINB) var_k(const uint8_t* w, const uint32_t* sz, const __nv_bfloat16* x, float* y,
                                                   float* part, int* tickets, int n, int k, int m, int cpg, int acc) {
    gemv_int4_body<NB, U, 2>(w, sz, x, y, part, tickets, n, k, m, acc);
}

typedef void (*KFn)(const uint8_t*, const uint32_t*, const __nv_bfloat16*, float*, float*, int*, int, int, int, int, int);

int main() {
    struct Shape { int n, k; const char* name; } shapes[] = {{7168, 5120, "qkv"}, {5120, 5120, "o"}, {55296, 5120, "gate_up"}, {5120, 27648, "down"}};
    const int copies = 8;
    size_t maxBytes = 0;
    for (auto& s : shapes) maxBytes = std::max(maxBytes, (size_t)s.n * s.k / 2 + (size_t)s.k / 128 * s.n * 4);
    uint8_t* w; cudaMalloc(&w, maxBytes * copies);
    cudaMemset(w, 0x37, maxBytes * copies);
    __nv_bfloat16* x; cudaMalloc(&x, 32 * 27648 * 2); cudaMemset(x, 0, 32 * 27648 * 2);
    float* y; cudaMalloc(&y, 32 * 55296 * 4);
    float* part; cudaMalloc(&part, 32 << 20); int* tickets = (int*)part; cudaMemset(part, 0, 32 << 20);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    uint32_t* dummy; cudaMalloc(&dummy, 4);
    // read roofline over the same bytes
    for (auto& s : shapes) {
        size_t bytes = (size_t)s.n * s.k / 2 + (size_t)s.k / 128 * s.n * 4;
        for (int it = 0; it < 3; ++it) {
            cudaEventRecord(a);
            for (int c = 0; c < copies; ++c) read_k<<<132 * 8, 256>>>((const uint4*)(w + c * maxBytes), bytes / 16, dummy);
            cudaEventRecord(b); cudaEventSynchronize(b);
            float ms; cudaEventElapsedTime(&ms, a, b);
            if (it == 2) printf("read %-8s %7.1f us  %6.0f GB/s\n", s.name, ms * 1000 / copies, bytes * copies / ms / 1e6);
        }
    }
    struct Var { const char* name; KFn fn; int nb; } vars[] = {
        {"n8 u8 b4", var_k<1, 8, 4>, 1}, {"n8 u16 b3", var_k<1, 16, 3>, 1}, {"n8 u16 b4", var_k<1, 16, 4>, 1},
        {"n8 u4 b8", var_k<1, 4, 8>, 1}, {"n8 u8 b6", var_k<1, 8, 6>, 1}, {"n32 u4 b4", var_k<4, 4, 4>, 4}};
    int ms_[] = {1, 8, 32};
    for (int m : ms_)
    for (auto& s : shapes) {
        size_t bytes = (size_t)s.n * s.k / 2 + (size_t)s.k / 128 * s.n * 4;
        for (auto& v : vars) {
            if ((m == 32) != (v.nb == 4)) continue;
            float best = 1e9; int bestSplit = 0;
            for (int splits : {1, 2, 3, 4, 5, 6, 8, 10, 12, 16}) {
                if (splits > s.k / 128) continue;
                long tiles = (s.n + 15) / 16;
                if (splits > 1 && tiles * splits * 128L * 4 > (32 << 20) - (64 << 10)) continue;
                dim3 grid((s.n + 63) / 64, splits);
                float ms = 0;
                for (int it = 0; it < 3; ++it) {
                    cudaEventRecord(a);
                    for (int c = 0; c < copies; ++c) {
                        const uint8_t* wc = w + c * maxBytes;
                        v.fn<<<grid, 128>>>(wc, (const uint32_t*)(wc + (size_t)s.n * s.k / 2), x, y, part + (64 << 10) / 4, tickets, s.n, s.k, m, 2, 0);
                    }
                    cudaEventRecord(b); cudaEventSynchronize(b);
                    cudaEventElapsedTime(&ms, a, b);
                }
                if (ms < best) { best = ms; bestSplit = splits; }
            }
            cudaError_t e = cudaGetLastError();
            printf("m=%d %-8s %-10s best %7.1f us  %6.0f GB/s  splits %d %s\n", m, s.name, v.name, best * 1000 / copies,
                   bytes * copies / best / 1e6, bestSplit, e ? cudaGetErrorString(e) : "");
        }
    }
    return 0;
}

// Micro-benchmark of the fp8 tensor-core GEMV on wgmma (kernels/sm90a/gemv_tc_sm90a.cu says why) at 16 and 32 rows of
// x, in several plans of its template, against the engine's fp16-route builds (gemv_tc.cu's gemv_tc_fp8h_n16 / n32 / n32_wide, instantiated through
// gemv_tc_v2.cuh), at QwQ-32B's four product shapes, and a plain streaming read of the same bytes. Same inputs,
// copies and checks as tc_gemv.cu: every output is checked against the bf16-route kernel at 1 split (PASS when
// max|y - ref| / max|ref| <= 1e-4, y poisoned with NaN before each checked launch). Not part of the build. On the GPU
// machine (sm_90a: wgmma):
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/wg bench/micro/wg_gemv.cu && /tmp/wg
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../../kernels/gemv_tc.cu"
#include "gemv_tc_v2.cuh"
#include "../../kernels/sm90a/gemv_tc_sm90a.cu"
#include "harness.cuh"
#include "stream_read.cuh"

typedef void (*CurFn)(const void*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int, int);
typedef void (*TcFn)(const void*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int);
typedef void (*WgFn)(const void*, const float*, const __half*, const float*, float*, float*, int*, int, int, int, int);

// A plan of the sm_90a kernel: NB batch tiles, D weight chunks in flight a warp, ST x stages, MINB blocks an SM.
template <int NB, int D, int ST, int MINB>
__global__ void __launch_bounds__(128, MINB)
wg_plan(const void* w, const float* scale, const __half* xh, const float* xscale, float* y, float* part, int* tickets,
        int n, int k, int m, int accumulate) {
    gemv_tc_sm90a::gemv_body<NB, D, ST>(w, scale, xh, xscale, y, part, tickets, n, k, m, accumulate);
}

// tiles: 16-row tiles a block (the grid's x is ceil(tiles of n / tiles)); tc: an engine fp16 build (x f16), else wg:
// a wgmma plan (x from gemv_tc_x_to_f16_wg)
struct Var { const char* name; TcFn tc; WgFn wg; int tiles; };
#define H(NAME, NB, U, MT, MINB, DB) Var{NAME, tcv2::gemv_tc_v2<true, NB, U, MT, MINB, DB, true>, nullptr, 4 * MT}
#define W(NAME, NB, D, ST, MINB) Var{NAME, nullptr, wg_plan<NB, D, ST, MINB>, 4}
static const Var kVars16[] = {
    H("eng-f16-n16",   2, 8, 1, 4, false),  // gemv_tc_fp8h_n16
    W("wg-d2-s3-b6",   2, 2, 3, 6),     // gemv_tc_fp8wg_n16
    W("wg-d4-s4-b4",   2, 4, 4, 4),
};
static const Var kVars32[] = {
    H("eng-f16-n32",   4, 2, 1, 4, true),   // gemv_tc_fp8h_n32
    H("eng-f16-wide",  4, 1, 4, 2, false),  // gemv_tc_fp8h_n32_wide
    W("wg-d2-s4-b4",   4, 2, 4, 4),     // gemv_tc_fp8wg_n32
    W("wg-d4-s4-b4",   4, 4, 4, 4),     // gemv_tc_fp8wg_n32_deep
    W("wg-d2-s4-b6",   4, 2, 4, 6),
};
#undef H
#undef W

__global__ void bf16_to_f16(const __nv_bfloat16* __restrict__ a, __half* __restrict__ b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        b[i] = __float2half_rn(__bfloat162float(a[i]));
}

static const int kSplits[] = {1, 2, 3, 4, 6, 8, 12, 16};
static const long kTicketBytes = 64 << 10, kPartBytes = 64 << 20;

static bool fits(int n, int k, int nb, int splits) { return splits_fit(n, k, splits, 64, 128L * nb, kTicketBytes, kPartBytes); }

// argv[1] (optional): run only the shape of that name (for ncu).
int main(int argc, char** argv) {
    const int sms = print_device();
    const auto& shapes = kQwqShapes;
    auto stride_of = [](const Shape& s) { return copy_stride((size_t)s.n * s.k); };
    auto copies_of = [&](const Shape& s) { return copies_for(stride_of(s)); };
    int maxN, maxK;
    const size_t poolBytes = pool_bytes(shapes, stride_of, copies_of, maxN, maxK);
    uint8_t* pool;
    CK(cudaMalloc(&pool, poolBytes));
    fill_e4m3_codes<<<sms * 8, 256>>>((uint32_t*)pool, (long long)(poolBytes / 4), 12345u);
    CK(cudaGetLastError());

    HostRandom rng;
    GemvBuffers io(32, maxN, maxK, true, kTicketBytes, kPartBytes, rng);
    const float* scale; const __nv_bfloat16* x; float *y, *yref, *part; int* tickets;
    std::tie(scale, x, y, yref, part, tickets) = io.views();
    LaunchTimer timer;
    // x as f16 (U(-2, 2) in bf16: exact in f16) for the engine's fp16 route, and in the wgmma order with its row
    // scales (all 1 here) from the engine's conversion
    __half *x16, *xp;
    float* xs;
    CK(cudaMalloc(&x16, (size_t)32 * maxK * 2));
    CK(cudaMalloc(&xp, (size_t)32 * maxK * 2));
    CK(cudaMalloc(&xs, 32 * 4));
    bf16_to_f16<<<256, 256>>>(x, x16, 32L * maxK);
    CK(cudaGetLastError());

    int fails = 0;
    struct Best { const Shape* s; int m; float read; Outcome o; };
    std::vector<Best> summary;
    for (auto& s : shapes) {
        if (argc > 1 && strcmp(argv[1], s.name) != 0) continue;
        const size_t stride = stride_of(s), bytes = (size_t)s.n * s.k + (size_t)s.n * 4;
        const int copies = copies_of(s), tiles = (s.n + 15) / 16;
        auto wOf = [&](int c) { return (const void*)(pool + c * stride); };
        gemv_tc_x_to_f16_wg<<<32, kXToF16Threads>>>(x, xp, xs, s.k);
        CK(cudaGetLastError());
        const float read = timer.best_us(copies, [&](int c) {
            read_k<<<sms * 8, 256>>>((const uint4*)(pool + c * stride), (long long)((size_t)s.n * s.k / 16), io.dummy);
        });
        printf("\nread %-8s %8.1f us  %5.2f TB/s  (%.1f MB of weights, %d copies)\n", s.name, read, (double)s.n * s.k / read / 1e6,
               (double)s.n * s.k / 1e6, copies);

        for (int m : {16, 32}) {
            const int nb = m / 8;
            const CurFn cur = m == 16 ? gemv_tc_fp8_n16 : gemv_tc_fp8_n32;
            printf("== m=%d %s [%d x %d]\n", m, s.name, s.n, s.k);
            CK(cudaMemset(tickets, 0, kTicketBytes));
            cur<<<dim3((s.n + 63) / 64, 1), 128>>>(wOf(0), scale, x, yref, part, tickets, s.n, s.k, m, 0);
            io.take_reference(m, s.n);

            Best b{&s, m, read, {}};
            const Var* vars = m == 16 ? kVars16 : kVars32;
            const int count = m == 16 ? (int)(sizeof kVars16 / sizeof *kVars16) : (int)(sizeof kVars32 / sizeof *kVars32);
            for (int i = 0; i < count; ++i) {
                const Var& v = vars[i];
                Sweep sw;
                for (int sp : kSplits) {
                    if (!fits(s.n, s.k, nb, sp)) continue;
                    const dim3 grid((tiles + v.tiles - 1) / v.tiles, sp);
                    auto launch = [&](const void* wc) {
                        if (v.tc) v.tc<<<grid, 128>>>(wc, scale, reinterpret_cast<const __nv_bfloat16*>(x16), y, part, tickets, s.n, s.k, m);
                        else v.wg<<<grid, 128>>>(wc, scale, xp, xs, y, part, tickets, s.n, s.k, m, 0);
                    };
                    CK(cudaMemset(tickets, 0, kTicketBytes));
                    const float us = timer.best_us(copies, [&](int c) { launch(wOf(c)); });
                    io.poison(m, s.n);
                    launch(wOf(0));
                    sw.add(sp, us, io.check(m, s.n));
                }
                if (!sw.ok()) ++fails;
                sw.print(v.name, bytes);
                // "current" = the engine's fastest fp16 build
                if (v.tc && sw.best < b.o.cur) b.o.take(v.name, sw, true);
                else if (!v.tc) b.o.take(v.name, sw, false);
            }
            summary.push_back(b);
        }
    }

    printf("\n== summary (TB/s of weights + scales; read = streaming read of the weights; engine = its fastest fp16 build)\n");
    printf("%-8s %2s  %16s  %16s  %26s  %6s\n", "shape", "m", "read", "engine (split)", "best passing wgmma (split)", "gain");
    for (auto& b : summary) {
        const double bytes = (double)b.s->n * b.s->k + (double)b.s->n * 4;
        printf("%-8s %2d  %6.1f us %4.2f  %6.1f us %4.2f (%2d)  %-12s %6.1f us %4.2f (%2d)  %5.1f%%\n", b.s->name, b.m,
               b.read, (double)b.s->n * b.s->k / b.read / 1e6, b.o.cur, bytes / b.o.cur / 1e6, b.o.curSplit, b.o.varName, b.o.var,
               bytes / b.o.var / 1e6, b.o.varSplit, 100.0 * (b.o.cur / b.o.var - 1));
    }
    printf("\n%s: %d check(s) failed\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}

// Micro-benchmark of the tensor-core GEMV over FP8 weights at 16 and 32 rows of x (kernels/gemv_tc.cu,
// gemv_tc_fp8_n16 / n32) and of the candidates in gemv_tc_v2.cuh (a warp owning MT tiles, so each x fragment it loads
// serves MT tiles; why is explained there) at QwQ-32B's four product shapes (one GPU), against a plain 16-byte
// streaming read of the same bytes. Each candidate cycles over >= 8 copies of the weights (>= ~400 MB between two reads
// of one copy) so the bytes come from DRAM. Inputs are random: every finite e4m3 code, per-row scales in
// [0.5, 1.5) / 448, bf16 x in [-2, 2). Every candidate's output is CHECKED against the current kernel at 1 split:
// PASS when max|y - ref| / max|ref| <= 1e-4 (harness.cuh says why) (y poisoned with NaN before each checked launch).
// With -DQWQ_WGMMA (and the arch-specific target) also plans of the Hopper warpgroup build (kernels/sm90a/
// gemv_tc_sm90a.cu: "wg-*" rows, x converted by the engine's gemv_tc_x_to_f16_wg; "wgb-*" rows, the BF16X builds
// reading bf16 x as it is, so they do not pay the conversion the "wg-*" rows leave out of their time).
// Not part of the build. On the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/tcbench bench/micro/tc_gemv.cu && /tmp/tcbench
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -DQWQ_WGMMA -o /tmp/tcbench bench/micro/tc_gemv.cu && /tmp/tcbench
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../../kernels/gemv_tc.cu"
#include "gemv_tc_v2.cuh"
#ifdef QWQ_WGMMA
#include "../../kernels/sm90a/gemv_tc_sm90a.cu"
#endif
#include "harness.cuh"
#include "stream_read.cuh"

typedef void (*CurFn)(const void*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int, int);
typedef void (*VarFn)(const void*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int);
typedef void (*WgFn)(const void*, const float*, const __half*, const float*, float*, float*, int*, int, int, int, int);

// wg: a warpgroup plan (fn unused): x from gemv_tc_x_to_f16_wg, 64 rows a block like MT = 1; wgb: a BF16X warpgroup
// plan (fn's signature, bf16 x as it is), 64 rows a block
struct Var { const char* name; VarFn fn; int mt; bool f16 = false; WgFn wg = nullptr; bool wgb = false; };
#define V(NAME, NB, U, MT, MINB, DB) Var{NAME, tcv2::gemv_tc_v2<true, NB, U, MT, MINB, DB>, MT}
#define H(NAME, NB, U, MT, MINB, DB) Var{NAME, tcv2::gemv_tc_v2<true, NB, U, MT, MINB, DB, true>, MT, true}
#define A(NAME, NB, STAGES, MINB) Var{NAME, tcv2::gemv_tc_async<NB, STAGES, MINB>, 1}  // the cp.async ring (rejected 2026-11-28): rows to re-run it
#ifdef QWQ_WGMMA
// A plan of the sm_90a build: NB batch tiles, D weight chunks in flight a warp, ST x stages, MINB blocks an SM.
template <int NB, int D, int ST, int MINB>
__global__ void __launch_bounds__(128, MINB)
wg_plan(const void* w, const float* scale, const __half* xh, const float* xscale, float* y, float* part, int* tickets,
        int n, int k, int m, int accumulate) {
    gemv_tc_sm90a::gemv_body<NB, D, ST>(w, scale, xh, xscale, y, part, tickets, n, k, m, accumulate);
}
// The same with BF16X: bf16 x staged by the block itself (the engine's gemv_tc_fp8wgb_*).
template <int NB, int D, int ST, int MINB>
__global__ void __launch_bounds__(128, MINB)
wgb_plan(const void* w, const float* scale, const __nv_bfloat16* x, float* y, float* part, int* tickets, int n, int k, int m) {
    gemv_tc_sm90a::gemv_body<NB, D, ST, true>(w, scale, x, nullptr, y, part, tickets, n, k, m, 0);
}
#define W(NAME, NB, D, ST, MINB) Var{NAME, nullptr, 1, true, wg_plan<NB, D, ST, MINB>},
#define B(NAME, NB, D, ST, MINB) Var{NAME, wgb_plan<NB, D, ST, MINB>, 1, false, nullptr, true},
#else
#define W(NAME, NB, D, ST, MINB)
#define B(NAME, NB, D, ST, MINB)
#endif
//                        name           NB  U  MT MINB DB
static const Var kVars16[] = {
    V("ctl-u8-b4",        2, 8, 1, 4, false),  // control: the current plan rebuilt from the template
    H("f16-u8-b4",        2, 8, 1, 4, false),
    H("f16-db-u4-b4",     2, 4, 1, 4, true),
    //                    name           NB  D  ST MINB
    W("wg-d2-s3-b6",      2, 2, 3, 6)          // gemv_tc_fp8wg_n16
    W("wg-d4-s4-b4",      2, 4, 4, 4)
    B("wgb-d2-s3-b6",     2, 2, 3, 6)          // the 16-row bf16-x build session 21 dropped (spilled; batch 16 -5%)
    B("wgb-d2-s4-b4",     2, 2, 4, 4)
};
static const Var kVars32[] = {
    V("ctl-u4-b4",        4, 4, 1, 4, false),  // the plan before 2026-11-28 (gemv_tc_fp8_n32 is db-u2-b4 since)
    V("mt4-u1-b2",        4, 1, 4, 2, false),  // gemv_tc_fp8_n32_wide
    H("f16-db-u2-b4",     4, 2, 1, 4, true),
    H("f16-u4-b4",        4, 4, 1, 4, false),
    H("f16-mt4-u1-b2",    4, 1, 4, 2, false),
    H("f16-mt2-db-u1-b3", 4, 1, 2, 3, true),
    W("wg-d2-s4-b4",      4, 2, 4, 4)          // gemv_tc_fp8wg_n32
    W("wg-d4-s4-b4",      4, 4, 4, 4)          // gemv_tc_fp8wg_n32_deep
    W("wg-d2-s4-b6",      4, 2, 4, 6)
    B("wgb-d2-s4-b4",     4, 2, 4, 4)          // gemv_tc_fp8wgb_n32
    B("wgb-d4-s4-b4",     4, 4, 4, 4)          // gemv_tc_fp8wgb_n32_deep
};
#undef V
#undef W
#undef B
#undef H
#undef A

__global__ void bf16_to_f16(const __nv_bfloat16* __restrict__ a, __half* __restrict__ b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        b[i] = __float2half_rn(__bfloat162float(a[i]));
}

static const int kSplits[] = {1, 2, 3, 4, 6, 8, 12, 16};
static const long kTicketBytes = 64 << 10, kPartBytes = 64 << 20;

static bool fits(int n, int k, int nb, int splits) { return splits_fit(n, k, splits, 64, 128L * nb, kTicketBytes, kPartBytes); }

// argv[1] (optional): run only the shape of that name (for ncu: one shape, fewer launches).
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
    // x as f16 for the F16 candidates (x is U(-2, 2) in bf16: exact in f16)
    __half* x16;
    CK(cudaMalloc(&x16, (size_t)32 * maxK * 2));
    bf16_to_f16<<<256, 256>>>(x, x16, 32L * maxK);
    CK(cudaGetLastError());
    // and for the warpgroup plans in their permuted chunk order with row scales (all 1 here), per shape below
    __half* xp;
    float* xs;
    CK(cudaMalloc(&xp, (size_t)32 * maxK * 2));
    CK(cudaMalloc(&xs, 32 * 4));

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
            auto run = [&](const char* name, int mt, auto&& launch, bool isCurrent) {
                const dim3 g1((tiles + 4 * mt - 1) / (4 * mt), 1);
                Sweep sw;
                for (int sp : kSplits) {
                    if (!fits(s.n, s.k, nb, sp)) continue;
                    const dim3 grid(g1.x, sp);
                    CK(cudaMemset(tickets, 0, kTicketBytes));
                    const float us = timer.best_us(copies, [&](int c) { launch(grid, wOf(c)); });
                    io.poison(m, s.n);
                    launch(grid, wOf(0));
                    sw.add(sp, us, io.check(m, s.n));
                }
                if (!sw.ok()) ++fails;
                sw.print(name, bytes);
                b.o.take(name, sw, isCurrent);
            };
            run("current", 1, [&](dim3 grid, const void* wc) {
                cur<<<grid, 128>>>(wc, scale, x, y, part, tickets, s.n, s.k, m, 0);
            }, true);
            const Var* vars = m == 16 ? kVars16 : kVars32;
            const int count = m == 16 ? (int)(sizeof kVars16 / sizeof *kVars16) : (int)(sizeof kVars32 / sizeof *kVars32);
            for (int i = 0; i < count; ++i) {
                const Var& v = vars[i];
                run(v.name, v.mt, [&](dim3 grid, const void* wc) {
                    if (v.wg) v.wg<<<grid, 128>>>(wc, scale, xp, xs, y, part, tickets, s.n, s.k, m, 0);
                    else v.fn<<<grid, 128>>>(wc, scale, v.f16 ? reinterpret_cast<const __nv_bfloat16*>(x16) : x, y, part, tickets, s.n, s.k, m);
                }, false);
            }
            summary.push_back(b);
        }
    }

    printf("\n== summary (TB/s of weights + scales; read = streaming read of the weights)\n");
    printf("%-8s %2s  %16s  %16s  %26s  %6s\n", "shape", "m", "read", "current (split)", "best passing variant (split)", "gain");
    for (auto& b : summary) {
        const double bytes = (double)b.s->n * b.s->k + (double)b.s->n * 4;
        printf("%-8s %2d  %6.1f us %4.2f  %6.1f us %4.2f (%2d)  %-10s %6.1f us %4.2f (%2d)  %5.1f%%\n", b.s->name, b.m,
               b.read, (double)b.s->n * b.s->k / b.read / 1e6, b.o.cur, bytes / b.o.cur / 1e6, b.o.curSplit, b.o.varName, b.o.var, bytes / b.o.var / 1e6,
               b.o.varSplit, 100.0 * (b.o.cur / b.o.var - 1));
    }
    printf("\n%s: %d check(s) failed\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}

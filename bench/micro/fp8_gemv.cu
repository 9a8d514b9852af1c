// Micro-benchmark of the FP8 CUDA-core GEMV (kernels/gemv_fp8.cu, gemv_fp8_m1/m2/m4) and of candidate replacements
// (bench/micro/gemv_fp8_v2.cuh) at QwQ-32B's per-GPU product shapes, one GPU (TP1) and tensor parallel 2 (TP2), at 1, 2
// and 4 rows of x, against a plain 16-byte streaming read of the same bytes. Each candidate cycles over >= 8 copies
// of the weights (more for the small products: >= ~400 MB between two reads of a copy, L2 is 50 MB) so the bytes
// come from DRAM. Every candidate's output is CHECKED against gemv_fp8_m{M} at 1 split on random e4m3 codes (all
// finite codes, subnormals included), random per-row scales and random bf16 x: PASS when max|y - ref| / max|ref|
// <= 1e-5 (fp32 sums in another order differ by a few ulps), so a fast but wrong variant shows as FAIL.
// Not part of the build. On the GPU machine (< 60 s for the run, a few minutes to compile):
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/fp8bench bench/micro/fp8_gemv.cu && /tmp/fp8bench
// (add -Xptxas -v to see each variant's registers and spills).
//
// Why the current kernel is suspect: it reads gate/up at 1.2-1.3 TB/s where the bf16 GEMV reads 2.77 and a copy
// ~2.9; the hardware e4m3 conversion gained only 2-3%, so instruction issue for the conversion alone is not it. The
// variants each change one thing (template parameters of fp8v2::body, see gemv_fp8_v2.cuh):
//   t-u4            control: the current plan (warp per 16-row tile, 4 x 2 x 16 B per lane in flight, 128 threads,
//                   <= 64 registers) rebuilt from the template: should time like gemv_fp8_m{M}.
//   t-u8-b4/b8      more bytes in flight per lane (8 chunks = 256 B per lane) with 128 (b4) or 64 (b8) registers:
//                   tests whether each warp's loads-then-math batches leave DRAM idle (Little's law per SM).
//   t-u4-w8         256-thread blocks, same registers: fewer, larger blocks (block scheduling / tail effects).
//   t-pipe-u2/u4    register double buffer: the next batch's loads are issued before the current batch's math, so
//                   a warp never waits on DRAM with nothing in flight. u2 fits 64 registers; u4 gets 128.
//   t-raw           integer e4m3 -> fp32 with the 2^-120 of the bit move folded into the row scale: no F2FP / HADD2
//                   (is the hardware conversion's pipe the limit rather than issue?).
//   t-ef / t-256B   weight loads with an L2 evict-first policy / the L2::256B prefetch hint (L2 thrash by a stream
//                   that is read once; sector-sized DRAM requests).
//   t-xs            x converted once per block to fp32 in shared memory (laid out bank-conflict free): removes the
//                   bf16 unpack (8 ops per 8 x per row of x) and the L1 traffic of x; costs smem and a barrier.
//   kw2/kw4/kw8     2, 4 or 8 warps of a 256-thread block share one tile, taking turns over k in groups of U chunks
//                   (partials meet in shared memory in warp order): a block reads KW * 4 KB contiguous at a time and
//                   far fewer tiles (DRAM pages / TLB entries) are open at once, as in the plain streaming read.
//   kw8-u2-pipe     a block per tile (kw8) with the register double buffer.
//   p-*             persistent grid (SMs * resident blocks, each block walks (tile group, split) items): no wave
//                   tail when the item count is not a multiple of the resident slots.
//   combo-*         combinations of the above.
// Each variant runs at split counts 1, 2, 3, 4, 6, 8, 12, 16 (those that fit); the best is reported with all timings.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../../kernels/gemv_fp8.cu"
#include "gemv_fp8_v2.cuh"
#include "harness.cuh"
#include "stream_read.cuh"
typedef void (*CurFn)(const uint8_t*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int);
typedef void (*VarFn)(const uint8_t*, const float*, const __nv_bfloat16*, float*, float*, int*, int, int, int, int);

struct Var {
    const char* name;
    VarFn fn;
    int warps, kw, xs, persistent;
};

#define V(NAME, U, W, KW, PIPE, CVT, LD, XS, MINB, PERSIST) \
    Var { NAME, fp8v2::gemv_fp8_v2<M, U, W, KW, PIPE, CVT, LD, XS, MINB>, W, KW, XS, PERSIST }

//                 name             U  W  KW PIPE CVT LD XS MINB persistent
template <int M>
std::vector<Var> variants() {
    return {
        V("t-u4",            4, 4, 1, 0, 0, 0, 0, 8, 0),
        V("t-u8-b4",         8, 4, 1, 0, 0, 0, 0, 4, 0),
        V("t-u8-b8",         8, 4, 1, 0, 0, 0, 0, 8, 0),
        V("t-u4-w8",         4, 8, 1, 0, 0, 0, 0, 4, 0),
        V("t-pipe-u2",       2, 4, 1, 1, 0, 0, 0, 8, 0),
        V("t-pipe-u4",       4, 4, 1, 1, 0, 0, 0, 4, 0),
        V("t-raw",           4, 4, 1, 0, 1, 0, 0, 8, 0),
        V("t-ef",            4, 4, 1, 0, 0, 1, 0, 8, 0),
        V("t-256B",          4, 4, 1, 0, 0, 2, 0, 8, 0),
        V("t-xs",            4, 4, 1, 0, 0, 0, 1, 8, 0),
        V("kw2-w8",          4, 8, 2, 0, 0, 0, 0, 4, 0),
        V("kw4-w8",          4, 8, 4, 0, 0, 0, 0, 4, 0),
        V("kw8-w8",          4, 8, 8, 0, 0, 0, 0, 4, 0),
        V("kw8-u2-pipe",     2, 8, 8, 1, 0, 0, 0, 4, 0),
        V("p-t-u4",          4, 4, 1, 0, 0, 0, 0, 8, 1),
        V("p-kw8-w8",        4, 8, 8, 0, 0, 0, 0, 4, 1),
        V("combo-pipe-raw",  4, 4, 1, 1, 1, 0, 0, 4, 0),
        V("combo-kw4-pipe",  2, 8, 4, 1, 1, 1, 0, 4, 1),
        V("combo-kw8-xs",    4, 8, 8, 0, 1, 0, 1, 4, 0),
    };
}
#undef V

static const int kSplits[] = {1, 2, 3, 4, 6, 8, 12, 16};
static const long kTicketBytes = 64 << 10, kPartBytes = 32 << 20;

static bool fits(int n, int k, int m, int splits) { return splits_fit(n, k, splits, 64, 16L * m, kTicketBytes, kPartBytes); }

int main() {
    const int sms = print_device();

    const Shape shapes[] = {
        {7168, 5120, "TP1 qkv"},  {5120, 5120, "TP1 o"},  {55296, 5120, "TP1 gate_up"}, {5120, 27648, "TP1 down"},
        {3584, 5120, "TP2 qkv"},  {5120, 2560, "TP2 o"},  {27648, 5120, "TP2 gate_up"}, {5120, 13824, "TP2 down"}};
    size_t maxBytes = 0;
    int maxN = 0, maxK = 0;
    for (auto& s : shapes) {
        maxBytes = std::max(maxBytes, (size_t)s.n * s.k);
        maxN = std::max(maxN, s.n);
        maxK = std::max(maxK, s.k);
    }
    const size_t poolBytes = maxBytes * 8;
    uint8_t* pool;
    CK(cudaMalloc(&pool, poolBytes));
    fill_e4m3_codes<<<sms * 8, 256>>>((uint32_t*)pool, (long long)(poolBytes / 4), 12345u);
    CK(cudaGetLastError());

    // scales ~ U(0.5, 1.5) / 448, x ~ U(-2, 2) in bf16 (host-generated, fixed seed)
    HostRandom rng;
    GemvBuffers io(4, maxN, maxK, true, kTicketBytes, kPartBytes, rng);
    const float* scale; const __nv_bfloat16* x; float *y, *yref, *part; int* tickets;
    std::tie(scale, x, y, yref, part, tickets) = io.views();
    LaunchTimer timer;

    // copies of a shape's weights, at a 4 KB stride, so that >= ~400 MB lie between two reads of one copy
    auto layout = [&](const Shape& s, size_t& stride) {
        stride = copy_stride((size_t)s.n * s.k);
        return copies_for(stride);
    };
    auto timeit = [&](int copies, auto&& launch) { return timer.best_us(copies, launch); };

    // (a) the streaming read of the same bytes (weights + scales)
    for (auto& s : shapes) {
        size_t stride; const int copies = layout(s, stride);
        const size_t bytes = (size_t)s.n * s.k + (size_t)s.n * 4;
        float us = timeit(copies, [&](int c) {
            read_k<<<sms * 8, 256>>>((const uint4*)(pool + c * stride), (long long)(bytes / 16), io.dummy);
        });
        printf("read %-12s %8.1f us  %5.2f TB/s  (%d copies)\n", s.name, us, bytes / us / 1e6, copies);
    }

    const CurFn cur[4] = {gemv_fp8_m1, gemv_fp8_m2, gemv_fp8_m3, gemv_fp8_m4};
    std::vector<Var> vars[5];
    vars[1] = variants<1>(); vars[2] = variants<2>(); vars[4] = variants<4>();
    int fails = 0;
    struct Best { const char* shape; int m; Outcome o; };
    std::vector<Best> summary;

    for (int m : {1, 2, 4})
    for (auto& s : shapes) {
        size_t stride; const int copies = layout(s, stride);
        const size_t bytes = (size_t)s.n * s.k + (size_t)s.n * 4;
        const int tiles = (s.n + 15) / 16;
        printf("\n== m=%d %s [%d x %d], %.1f MB\n", m, s.name, s.n, s.k, bytes / 1e6);

        // reference: the current kernel at 1 split on copy 0
        CK(cudaMemset(tickets, 0, kTicketBytes));
        cur[m - 1]<<<dim3((s.n + 63) / 64, 1), 128>>>(pool, scale, x, yref, part, tickets, s.n, s.k, 0);
        io.take_reference(m, s.n);

        // (b) the current kernel at 1, 2, 4, 8 splits
        Best b{s.name, m, {}};
        printf("  %-16s", "current");
        for (int sp : {1, 2, 4, 8}) {
            if (!fits(s.n, s.k, m, sp)) continue;
            CK(cudaMemset(tickets, 0, kTicketBytes));
            float us = timeit(copies, [&](int c) {
                cur[m - 1]<<<dim3((s.n + 63) / 64, sp), 128>>>(pool + c * stride, scale, x, y, part, tickets, s.n, s.k, 0);
            });
            io.poison(m, s.n);
            cur[m - 1]<<<dim3((s.n + 63) / 64, sp), 128>>>(pool, scale, x, y, part, tickets, s.n, s.k, 0);
            double err = io.check(m, s.n);
            const bool ok = err <= 1e-5;
            if (!ok) ++fails;
            printf(" s%d %6.1f us %4.2f TB/s%s", sp, us, bytes / us / 1e6, ok ? "" : " FAIL");
            if (us < b.o.cur) { b.o.cur = us; b.o.curSplit = sp; }
        }
        printf("\n");

        // (c) the variants
        for (auto& v : vars[m]) {
            const int tpb = v.warps / v.kw, groups = (tiles + tpb - 1) / tpb;
            Sweep sw;
            for (int sp : kSplits) {
                if (!fits(s.n, s.k, m, sp)) continue;
                const size_t smem = v.xs ? (size_t)m * ((s.k / 64 + sp - 1) / sp) * 64 * 4 : 0;
                if (smem > 200 * 1024) continue;
                CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)std::max<size_t>(smem, 0)));
                int occ = 0;
                CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, v.fn, v.warps * 32, smem));
                if (occ == 0) continue;
                const int items = groups * sp;
                const dim3 grid = v.persistent ? dim3(std::min(items, occ * sms), 1) : dim3(groups, sp);
                CK(cudaMemset(tickets, 0, kTicketBytes));
                float us = timeit(copies, [&](int c) {
                    v.fn<<<grid, v.warps * 32, smem>>>(pool + c * stride, scale, x, y, part, tickets, s.n, s.k, 0, sp);
                });
                io.poison(m, s.n);
                v.fn<<<grid, v.warps * 32, smem>>>(pool, scale, x, y, part, tickets, s.n, s.k, 0, sp);
                sw.add(sp, us, io.check(m, s.n));
            }
            if (sw.split == 0) { printf("  %-16s (no launchable split)\n", v.name); continue; }
            if (!sw.ok()) ++fails;
            sw.print(v.name, bytes);
            b.o.take(v.name, sw, false);
        }
        summary.push_back(b);
    }

    printf("\n== summary (TB/s of weights + scales; read = streaming-read ceiling of the same bytes)\n");
    printf("%-12s %2s  %18s  %28s  %6s\n", "shape", "m", "current (split)", "best passing variant (split)", "gain");
    for (auto& b : summary) {
        const Shape* s = nullptr;
        for (auto& t : shapes) if (!strcmp(t.name, b.shape)) s = &t;
        const double bytes = (double)s->n * s->k + (double)s->n * 4;
        printf("%-12s %2d  %6.1f us %4.2f (%2d)  %-14s %6.1f us %4.2f (%2d)  %5.1f%%\n", b.shape, b.m, b.o.cur,
               bytes / b.o.cur / 1e6, b.o.curSplit, b.o.varName, b.o.var, bytes / b.o.var / 1e6, b.o.varSplit, 100.0 * (b.o.cur / b.o.var - 1));
    }
    printf("\n%s: %d check(s) failed\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}

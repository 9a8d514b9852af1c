// Micro-benchmark of the int4 GEMV (kernels/gemv_int4.cu, gemv_int4_n8_g128: 1..8 rows of x, group 128) and of the
// candidates in gemv_int4_v2.cuh (what each changes is explained there) at QwQ-32B's four product shapes (one GPU), 1
// and 8 rows of x, against a plain 16-byte streaming read of the same bytes (codes + scale words). The first round's
// ctl-u8-b4 was close to the engine's kernel before 2026-11-28; the engine then took kw8-sub-u4-b4 at 3 blocks per SM
// (`current` here: its entry, with the prefetch before the PDL wait); the second round's best, kw4-w4-sub-u4-b6, waits
// on branch s10-int4-kw4 for a device run. Each candidate cycles over >= 8 copies of the weights (>= ~400 MB between
// two reads of one copy; L2 is 50-60 MB) so the bytes come from DRAM. Inputs are random: every code byte, fp16 scales
// in [0.5, 1.5) / 8, zero points 0..15, bf16 x in [-2, 2). Every candidate's output is CHECKED against
// gemv_int4_n8_g128 at 1 split: PASS when max|y - ref| / max|ref| <= 1e-4 (harness.cuh says why; y is
// poisoned with NaN before each checked launch, so a row left unwritten fails).
// Not part of the build. On the GPU machine (a minute to compile, well under a minute to run):
//   nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/int4bench bench/micro/int4_gemv.cu && /tmp/int4bench
// "/tmp/int4bench once" launches the engine's plan once over gate_up at one row (for ncu); "/tmp/int4bench current"
// times the engine's plan alone (an A/B of edits to kernels/gemv_int4.cu: one build of this file per tree).
// Outputs kept: bench/results/2026-11-27-NVIDIA-H100-80GB-HBM3-2ae4938-int4-gemv-micro.txt (the first harness: zero
// x, constant codes) and bench/results/2026-11-28-NVIDIA-H200-*-int4-gemv-micro.txt (this one).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "../../kernels/gemv_int4.cu"
#include "gemv_int4_v2.cuh"
#include "harness.cuh"
#include "stream_read.cuh"
// Random code bytes (every byte is two valid nibbles).
__global__ void fill_codes(uint32_t* p, long long words, uint32_t seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < words; i += (long long)gridDim.x * blockDim.x)
        p[i] = hash32((uint32_t)i * 2654435761u ^ hash32(seed + (uint32_t)(i >> 32)));
}
// Scale/zero words (int4.cuh's packing): fp16 scale in [0.5, 1.5) / 8, zero 0..15.
__global__ void fill_scale_zero(uint32_t* p, long long words, uint32_t seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < words; i += (long long)gridDim.x * blockDim.x) {
        const uint32_t h = hash32((uint32_t)i * 747796405u ^ seed);
        const float s = (0.5f + (h >> 8) * (1.0f / 16777216.0f)) / 8.0f;
        p[i] = int4_pack_scale_zero(__half_as_ushort(__float2half_rn(s)), (int)(h & 15));
    }
}

typedef void (*Fn)(const uint8_t*, const uint32_t*, const __nv_bfloat16*, float*, float*, int*, int, int, int);
// The engine's entry (gemv_int4_n8_g128) has an `accumulate` argument the variants lack.
__global__ void __launch_bounds__(kTileWarps * 32, 3) current_k(const uint8_t* w, const uint32_t* sz, const __nv_bfloat16* x,
                                                                float* y, float* part, int* tickets, int n, int k, int m) {
    gemv_int4_tile_body<2>(w, sz, x, y, part, tickets, n, k, m, 0);
}

struct Var { const char* name; Fn fn; int warps, kw; };
#define V(NAME, U, W, KW, CH, Z, P, MINB) Var{NAME, int4v2::gemv_int4_v2<U, W, KW, CH, Z, P, MINB>, W, KW}
//                 name               U  W  KW CH Z  P  MINB
static const Var kVars[] = {
    // session 10, second round: around the plan the engine took (kw8-sub-u4-b3 = the engine's entry without its
    // prefetch before the PDL wait)
    V("kw8-sub-u4-b3",    4, 8, 8, 2, 1, 0, 3),
    V("kw8-sub-u4-b3-c1", 4, 8, 8, 1, 1, 0, 3),
    V("kw8-sub-u8-b2",    8, 8, 8, 2, 1, 0, 2),
    V("kw8-sub-pipe-u2",  2, 8, 8, 2, 1, 1, 3),
    V("kw8-sub-pipe-u4",  4, 8, 8, 2, 1, 1, 2),
    V("kw16-sub-u4-b1",   4, 16, 16, 2, 1, 0, 1),
    V("kw16-sub-u4-b2",   4, 16, 16, 2, 1, 0, 2),
    V("kw16-sub-u2-b2",   2, 16, 16, 2, 1, 0, 2),
    V("kw4-w4-sub-u4-b6", 4, 4, 4, 2, 1, 0, 6),  // branch s10-int4-kw4
    V("kw8-w16-sub-u4",   4, 16, 8, 2, 1, 0, 2),
};
#undef V

static const int kSplits[] = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16};
static const long kTicketBytes = 64 << 10, kPartBytes = 32 << 20;

static bool fits(int n, int k, int splits) { return splits_fit(n, k, splits, 128, 128, kTicketBytes, kPartBytes); }
static size_t code_bytes(const Shape& s) { return (size_t)s.n * s.k / 2; }
static size_t sz_words(const Shape& s) { return (size_t)(s.k / 128) * ((s.n + 15) & ~15); }

int main(int argc, char** argv) {
    // "once": the engine's plan launched once over gate_up at one row after the fills, nothing else (for ncu, e.g.
    // ncu --set full -k regex:current_k /tmp/int4bench once; session 20's opcode counts came from this)
    const bool once = argc > 1 && strcmp(argv[1], "once") == 0;
    // "current": the engine's plan alone at every shape, none of the variants (an A/B of kernel edits, one build each)
    const bool current_only = argc > 1 && strcmp(argv[1], "current") == 0;
    const int sms = print_device();
    const auto& shapes = kQwqShapes;
    // copies of a shape (codes, then its scale words)
    auto stride_of = [](const Shape& s) { return copy_stride(code_bytes(s) + sz_words(s) * 4); };
    auto copies_of = [&](const Shape& s) { return copies_for(stride_of(s)); };
    int maxN, maxK;
    const size_t poolBytes = pool_bytes(shapes, stride_of, copies_of, maxN, maxK);
    uint8_t* pool;
    CK(cudaMalloc(&pool, poolBytes));

    HostRandom rng;
    GemvBuffers io(8, maxN, maxK, false, kTicketBytes, kPartBytes, rng);
    const float* scale; const __nv_bfloat16* x; float *y, *yref, *part; int* tickets;
    std::tie(scale, x, y, yref, part, tickets) = io.views();
    (void)scale;  // int4 scales live in the weights' scale words
    LaunchTimer timer;
    auto timeit = [&](int copies, auto&& launch) { return timer.best_us(copies, launch); };

    int fails = 0;
    struct Best { const Shape* s; int m; float read; Outcome o; };
    std::vector<Best> summary;
    for (auto& s : shapes) {
        const size_t stride = stride_of(s), bytes = code_bytes(s) + sz_words(s) * 4;
        const int copies = copies_of(s), tiles = (s.n + 15) / 16;
        fill_codes<<<sms * 8, 256>>>((uint32_t*)pool, (long long)(stride * copies / 4), 12345u + s.n);
        for (int c = 0; c < copies; ++c)
            fill_scale_zero<<<sms * 4, 256>>>((uint32_t*)(pool + c * stride + code_bytes(s)), (long long)sz_words(s), 777u + c);
        CK(cudaGetLastError());
        auto wOf = [&](int c) { return pool + c * stride; };
        auto szOf = [&](int c) { return (const uint32_t*)(pool + c * stride + code_bytes(s)); };
        if (once) {
            if (strcmp(s.name, "gate_up") != 0) continue;
            current_k<<<dim3(tiles, 1), kTileWarps * 32>>>(wOf(0), szOf(0), x, y, part, tickets, s.n, s.k, 1);
            CK(cudaDeviceSynchronize());
            printf("once: current_k over gate_up at 1 row\n");
            return 0;
        }
        const float read = timeit(copies, [&](int c) {
            read_k<<<sms * 8, 256>>>((const uint4*)wOf(c), (long long)(bytes / 16), io.dummy);
        });
        printf("\nread %-8s %8.1f us  %5.2f TB/s  (%.1f MB, %d copies)\n", s.name, read, bytes / read / 1e6, bytes / 1e6, copies);

        for (int m : {1, 8}) {
            printf("== m=%d %s [%d x %d]\n", m, s.name, s.n, s.k);
            CK(cudaMemset(tickets, 0, kTicketBytes));
            current_k<<<dim3(tiles, 1), kTileWarps * 32>>>(wOf(0), szOf(0), x, yref, part, tickets, s.n, s.k, m);
            io.take_reference(m, s.n);

            Best b{&s, m, read, {}};
            auto run = [&](const char* name, Fn fn, int warps, int kw, bool isCurrent) {
                const int groupsOfTiles = (tiles + warps / kw - 1) / (warps / kw);
                Sweep sw;
                for (int sp : kSplits) {
                    if (!fits(s.n, s.k, sp)) continue;
                    const dim3 grid(groupsOfTiles, sp);
                    CK(cudaMemset(tickets, 0, kTicketBytes));
                    const float us = timeit(copies, [&](int c) { fn<<<grid, warps * 32>>>(wOf(c), szOf(c), x, y, part, tickets, s.n, s.k, m); });
                    io.poison(m, s.n);
                    fn<<<grid, warps * 32>>>(wOf(0), szOf(0), x, y, part, tickets, s.n, s.k, m);
                    sw.add(sp, us, io.check(m, s.n));
                }
                if (!sw.ok()) ++fails;
                sw.print(name, bytes);
                b.o.take(name, sw, isCurrent);
            };
            run("current", current_k, kTileWarps, kTileWarps, true);
            if (!current_only)
                for (auto& v : kVars) run(v.name, v.fn, v.warps, v.kw, false);
            summary.push_back(b);
        }
    }

    printf("\n== summary (TB/s of codes + scale words; read = streaming read of the same bytes)\n");
    printf("%-8s %2s  %16s  %16s  %30s  %6s\n", "shape", "m", "read", "current (split)", "best passing variant (split)", "gain");
    for (auto& b : summary) {
        const double bytes = code_bytes(*b.s) + sz_words(*b.s) * 4.0;
        if (current_only) {
            printf("%-8s %2d  %6.1f us %4.2f  %6.1f us %4.2f (%2d)\n", b.s->name, b.m, b.read, bytes / b.read / 1e6,
                   b.o.cur, bytes / b.o.cur / 1e6, b.o.curSplit);
            continue;
        }
        printf("%-8s %2d  %6.1f us %4.2f  %6.1f us %4.2f (%2d)  %-14s %6.1f us %4.2f (%2d)  %5.1f%%\n", b.s->name, b.m,
               b.read, bytes / b.read / 1e6, b.o.cur, bytes / b.o.cur / 1e6, b.o.curSplit, b.o.varName, b.o.var, bytes / b.o.var / 1e6,
               b.o.varSplit, 100.0 * (b.o.cur / b.o.var - 1));
    }
    printf("\n%s: %d check(s) failed\n", fails ? "FAIL" : "PASS", fails);
    return fails ? 1 : 0;
}

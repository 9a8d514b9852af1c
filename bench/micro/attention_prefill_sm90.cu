// Micro-benchmark of the Hopper (sm_90a) causal GQA prefill attention kernel, kernels/sm90a/attention_prefill_sm90a.cu
// (wgmma from 128B-swizzled shared memory; its header explains the layout, the descriptors and what to look at when it
// fails), against the portable mma.sync kernel (kernels/attention_prefill.cu) it is checked against. The kernel's
// template also has configurations the engine does not launch (2 consumer warpgroups, softmax/PV overlap); they are
// instantiated here, beside the engine's own extern "C" entry.
// Not part of the build. On the GPU machine (CUDA 12.x, H100):
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/attn90 bench/micro/attention_prefill_sm90.cu -lcuda && /tmp/attn90
//   (-lcuda: the TMA variants' tensor maps are built with the driver's cuTensorMapEncodeTiled)
//   (with CUDA 13, -arch=sm_90a gave a compute_90 module that ptxas refused: "wgmma ... not supported on .target sm_90")
// Optional argument: substrings of the variant names, separated by '|', to run only those (e.g. /tmp/attn90 "wg1|engine pp");
// the reference always runs.
// A second argument "once" launches each chosen variant once at T=16384 and nothing else (for ncu).
// Exit code 0 = every variant passed, 1 = some failed a check (those are not timed), 2/3 = CUDA error.
// bench/micro/attention_prefill_sm90_layout.py (plain python3) replays the kernel's index maps on the CPU: loader vs
// descriptor addresses for the canonical wgmma layouts, the P fragment identity, the ring schedule, and the loop's
// control flow (masking, tile skipping, OVERLAP order) against exact attention.
//
// What it does:
//   1. correctness: random q, K, V (bf16) at QwQ's shape (nq 40, nkv 8, D 128), paged K/V [blocks, nkv, 64, D] through a
//      shuffled block table, unwritten cache slots filled with NaN (a kernel that lets them reach the output fails).
//      Cases: T=256 from position 0, T=256 on top of 100 cached positions (chunked prefill: the diagonal is not on a tile
//      boundary), T=200 on top of 37 (partial query tile), T=60 on 37 and T=130 (a second warpgroup without rows), T=2048. The current kernel and every variant are compared
//      with a CPU fp64 reference on the small cases, and every variant with the current kernel on all of them:
//      PASS when ||out - ref|| / ||ref|| <= 1e-2 and no NaN.
//   2. timing at T=2048 and 16384 from 0, and T=4096 on top of 12288 (one sequence, shuffled table),
//      TFLOP/s = 4 nq D (T start + T(T+1)/2) / time (causal); each variant the faster of two passes over the list,
//      forward and backward (the order moved a variant's figure by ~7% in session 19).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda.h>  // CUtensorMap, cuTensorMapEncodeTiled (the TMA variants)

#include "../../kernels/attention_prefill.cu"
#include "../../kernels/sm90a/attention_prefill_sm90a.cu"

namespace sm90 = attn_prefill_sm90a;

// Same entry signature, grid and seq_info/block table contract as attention_prefill_paged_bf16_d128, except: block
// 128*WGS threads, grid (nq, ceil(max T / (64*WGS)), sequences), dynamic smem sm90::smem_bytes(WGS, STAGES).
template <int WGS, int STAGES, bool OVERLAP, int MINB, bool QREG = false>
__global__ void __launch_bounds__(WGS * 128, MINB)
    attention_prefill_paged_sm90_d128(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
                                      const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out,
                                      const int* __restrict__ seq_info, const int* __restrict__ block_tables,
                                      int max_blocks, int nq, int nkv, float scale) {
    kernel_entry_barrier();
    const int4 info = reinterpret_cast<const int4*>(seq_info)[blockIdx.z];
    const int T = info.y;
    if ((int)(gridDim.y - 1 - blockIdx.y) * 64 * WGS >= T) return;
    const size_t first = (size_t)info.x * nq * sm90::D;
    sm90::prefill<WGS, STAGES, OVERLAP, QREG>(q + first, k_pool, v_pool, out + first, T, info.z, nq, nkv, scale,
                                        block_tables + (size_t)blockIdx.z * max_blocks);
}

// The same with K and V by TMA (sm90::prefill's TMA flag): the pools' tensor maps as two more by-value parameters.
// PP: the ping-pong schedule, with one producer warp after the consumers (block 128 * WGS + 32 threads).
template <int WGS, int STAGES, bool OVERLAP, int MINB, bool QREG = false, bool PP = false, int KT = 64, bool WSR = false>
__global__ void __launch_bounds__(WGS * 128 + (PP ? (WSR ? 128 : 32) : 0), MINB)
    attention_prefill_paged_sm90_d128_tma(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k_pool,
                                          const __nv_bfloat16* __restrict__ v_pool, __nv_bfloat16* __restrict__ out,
                                          const int* __restrict__ seq_info, const int* __restrict__ block_tables,
                                          int max_blocks, int nq, int nkv, float scale,
                                          const __grid_constant__ sm90::TmaMap tm_k,
                                          const __grid_constant__ sm90::TmaMap tm_v) {
    kernel_entry_barrier();
    const int4 info = reinterpret_cast<const int4*>(seq_info)[blockIdx.z];
    const int T = info.y;
    if ((int)(gridDim.y - 1 - blockIdx.y) * 64 * WGS >= T) return;
    const size_t first = (size_t)info.x * nq * sm90::D;
    sm90::prefill<WGS, STAGES, OVERLAP, QREG, true, PP, KT, WSR>(q + first, k_pool, v_pool, out + first, T, info.z, nq, nkv, scale,
                                                   block_tables + (size_t)blockIdx.z * max_blocks, &tm_k, &tm_v);
}

// ======================================================================================================================
// Host side: problems, references, checks, timing.
// ======================================================================================================================
#define CK(x)                                                                                             \
    do {                                                                                                  \
        cudaError_t e_ = (x);                                                                             \
        if (e_ != cudaSuccess) {                                                                          \
            printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x);        \
            exit(2);                                                                                      \
        }                                                                                                 \
    } while (0)

static const int NQ = 40, NKV = 8, HD = 128, KV_BLOCK = 64;

static uint16_t f2bf(float f) {  // round to nearest even; NaN stays NaN
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint32_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return (uint32_t)(s >> 16);
    }
    float uniform() { return (float)((next() + 0.5) / 4294967296.0); }  // (0, 1)
    float gauss() {
        const float u1 = uniform(), u2 = uniform();
        return sqrtf(-2.f * logf(u1)) * cosf(6.2831853f * u2);
    }
};

// One sequence: T new rows at positions start .. start+T-1 over a pool of `pool_blocks` KV blocks, of which the
// shuffled block table uses the first ceil((start+T)/64). Cache slots no position maps to hold NaN.
struct Problem {
    int T, start, blocks, pool_blocks;
    std::vector<uint16_t> hq, hk, hv;  // host copies (for the CPU reference)
    std::vector<int> table;
    __nv_bfloat16 *q = nullptr, *k = nullptr, *v = nullptr;
    int *info = nullptr, *dtable = nullptr;
    sm90::TmaMap tm_k, tm_v;  // the TMA variants' maps of k and v
    Problem(int T_, int start_, uint64_t seed) : T(T_), start(start_) {
        const int ctx = start + T;
        blocks = (ctx + KV_BLOCK - 1) / KV_BLOCK;
        pool_blocks = blocks + 3;
        Rng rng(seed);
        hq.resize((size_t)T * NQ * HD);
        for (auto& x : hq) x = f2bf(rng.gauss());
        const size_t pool = (size_t)pool_blocks * NKV * KV_BLOCK * HD;
        hk.assign(pool, 0x7fc0);  // NaN everywhere no position is written
        hv.assign(pool, 0x7fc0);
        table.resize(pool_blocks);
        for (int i = 0; i < pool_blocks; ++i) table[i] = i;
        for (int i = pool_blocks - 1; i > 0; --i) std::swap(table[i], table[rng.next() % (i + 1)]);
        for (int pos = 0; pos < ctx; ++pos)
            for (int h = 0; h < NKV; ++h)
                for (int d = 0; d < HD; ++d) {
                    const size_t i = kidx(pos, h, d);
                    hk[i] = f2bf(rng.gauss());
                    hv[i] = f2bf(rng.gauss());
                }
        CK(cudaMalloc(&q, hq.size() * 2));
        CK(cudaMalloc(&k, pool * 2));
        CK(cudaMalloc(&v, pool * 2));
        CK(cudaMalloc(&info, 16));
        CK(cudaMalloc(&dtable, pool_blocks * 4));
        CK(cudaMemcpy(q, hq.data(), hq.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(k, hk.data(), pool * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(v, hv.data(), pool * 2, cudaMemcpyHostToDevice));
        const int hinfo[4] = {0, T, start, 0};
        CK(cudaMemcpy(info, hinfo, 16, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dtable, table.data(), pool_blocks * 4, cudaMemcpyHostToDevice));
        tm_k = kv_map(k, (uint64_t)pool_blocks * NKV * KV_BLOCK);
        tm_v = kv_map(v, (uint64_t)pool_blocks * NKV * KV_BLOCK);
    }
    // A pool as rows of HD bf16 (256-byte pitch), boxes of 64 rows x 64 dims, 128-byte swizzle (the kernel's layout).
    static sm90::TmaMap kv_map(void* pool, uint64_t rows) {
        static_assert(sizeof(CUtensorMap) == sizeof(sm90::TmaMap), "TmaMap must be a CUtensorMap");
        CUtensorMap m;
        const cuuint64_t dims[2] = {(cuuint64_t)HD, rows};
        const cuuint64_t strides[1] = {(cuuint64_t)HD * 2};
        const cuuint32_t box[2] = {64, 64}, elem[2] = {1, 1};
        const CUresult r = cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, pool, dims, strides, box, elem,
                                                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) {
            printf("cuTensorMapEncodeTiled failed: %d\n", (int)r);
            exit(2);
        }
        sm90::TmaMap t;
        memcpy(&t, &m, sizeof t);
        return t;
    }
    size_t kidx(int pos, int h, int d) const {
        return (((size_t)table[pos / KV_BLOCK] * NKV + h) * KV_BLOCK + pos % KV_BLOCK) * HD + d;
    }
    ~Problem() {
        cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(info); cudaFree(dtable);
    }
    double flops() const {  // causal on top of `start` cached keys: row i sees start+i+1 keys
        return 4.0 * NQ * HD * ((double)T * start + (double)T * (T + 1) / 2.0);
    }
};

// fp64 reference of all heads and rows (only for small T).
static std::vector<float> cpu_reference(const Problem& P) {
    const float scale = 1.f / sqrtf((float)HD);
    std::vector<float> out((size_t)P.T * NQ * HD);
    std::vector<double> sc(P.start + P.T);
    for (int i = 0; i < P.T; ++i)
        for (int h = 0; h < NQ; ++h) {
            const int kvh = h / (NQ / NKV);
            const int n = P.start + i + 1;
            double mx = -1e300;
            for (int key = 0; key < n; ++key) {
                double dot = 0;
                for (int d = 0; d < HD; ++d)
                    dot += (double)bf2f(P.hq[((size_t)i * NQ + h) * HD + d]) * bf2f(P.hk[P.kidx(key, kvh, d)]);
                sc[key] = dot * scale;
                mx = std::max(mx, sc[key]);
            }
            double l = 0;
            for (int key = 0; key < n; ++key) l += (sc[key] = exp(sc[key] - mx));
            for (int d = 0; d < HD; ++d) {
                double acc = 0;
                for (int key = 0; key < n; ++key) acc += sc[key] * bf2f(P.hv[P.kidx(key, kvh, d)]);
                out[((size_t)i * NQ + h) * HD + d] = (float)(acc / l);
            }
        }
    return out;
}

typedef void (*PrefillFn)(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*,
                          const int*, const int*, int, int, int, float);

// The TMA variants launch through a function of their own (their kernels take the two maps as well).
typedef void (*TmaLaunchFn)(dim3 grid, int threads, int smem, const Problem& P, __nv_bfloat16* out);

struct Variant {
    const char* name;
    PrefillFn fn;
    int rows_per_block, threads, smem;
    bool ok = true;                  // cleared when it fails a check: not timed
    TmaLaunchFn tma_launch = nullptr;  // set for the TMA variants (fn unused then)
    const void* tma_kernel = nullptr;  // their kernel, for the occupancy query
};

static void launch(const Variant& V, const Problem& P, __nv_bfloat16* out) {
    dim3 grid(NQ, (P.T + V.rows_per_block - 1) / V.rows_per_block, 1);
    if (V.tma_launch)
        V.tma_launch(grid, V.threads, V.smem, P, out);
    else
        V.fn<<<grid, V.threads, V.smem>>>(P.q, P.k, P.v, out, P.info, P.dtable, P.pool_blocks, NQ, NKV,
                                          1.f / sqrtf((float)HD));
}

// ||a - ref|| / ||ref|| over the first n elements; NaN anywhere -> +inf.
static double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (std::isnan(a[i]) || std::isinf(a[i])) return INFINITY;
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / den);
}

static std::vector<float> run_to_host(const Variant& V, const Problem& P, __nv_bfloat16* out) {
    const size_t n = (size_t)P.T * NQ * HD;
    CK(cudaMemset(out, 0xff, n * 2));  // NaN: rows a kernel forgets to write fail the check
    launch(V, P, out);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        // An illegal instruction / address kills the context: nothing after this can run.
        printf("  %-22s CUDA error: %s -- aborting (see the notes at the top of the file)\n", V.name,
               cudaGetErrorString(e));
        exit(3);
    }
    std::vector<uint16_t> h(n);
    CK(cudaMemcpy(h.data(), out, n * 2, cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; ++i) f[i] = bf2f(h[i]);
    return f;
}

static float time_ms(const Variant& V, const Problem& P, __nv_bfloat16* out, int reps) {
    launch(V, P, out);  // warm-up
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) launch(V, P, out);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    CK(cudaGetLastError());
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms / reps;
}

template <int WGS, int STAGES, bool OVERLAP, int MINB, bool QREG = false>
static Variant sm90_variant(const char* name) {
    auto fn = attention_prefill_paged_sm90_d128<WGS, STAGES, OVERLAP, MINB, QREG>;
    const int smem = sm90::smem_bytes(WGS, STAGES);
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return Variant{name, fn, 64 * WGS, 128 * WGS, smem};
}

template <int WGS, int STAGES, bool OVERLAP, int MINB, bool QREG, bool PP, int KT, bool WSR>
static void sm90_tma_launch(dim3 grid, int threads, int smem, const Problem& P, __nv_bfloat16* out) {
    attention_prefill_paged_sm90_d128_tma<WGS, STAGES, OVERLAP, MINB, QREG, PP, KT, WSR><<<grid, threads, smem>>>(
        P.q, P.k, P.v, out, P.info, P.dtable, P.pool_blocks, NQ, NKV, 1.f / sqrtf((float)HD), P.tm_k, P.tm_v);
}

template <int WGS, int STAGES, bool OVERLAP, int MINB, bool QREG = false, bool PP = false, int KT = 64, bool WSR = false>
static Variant sm90_tma_variant(const char* name) {
    auto fn = attention_prefill_paged_sm90_d128_tma<WGS, STAGES, OVERLAP, MINB, QREG, PP, KT, WSR>;
    const int smem = sm90::smem_bytes(WGS, STAGES, KT);
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    Variant v{name, nullptr, 64 * WGS, 128 * WGS + (PP ? (WSR ? 128 : 32) : 0), smem};
    v.tma_launch = sm90_tma_launch<WGS, STAGES, OVERLAP, MINB, QREG, PP, KT, WSR>;
    v.tma_kernel = reinterpret_cast<const void*>(fn);
    return v;
}

// The engine's TMA entry (kernels/sm90a, ENGINE_TMA_*): the code of "sm90 wg2 s3 ovl tma" through its extern "C" wrapper.
static void engine_tma_launch(dim3 grid, int threads, int smem, const Problem& P, __nv_bfloat16* out) {
    attention_prefill_paged_bf16_d128_sm90a_tma<<<grid, threads, smem>>>(
        P.q, P.k, P.v, out, P.info, P.dtable, P.pool_blocks, NQ, NKV, 1.f / sqrtf((float)HD), P.tm_k, P.tm_v);
}

static Variant engine_tma_variant() {
    const int smem = sm90::smem_bytes(sm90::ENGINE_TMA_WGS, sm90::ENGINE_TMA_STAGES);
    CK(cudaFuncSetAttribute(attention_prefill_paged_bf16_d128_sm90a_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    Variant v{"sm90a engine TMA entry", nullptr, 64 * sm90::ENGINE_TMA_WGS, 128 * sm90::ENGINE_TMA_WGS, smem};
    v.tma_launch = engine_tma_launch;
    v.tma_kernel = reinterpret_cast<const void*>(attention_prefill_paged_bf16_d128_sm90a_tma);
    return v;
}

// The engine's ping-pong entry (ENGINE_PP_*): the code of "sm90 wg2 s3 pp k128 wsr" through its extern "C" wrapper.
static void engine_pp_launch(dim3 grid, int threads, int smem, const Problem& P, __nv_bfloat16* out) {
    attention_prefill_paged_bf16_d128_sm90a_pingpong<<<grid, threads, smem>>>(
        P.q, P.k, P.v, out, P.info, P.dtable, P.pool_blocks, NQ, NKV, 1.f / sqrtf((float)HD), P.tm_k, P.tm_v);
}

static Variant engine_pp_variant() {
    const int smem = sm90::smem_bytes(sm90::ENGINE_TMA_WGS, sm90::ENGINE_PP_STAGES, sm90::ENGINE_PP_KT);
    CK(cudaFuncSetAttribute(attention_prefill_paged_bf16_d128_sm90a_pingpong, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    Variant v{"sm90a engine pp entry", nullptr, 64 * sm90::ENGINE_TMA_WGS, sm90::ENGINE_PP_THREADS, smem};
    v.tma_launch = engine_pp_launch;
    v.tma_kernel = reinterpret_cast<const void*>(attention_prefill_paged_bf16_d128_sm90a_pingpong);
    return v;
}

int main(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, sm_%d%d\n", prop.name, prop.multiProcessorCount, prop.major, prop.minor);

    // The current kernel: 8 warps, 128 rows per block, 2 stages of padded K/V tiles (AttentionOps.PrefillSmemBytes).
    const int ref_smem = 2 * 2 * 64 * (HD + 8) * 2;
    CK(cudaFuncSetAttribute(attention_prefill_paged_bf16_d128, cudaFuncAttributeMaxDynamicSharedMemorySize, ref_smem));
    Variant ref{"mma.sync (current)", attention_prefill_paged_bf16_d128, 128, 256, ref_smem};

    // Simplest first: if one dies with a CUDA error the context is gone, and the ones before it have printed.
    //   <warpgroups, stages, overlap, min blocks per SM>
    // The engine's entry (kernels/sm90a): the same code as "sm90 wg1 s2", through its extern "C" wrapper.
    const int engine_smem = sm90::smem_bytes(sm90::ENGINE_WGS, sm90::ENGINE_STAGES);
    CK(cudaFuncSetAttribute(attention_prefill_paged_bf16_d128_sm90a, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            engine_smem));
    std::vector<Variant> all = {
        Variant{"sm90a engine entry", attention_prefill_paged_bf16_d128_sm90a, 64 * sm90::ENGINE_WGS, 128, engine_smem},
        sm90_variant<1, 2, false, 2>("sm90 wg1 s2"),       // the fallback: 1 warpgroup, no overlap
        sm90_variant<2, 2, false, 1>("sm90 wg2 s2"),       // 2 consumer warpgroups share each K/V tile
        sm90_variant<1, 3, true, 2>("sm90 wg1 s3 ovl"),    // + softmax overlapped with P V
        sm90_variant<2, 3, true, 1>("sm90 wg2 s3 ovl"),
        sm90_variant<2, 4, true, 1>("sm90 wg2 s4 ovl"),
        sm90_variant<1, 2, false, 2, true>("sm90 wg1 s2 qreg"),   // Q in registers: S = Q K^T in the RS form
        sm90_variant<1, 3, false, 2>("sm90 wg1 s3"),              // a third ring stage (if two blocks still fit)
        sm90_variant<1, 3, false, 2, true>("sm90 wg1 s3 qreg"),
        sm90_variant<1, 3, true, 2, true>("sm90 wg1 s3 ovl qreg"),
        // K and V by TMA (one thread issues a tile's four boxes; the others only wait on the stage's mbarrier)
        sm90_tma_variant<1, 2, false, 2>("sm90 wg1 s2 tma"),
        sm90_tma_variant<1, 2, false, 2, true>("sm90 wg1 s2 qreg tma"),
        sm90_tma_variant<1, 3, true, 2, true>("sm90 wg1 s3 ovl qreg tma"),
        sm90_tma_variant<2, 2, false, 1>("sm90 wg2 s2 tma"),
        sm90_tma_variant<2, 3, true, 1>("sm90 wg2 s3 ovl tma"),
        engine_tma_variant(),
        // + a producer warp and the two warpgroups' products in turns (ping-pong, session 19)
        sm90_tma_variant<2, 2, true, 1, false, true>("sm90 wg2 s2 pp"),
        sm90_tma_variant<2, 3, true, 1, false, true>("sm90 wg2 s3 pp"),
        sm90_tma_variant<2, 4, true, 1, false, true>("sm90 wg2 s4 pp"),
        sm90_tma_variant<2, 3, true, 1, true, true>("sm90 wg2 s3 qreg pp"),  // spills at 224 registers: serialized
        engine_pp_variant(),
        // + 128-key tiles (two KV blocks a tile: FlashAttention-3's 128 x 128 for head_dim 128; session 19)
        sm90_tma_variant<2, 2, true, 1, false, true, 128>("sm90 wg2 s2 pp k128"),
        sm90_tma_variant<2, 3, true, 1, false, true, 128>("sm90 wg2 s3 pp k128"),
        // + a producer warpgroup handing its registers to the consumers (setmaxnreg 24 / 240; session 19)
        sm90_tma_variant<2, 3, true, 1, false, true, 64, true>("sm90 wg2 s3 pp wsr"),
        sm90_tma_variant<2, 3, true, 1, true, true, 64, true>("sm90 wg2 s3 qreg pp wsr"),
        sm90_tma_variant<2, 2, true, 1, false, true, 128, true>("sm90 wg2 s2 pp k128 wsr"),
        sm90_tma_variant<2, 3, true, 1, false, true, 128, true>("sm90 wg2 s3 pp k128 wsr"),
        sm90_tma_variant<2, 2, true, 1, true, true, 128, true>("sm90 wg2 s2 qreg pp k128 wsr"),
        sm90_tma_variant<2, 3, true, 1, true, true, 128, true>("sm90 wg2 s3 qreg pp k128 wsr"),  // 595.7 vs 613.8 (s20)
    };
    std::vector<Variant> vars;
    // The filter: substrings separated by '|', a variant runs if its name contains any of them.
    auto chosen = [&](const char* name) {
        if (!filter) return true;
        for (const char* f = filter;;) {
            const char* bar = strchr(f, '|');
            const std::string part(f, bar ? (size_t)(bar - f) : strlen(f));
            if (!part.empty() && strstr(name, part.c_str())) return true;
            if (!bar) return false;
            f = bar + 1;
        }
    };
    for (auto& v : all)
        if (chosen(v.name)) vars.push_back(v);
    for (auto& v : vars) {
        int occ = 0;
        const void* k = v.tma_kernel ? v.tma_kernel : reinterpret_cast<const void*>(v.fn);
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, v.threads, v.smem));
        printf("%-22s %3d threads, %6d B smem, %d blocks/SM\n", v.name, v.threads, v.smem, occ);
    }

    __nv_bfloat16* out;
    CK(cudaMalloc(&out, (size_t)16384 * NQ * HD * 2));

    // "once": one launch of each chosen variant at T=16384, no checks (for ncu: --launch-count per variant).
    if (argc > 2 && strcmp(argv[2], "once") == 0) {
        Problem P(16384, 0, 7);
        for (auto& v : vars) launch(v, P, out);
        CK(cudaDeviceSynchronize());
        printf("once: %zu launch(es) at T=16384\n", vars.size());
        return 0;
    }

    // ---- correctness
    bool all_pass = true;
    // {60, 37} and {130, 0}: a 128-row block whose second warpgroup has no rows (the ping-pong variants' turns and
    // releases without products)
    struct Case { int T, start; bool cpu; } cases[] = {{256, 0, true}, {256, 100, true}, {200, 37, true}, {60, 37, true},
                                                       {130, 0, true}, {2048, 0, false}};
    for (auto& c : cases) {
        Problem P(c.T, c.start, 1000 + c.T + c.start);
        printf("check T=%d on top of %d cached positions:\n", c.T, c.start);
        const std::vector<float> r = run_to_host(ref, P, out);
        if (c.cpu) {
            const std::vector<float> cpu = cpu_reference(P);
            const double e = rel_err(r, cpu);
            printf("  %-22s vs cpu   rel %.2e  %s\n", ref.name, e, e <= 1e-2 ? "PASS" : "FAIL");
            for (auto& v : vars) {
                const double ev = rel_err(run_to_host(v, P, out), cpu);
                printf("  %-22s vs cpu   rel %.2e  %s\n", v.name, ev, ev <= 1e-2 ? "PASS" : "FAIL");
                if (!(ev <= 1e-2)) v.ok = false;
            }
        }
        for (auto& v : vars) {
            const double e = rel_err(run_to_host(v, P, out), r);
            printf("  %-22s vs current rel %.2e  %s\n", v.name, e, e <= 1e-2 ? "PASS" : "FAIL");
            if (!(e <= 1e-2)) v.ok = false;
        }
    }
    for (auto& v : vars) all_pass &= v.ok;

    // ---- timing
    // (T, start): from 0 at 2k and 16k, and the last 4096-row chunk of a 16k prompt as the engine runs it (its
    // PrefillChunk is 4096: every row sees 12k+ keys).
    const int timed[][2] = {{2048, 0}, {16384, 0}, {4096, 12288}};
    for (const auto& tc : timed) {
        const int T = tc[0];
        Problem P(T, tc[1], 7);
        const int reps = T > 4096 ? 5 : 20;
        const float base = time_ms(ref, P, out, reps);
        printf("T=%5d+%-5d %-22s %8.3f ms  %6.1f TFLOP/s\n", T, tc[1], ref.name, base, P.flops() / base / 1e9);
        // Two passes, the list forward then backward, and the faster of each variant's two: prefill is power-bound on
        // these cards, and a variant timed right after long, slow ones ran ~7% slow (session 19: the engine's entry
        // 509 TFLOP/s after the list's slow variants, 546 alone).
        std::vector<float> best(vars.size(), 1e30f);
        for (int pass = 0; pass < 2; ++pass)
            for (size_t n = 0; n < vars.size(); ++n) {
                const size_t i = pass == 0 ? n : vars.size() - 1 - n;
                if (vars[i].ok) best[i] = std::min(best[i], time_ms(vars[i], P, out, reps));
            }
        for (size_t i = 0; i < vars.size(); ++i) {
            const Variant& v = vars[i];
            if (!v.ok) {
                printf("T=%5d+%-5d %-22s (failed the check, not timed)\n", T, tc[1], v.name);
                continue;
            }
            const float ms = best[i];
            printf("T=%5d+%-5d %-22s %8.3f ms  %6.1f TFLOP/s  x%.2f\n", T, tc[1], v.name, ms, P.flops() / ms / 1e9, base / ms);
        }
    }
    printf("%s\n", all_pass ? "ALL PASS" : "SOME FAILED");
    return all_pass ? 0 : 1;
}

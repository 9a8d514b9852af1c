// Micro-benchmark of the paged decode attention (kernels/attention_decode.cu): the split kernel over the bf16 or fp8
// cache and the combine after it, launched as AttentionOps launches them (grid (slots, nkv), the step's plan from the
// same dealing as AttentionOps.PlanDecodeSplits), at QwQ's shape (nq 40, nkv 8, D 128), one layer a launch, cycling
// over enough layers (copies of the pool) that L2 never serves a timed read. Why: the engine's `--profile-step` times
// a layer's split kernel inside a whole step (33 us for the fp8 cache at 32k on an H200), which is slow to iterate on;
// here one call runs every batch, context and blocks-per-SM setting in a minute, against a plain streaming read.
// Written in session 16 to measure the levers in bench/NOTES.md (session 16: more chains in flight an SM), first run in
// session 17 (bench/results/…-c924166-decode-micro.txt); variants of the split kernel belong in a header beside this
// file (bench/micro/README.md: not in kernels/).
// Not part of the build. On the GPU machine (CUDA 12+/13, H100/H200):
//   nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/attndec bench/micro/attention_decode.cu && /tmp/attndec
// Optional arguments: a substring of the configuration names to run only those (e.g. "fp8 b1"), then "once" to launch
// each chosen configuration once at its default blocks per SM and nothing else (for ncu:
// ncu --kernel-name regex:attention_decode_paged /tmp/attndec "fp8 b1 32768" once).
// What it does, per configuration (cache kind, batch B, context C, every row at C):
//   1. correctness: out poisoned with NaN, one launch, then rows 0 and B-1 (every head) against a CPU fp64 reference
//      over the same pool (fp8: codes times their scales): PASS when ||out - ref|| / ||ref|| <= 2e-2 and no NaN.
//   2. timing: split + combine, and the split kernel alone, per layer, at 1..4 blocks a multiprocessor (the engine's
//      default is marked: 2 for bf16 at D 128, 4 for fp8); the bytes a layer reads (K and V, and fp8's scales, of the
//      rows' contexts) over the time, against the streaming read.
// Exit code 0 = every configuration passed, 1 = some failed, 2 = CUDA error.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../kernels/attention_decode.cu"
#include "harness.cuh"
#include "stream_read.cuh"

namespace {

constexpr int NQ = 40, NKV = 8, HD = 128, BLK = 64;
constexpr int MAX_SPLITS = 256;  // AttentionOps.MaxDecodeSplits

__global__ void fill_uniform_bf16(__nv_bfloat16* p, long long n, uint32_t seed, float lo, float hi) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const uint32_t h = hash32((uint32_t)i * 2654435761u ^ hash32(seed + (uint32_t)(i >> 32)));
        p[i] = __float2bfloat16(lo + (hi - lo) * (h >> 8) * (1.0f / 16777216.0f));
    }
}

__global__ void fill_uniform_f32(float* p, long long n, uint32_t seed, float lo, float hi) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const uint32_t h = hash32((uint32_t)i * 2654435761u ^ hash32(seed + (uint32_t)(i >> 32)));
        p[i] = lo + (hi - lo) * (h >> 8) * (1.0f / 16777216.0f);
    }
}

float bf16_to_float(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// e4m3 (bias 7, no infinities; the fills never write the NaN codes): normal (8 + m) 2^(e - 10), subnormal m 2^-9.
float e4m3_to_float(uint8_t c) {
    const int e = (c >> 3) & 15, m = c & 7;
    const float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return (c & 0x80) ? -v : v;
}

// AttentionOps.PlanDecodeSplits: the fewest key tiles per split such that every row's splits fit the slots.
void plan_splits(const std::vector<int>& ctx, int max_ctx, int slots, std::vector<int4>& rows_out,
                 std::vector<int4>& work_out) {
    const int rows = (int)ctx.size();
    std::vector<int> tiles(rows);
    long long total = 0;
    int longest = 1;
    for (int r = 0; r < rows; ++r) {
        tiles[r] = (std::clamp(ctx[r], 0, max_ctx) + BLK - 1) / BLK;
        total += tiles[r];
        longest = std::max(longest, tiles[r]);
    }
    auto splits_at = [&](int per) {
        int n = 0;
        for (int t : tiles) n += std::max(1, (t + per - 1) / per);
        return n;
    };
    int lo = (int)std::clamp<long long>((total + slots - 1) / slots, 1, longest), hi = longest;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (splits_at(mid) <= slots) hi = mid;
        else lo = mid + 1;
    }
    rows_out.assign(rows, make_int4(0, 0, 0, 0));
    work_out.assign(slots, make_int4(-1, 0, 0, 0));
    int next = 0;
    const int chunk = lo * BLK;
    for (int r = 0; r < rows; ++r) {
        const int splits = std::max(1, (tiles[r] + lo - 1) / lo), c = std::clamp(ctx[r], 0, max_ctx);
        rows_out[r] = make_int4(next, splits, chunk, c);
        for (int i = 0; i < splits; ++i, ++next) work_out[next] = make_int4(r, i, chunk, c);
    }
}

struct Config {
    bool fp8;
    int batch, ctx;
    char name[64];
};

struct Pool {  // `layers` copies of one layer's pool: K, V [blocks, nkv, 64, D] (+ fp8 scales [blocks, nkv, 64])
    int blocks = 0, layers = 0;
    size_t elem = 0;  // bytes per cache element
    unsigned char *k = nullptr, *v = nullptr;
    float *ks = nullptr, *vs = nullptr;
    size_t kv_layer_bytes() const { return (size_t)blocks * NKV * BLK * HD * elem; }
    size_t scale_layer_count() const { return (size_t)blocks * NKV * BLK; }
    const unsigned char* K(int l) const { return k + (size_t)l * kv_layer_bytes(); }
    const unsigned char* V(int l) const { return v + (size_t)l * kv_layer_bytes(); }
    const float* KS(int l) const { return ks ? ks + (size_t)l * scale_layer_count() : nullptr; }
    const float* VS(int l) const { return vs ? vs + (size_t)l * scale_layer_count() : nullptr; }
};

int split_smem(bool fp8) {
    return fp8 ? attn_decode::split_smem_bytes_fp8<HD>() : attn_decode::split_smem_bytes<HD>();
}

// AttentionOps.DecodeBlocksPerSmFor: the split blocks one multiprocessor holds at once as the runtime counts them for
// this build (registers and shared memory), at most 4 (the fp8 kernel's ~160 registers fit 3, not its ring's 4).
int default_blocks_per_sm(bool fp8) {
    int n = 0;
    const cudaError_t rc = fp8 ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attention_decode_paged_fp8_d128,
                                                                               attn_decode::THREADS, split_smem(true))
                               : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attention_decode_paged_bf16_d128,
                                                                               attn_decode::THREADS, split_smem(false));
    if (rc != cudaSuccess) {
        fprintf(stderr, "cudaOccupancyMaxActiveBlocksPerMultiprocessor: %s\n", cudaGetErrorString(rc));
        exit(2);
    }
    return std::clamp(n, 1, 4);
}

void launch_split(bool fp8, const Pool& P, int layer, int slots, const __nv_bfloat16* q, float* part_o,
                  float2* part_ml, __nv_bfloat16* out, const int* tables, const int4* work, int max_blocks, float scale) {
    const dim3 grid(slots, NKV);
    if (fp8)
        attention_decode_paged_fp8_d128<<<grid, attn_decode::THREADS, split_smem(true)>>>(
            q, P.K(layer), P.V(layer), P.KS(layer), P.VS(layer), part_o, part_ml, out, tables, work, max_blocks, NQ, NKV,
            scale);
    else
        attention_decode_paged_bf16_d128<<<grid, attn_decode::THREADS, split_smem(false)>>>(
            q, reinterpret_cast<const __nv_bfloat16*>(P.K(layer)), reinterpret_cast<const __nv_bfloat16*>(P.V(layer)),
            part_o, part_ml, out, tables, work, max_blocks, NQ, NKV, scale);
}

void launch_combine(int batch, const float* part_o, const float2* part_ml, __nv_bfloat16* out, const int4* rows,
                    int max_ctx) {
    attention_decode_combine_bf16<<<dim3(NQ, batch), dim3(HD, attn_decode::COMBINE_GROUPS)>>>(part_o, part_ml, out, rows,
                                                                                                NQ, HD, max_ctx);
}

// ||got - ref|| / ||ref|| over rows `check` of out [B, NQ, HD], the reference in fp64 from the host copy of layer 0.
double check_rows(const Config& c, const Pool& P, const std::vector<int>& table, int max_blocks,
                  const std::vector<uint16_t>& q, const std::vector<uint16_t>& out, float scale, bool& finite) {
    const size_t n_elems = (size_t)P.blocks * NKV * BLK * HD;
    std::vector<unsigned char> hk(n_elems * P.elem), hv(n_elems * P.elem);
    std::vector<float> hks, hvs;
    CK(cudaMemcpy(hk.data(), P.K(0), hk.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hv.data(), P.V(0), hv.size(), cudaMemcpyDeviceToHost));
    if (c.fp8) {
        hks.resize(P.scale_layer_count());
        hvs.resize(P.scale_layer_count());
        CK(cudaMemcpy(hks.data(), P.KS(0), hks.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hvs.data(), P.VS(0), hvs.size() * 4, cudaMemcpyDeviceToHost));
    }
    auto at = [&](const std::vector<unsigned char>& pool, const std::vector<float>& scales, int b, int h, int pos, int d) {
        const size_t row = ((size_t)table[(size_t)b * max_blocks + pos / BLK] * NKV + h) * BLK + pos % BLK;
        if (c.fp8) return (double)e4m3_to_float(pool[row * HD + d]) * scales[row];
        uint16_t u;
        memcpy(&u, &pool[(row * HD + d) * 2], 2);
        return (double)bf16_to_float(u);
    };
    double num = 0, den = 0;
    finite = true;
    const int group = NQ / NKV;
    std::vector<double> K((size_t)c.ctx * HD), V((size_t)c.ctx * HD), s(c.ctx), ref(HD);
    for (int b : {0, c.batch - 1}) {
        for (int h = 0; h < NKV; ++h) {
            // this row's keys and values of KV head h, dequantized once for its group of query heads
            for (int pos = 0; pos < c.ctx; ++pos)
                for (int d = 0; d < HD; ++d) {
                    K[(size_t)pos * HD + d] = at(hk, hks, b, h, pos, d);
                    V[(size_t)pos * HD + d] = at(hv, hvs, b, h, pos, d);
                }
            for (int hq = h * group; hq < (h + 1) * group; ++hq) {
                const uint16_t* qr = &q[((size_t)b * NQ + hq) * HD];
                double mx = -1e300;
                for (int pos = 0; pos < c.ctx; ++pos) {
                    double dot = 0;
                    for (int d = 0; d < HD; ++d) dot += bf16_to_float(qr[d]) * K[(size_t)pos * HD + d];
                    s[pos] = dot * scale;
                    mx = std::max(mx, s[pos]);
                }
                double l = 0;
                for (double& x : s) l += (x = std::exp(x - mx));
                std::fill(ref.begin(), ref.end(), 0.0);
                for (int pos = 0; pos < c.ctx; ++pos)
                    for (int d = 0; d < HD; ++d) ref[d] += s[pos] * V[(size_t)pos * HD + d];
                for (int d = 0; d < HD; ++d) {
                    const double r = ref[d] / l;
                    const double got = bf16_to_float(out[((size_t)b * NQ + hq) * HD + d]);
                    if (!std::isfinite(got)) finite = false;
                    num += (got - r) * (got - r);
                    den += r * r;
                }
            }
        }
        if (c.batch == 1) break;
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

int main(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    const bool once = argc > 2 && strcmp(argv[2], "once") == 0;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount;
    printf("%s, %d SMs, sm_%d%d\n", prop.name, sms, prop.major, prop.minor);
    for (bool fp8 : {false, true}) {
        const int smem = split_smem(fp8);
        if (fp8) CK(cudaFuncSetAttribute(attention_decode_paged_fp8_d128, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        else CK(cudaFuncSetAttribute(attention_decode_paged_bf16_d128, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        printf("%s split kernel: %d B of shared memory, %d blocks a multiprocessor by default\n", fp8 ? "fp8" : "bf16",
               smem, default_blocks_per_sm(fp8));
    }

    // The roofline: a plain streaming read of 1 GiB.
    double read_tbs = 0;
    if (!once) {
        const long long n = (1LL << 30) / 16;
        uint4* buf;
        uint32_t* sink;
        CK(cudaMalloc(&buf, n * 16));
        CK(cudaMalloc(&sink, 4));
        CK(cudaMemset(buf, 1, n * 16));
        LaunchTimer t;
        const float us = t.best_us(4, [&](int) { read_k<<<sms * 8, 512>>>(buf, n, sink); });
        read_tbs = n * 16.0 / us / 1e6;
        printf("streaming read: %.2f TB/s\n", read_tbs);
        CK(cudaFree(buf));
        CK(cudaFree(sink));
    }

    std::vector<Config> configs;
    const std::pair<int, int> shapes[] = {{1, 1024}, {1, 32768}, {8, 1024}, {8, 32768}, {32, 1024}, {32, 4096}};  // (batch, context)
    for (bool fp8 : {false, true})
        for (auto [b, ctx] : shapes) {
            Config c{fp8, b, ctx, {}};
            snprintf(c.name, sizeof c.name, "%s b%d %d", fp8 ? "fp8" : "bf16", b, ctx);
            configs.push_back(c);
        }
    bool all_pass = true;
    const float scale = 1.f / sqrtf((float)HD);
    for (const Config& c : configs) {
        if (filter && !strstr(c.name, filter)) continue;
        // pool: every row's blocks, shuffled, and one spare (what spare table entries name)
        const int row_blocks = (c.ctx + BLK - 1) / BLK, max_blocks = row_blocks + 1;  // a spare table entry, as the engine has
        Pool P;
        P.blocks = c.batch * row_blocks + 1;
        P.elem = c.fp8 ? 1 : 2;
        // >= ~400 MB between two reads of one layer (the engine's 64 layers at 1k are ~140 MB, some of it in L2)
        P.layers = once ? 1 : (int)std::clamp<size_t>(400000000 / (P.kv_layer_bytes() * 2) + 1, 8, 1024);
        CK(cudaMalloc(&P.k, P.kv_layer_bytes() * P.layers));
        CK(cudaMalloc(&P.v, P.kv_layer_bytes() * P.layers));
        const long long elems = (long long)(P.kv_layer_bytes() * P.layers / P.elem);
        if (c.fp8) {
            fill_e4m3_codes<<<sms * 8, 256>>>(reinterpret_cast<uint32_t*>(P.k), elems / 4, 11u);
            fill_e4m3_codes<<<sms * 8, 256>>>(reinterpret_cast<uint32_t*>(P.v), elems / 4, 12u);
            const long long ns = (long long)P.scale_layer_count() * P.layers;
            CK(cudaMalloc(&P.ks, ns * 4));
            CK(cudaMalloc(&P.vs, ns * 4));
            // codes up to 448: scales ~1/448 keep keys and values within about +-1, as QwQ's are after the rope
            fill_uniform_f32<<<sms * 8, 256>>>(P.ks, ns, 13u, 0.5f / 448, 1.5f / 448);
            fill_uniform_f32<<<sms * 8, 256>>>(P.vs, ns, 14u, 0.5f / 448, 1.5f / 448);
        } else {
            fill_uniform_bf16<<<sms * 8, 256>>>(reinterpret_cast<__nv_bfloat16*>(P.k), elems, 11u, -1.f, 1.f);
            fill_uniform_bf16<<<sms * 8, 256>>>(reinterpret_cast<__nv_bfloat16*>(P.v), elems, 12u, -1.f, 1.f);
        }
        CK(cudaGetLastError());
        std::vector<int> table((size_t)c.batch * max_blocks);
        {
            std::vector<int> perm(P.blocks);
            for (int i = 0; i < P.blocks; ++i) perm[i] = i;
            HostRandom rng;
            for (int i = P.blocks - 1; i > 0; --i) std::swap(perm[i], perm[(int)(rng.uniform() * (i + 1)) % (i + 1)]);
            for (int b = 0; b < c.batch; ++b)
                for (int i = 0; i < max_blocks; ++i)
                    table[(size_t)b * max_blocks + i] = i < row_blocks ? perm[(size_t)b * row_blocks + i] : perm.back();
        }
        HostRandom qrng;
        const std::vector<uint16_t> hq = qrng.bf16((size_t)c.batch * NQ * HD, -1.f, 1.f);
        __nv_bfloat16* q = reinterpret_cast<__nv_bfloat16*>(device_copy(hq));
        int* tables = device_copy(table);
        const int max_slots = std::max(c.batch, std::min(4 * sms / NKV, MAX_SPLITS));
        float* part_o;
        float2* part_ml;
        __nv_bfloat16* out;
        CK(cudaMalloc(&part_o, (size_t)max_slots * NQ * HD * 4));
        CK(cudaMalloc(&part_ml, (size_t)max_slots * NQ * 8));
        CK(cudaMalloc(&out, (size_t)c.batch * NQ * HD * 2));
        const std::vector<int> ctx(c.batch, c.ctx);
        const int max_ctx = max_blocks * BLK;
        const size_t bytes = (size_t)c.batch * c.ctx * NKV * HD * 2 * P.elem + (c.fp8 ? (size_t)c.batch * c.ctx * NKV * 8 : 0);

        for (int bps = 1; bps <= 4; ++bps) {
            const bool is_default = bps == default_blocks_per_sm(c.fp8);
            if (once && !is_default) continue;
            const int slots = std::max(c.batch, std::clamp(bps * sms / NKV, 1, MAX_SPLITS));
            std::vector<int4> rows, work;
            plan_splits(ctx, max_ctx, slots, rows, work);
            int4* d_rows = device_copy(rows);
            int4* d_work = device_copy(work);
            auto step = [&](int layer, bool combine) {
                launch_split(c.fp8, P, layer, slots, q, part_o, part_ml, out, tables, d_work, max_blocks, scale);
                if (combine) launch_combine(c.batch, part_o, part_ml, out, d_rows, max_ctx);
            };
            if (is_default || once) {  // correctness at the engine's setting
                CK(cudaMemset(out, 0xFF, (size_t)c.batch * NQ * HD * 2));  // NaN
                step(0, true);
                CK(cudaDeviceSynchronize());
                if (!once) {
                    std::vector<uint16_t> hout((size_t)c.batch * NQ * HD);
                    CK(cudaMemcpy(hout.data(), out, hout.size() * 2, cudaMemcpyDeviceToHost));
                    bool finite;
                    const double rel = check_rows(c, P, table, max_blocks, hq, hout, scale, finite);
                    const bool pass = finite && rel <= 2e-2;
                    all_pass &= pass;
                    printf("%-16s check rows 0 and %d: rel %.2e%s  %s\n", c.name, c.batch - 1, rel, finite ? "" : " (NaN)",
                           pass ? "PASS" : "FAIL");
                }
            }
            if (!once) {
                LaunchTimer t;
                const float both = t.best_us(P.layers, [&](int l) { step(l, true); });
                const float split = t.best_us(P.layers, [&](int l) { step(l, false); });
                const int splits = rows[0].y;
                printf("%-16s %d a SM%s: %3d slots (%3d splits a row of %4d keys)  split+combine %7.1f us  split %7.1f us  "
                       "%5.2f TB/s  (%2.0f%% of the read)\n",
                       c.name, bps, is_default ? "*" : " ", slots, splits, rows[0].z, both, split, bytes / both / 1e6,
                       100.0 * bytes / both / 1e6 / read_tbs);
            }
            CK(cudaFree(d_rows));
            CK(cudaFree(d_work));
        }
        CK(cudaFree(P.k));
        CK(cudaFree(P.v));
        if (P.ks) CK(cudaFree(P.ks));
        if (P.vs) CK(cudaFree(P.vs));
        CK(cudaFree(q));
        CK(cudaFree(tables));
        CK(cudaFree(part_o));
        CK(cudaFree(part_ml));
        CK(cudaFree(out));
    }
    printf(once ? "launched once\n" : all_pass ? "ALL PASS\n" : "SOME FAILED\n");
    return all_pass ? 0 : 1;
}

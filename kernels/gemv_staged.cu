// Tensor-core GEMV over bf16 weights for 5..32 rows of x, with W staged through shared memory: y[m, n] (+)=
// sum_k W[n, k] * x[m, k], fp32 accumulation. At 8 rows every register-fed kernel we tried (gemv_mma_bf16,
// gemv_tc_bf16, cuBLAS, cuBLASLt) reads the weights at ~2.6 TB/s, while the CUDA-core GEMV for 1-4 rows reaches
// ~2.85 TB/s by reading 512 contiguous bytes of one row per warp-wide load. This kernel keeps that access pattern
// and still does the math on the tensor cores:
//   * a warp owns a 16-row tile (the mma's M); the batch is the mma's N in NB tiles of 8 rows;
//   * each stage holds 256 k of the tile's 16 rows (8 KB): 16 cp.async instructions, each 512 contiguous bytes of one
//     row (lane l: bytes 16l..16l+15), straight to shared memory (no registers held while the bytes are in flight);
//   * kStages stages per warp in flight (cp.async groups), each warp its own pipeline (no block barriers);
//   * A fragments come from shared memory with ldmatrix.x4; 16-byte chunks are XOR-swizzled by row (chunk ^ row % 8)
//     so the 8 rows an ldmatrix phase reads (512 bytes apart) fall in different banks;
//   * the 4 warps of a block walk the same k range (x from L1), blockIdx.y splits k, and split partials are added by
//     the tile's last warp in a fixed order (deterministic), as in gemv_tc.cu.
// Requirements (host-checked): k % 256 == 0, W / x 16-byte aligned. Dynamic shared memory: 4 x kStages x 8 KB.
#include "common.cuh"
#include "mma.cuh"

namespace {
constexpr int kStWarps = 4;
constexpr int kStK = 256;                       // k per stage
constexpr int kStRowBytes = kStK * 2;           // 512
constexpr int kStStageBytes = 16 * kStRowBytes; // 8 KB
constexpr int kStStages = 3;

template <int NB>
__device__ __forceinline__ void gemv_staged_body(const __nv_bfloat16* __restrict__ w, const __nv_bfloat16* __restrict__ x,
                                                 float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets,
                                                 int n, int k, int m, int accumulate) {
    extern __shared__ __align__(128) uint8_t smem[];
    constexpr int kOut = 16 * 8 * NB;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int tile = blockIdx.x * kStWarps + warp, splits = gridDim.y;
    const int row0 = tile * 16;
    if (row0 >= n) return;  // no block-wide barriers below
    const uint32_t mine = mma::smem_addr(smem + warp * kStStages * kStStageBytes);
    const uint8_t* wbytes = reinterpret_cast<const uint8_t*>(w);
    const int steps = k / kStK;
    const int s_begin = (int)((long)steps * blockIdx.y / splits), s_end = (int)((long)steps * (blockIdx.y + 1) / splits);
    const int nst = s_end - s_begin;

    // Stage `st` (k from st * 256) of the tile's 16 rows into buffer b: row r's 16-byte chunk `lane` goes to chunk
    // lane ^ (r % 8) of the buffer's row r. Rows past n read nothing and write zeros.
    auto issue = [&](int st, int b) {
        const size_t kbyte = (size_t)st * kStRowBytes + lane * 16;
        const uint32_t base = mine + b * kStStageBytes;
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const bool ok = row0 + r < n;
            const uint8_t* src = wbytes + (size_t)(ok ? row0 + r : row0) * (size_t)k * 2 + kbyte;
            mma::cp_async16(base + r * kStRowBytes + ((lane ^ (r & 7)) * 16), src, ok);
        }
    };

    const uint32_t* xw[NB];  // x rows as 32-bit words (bf16 pairs)
    bool xok[NB];
#pragma unroll
    for (int j = 0; j < NB; ++j) {
        xok[j] = 8 * j + g < m;
        xw[j] = reinterpret_cast<const uint32_t*>(x + (size_t)(xok[j] ? 8 * j + g : 0) * k) + t4;
    }
    float c[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;

    // ldmatrix.x4 address of this lane for k16-step j: matrices (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi),
    // (rows 8-15, k hi) = the mma's a0..a3.
    const int lr = ((lane >> 3) & 1) * 8 + (lane & 7), lhi = lane >> 4;

#pragma unroll
    for (int p = 0; p < kStStages - 1; ++p) {
        if (p < nst) issue(s_begin + p, p);
        mma::cp_async_commit();
    }
    for (int i = 0; i < nst; ++i) {
        mma::cp_async_wait<kStStages - 2>();  // stage i has landed
        __syncwarp();
        if (i + kStStages - 1 < nst) issue(s_begin + i + kStStages - 1, (i + kStStages - 1) % kStStages);  // the buffer computed last
        mma::cp_async_commit();
        const uint32_t base = mine + (i % kStStages) * kStStageBytes;
        const int kw = (s_begin + i) * kStK / 2;  // word index of the stage's first k
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            uint32_t a[4];
            const int chunk = 2 * j + lhi;
            mma::ldmatrix_x4(a[0], a[1], a[2], a[3], base + lr * kStRowBytes + ((chunk ^ (lr & 7)) * 16));
#pragma unroll
            for (int jb = 0; jb < NB; ++jb) {
                const uint32_t b0 = xok[jb] ? __ldg(xw[jb] + kw + 8 * j) : 0u;      // k = 16j + 2t4, +1
                const uint32_t b1 = xok[jb] ? __ldg(xw[jb] + kw + 8 * j + 4) : 0u;  // k = 16j + 2t4 + 8, +9
                mma::mma_bf16_16816(c[jb], a, b0, b1);
            }
        }
        __syncwarp();  // every lane is done reading this buffer before it is refilled
    }
    mma::cp_async_wait<0>();

    // C fragment of batch tile j: c0, c1 = (row g, batches 8j + 2t4, +1), c2, c3 = (row g + 8, same batches).
    if (splits > 1) {
        float* out = part + ((size_t)tile * splits + blockIdx.y) * kOut;
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) out[(j * 4 + e) * 32 + lane] = c[j][e];
        __threadfence();
        __syncwarp();
        int last = 0;
        if (lane == 0) last = atomicAdd(tickets + tile, 1) == splits - 1;
        last = __shfl_sync(0xFFFFFFFFu, last, 0);
        if (!last) return;
        __threadfence();
        const float* all = part + (size_t)tile * splits * kOut;
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float s = 0.f;
                for (int sp = 0; sp < splits; ++sp) s += __ldcg(all + (size_t)sp * kOut + (j * 4 + e) * 32 + lane);
                c[j][e] = s;
            }
        if (lane == 0) tickets[tile] = 0;
    }
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = row0 + g + (e >= 2 ? 8 : 0), b = 8 * j + 2 * t4 + (e & 1);
            if (b < m && row < n) {
                float* dst = y + (size_t)b * n + row;
                *dst = accumulate ? *dst + c[j][e] : c[j][e];
            }
        }
}
}  // namespace

// Launch: grid (ceil(n / 64), splits), block 128 threads, dynamic shared memory 4 * kStStages * 8 KB (96 KB).
// part / tickets: as gemv_tc (fp32 [tiles, splits, 128 * NB], int32 [tiles], zero before the first launch).
#define QWQ_GEMV_STAGED(SUFFIX, NB)                                                                                 \
    extern "C" __global__ void __launch_bounds__(kStWarps * 32, 2)                                                  \
    gemv_staged_bf16_##SUFFIX(const __nv_bfloat16* __restrict__ w, const __nv_bfloat16* __restrict__ x,             \
                              float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n,    \
                              int k, int m, int accumulate) {                                                       \
        gemv_staged_body<NB>(w, x, y, part, tickets, n, k, m, accumulate);                                          \
    }

QWQ_GEMV_STAGED(n8, 1)
QWQ_GEMV_STAGED(n16, 2)
QWQ_GEMV_STAGED(n32, 4)

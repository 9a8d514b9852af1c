// Candidate replacements for gemv_fp8_body (kernels/gemv_fp8.cu), for bench/micro/fp8_gemv.cu. Kept in bench/micro,
// not kernels/: build.sh hashes every kernels/*.cuh into every PTX stamp, so a new header there would fail the CPU
// test that checks the committed PTX. Include after kernels/gemv_fp8.cu (uses common.cuh and fp8.cuh).
//
// One templated body, every knob a template parameter (see bench/micro/fp8_gemv.cu for why each is tried):
//   M      rows of x (1..4)
//   U      64-k chunks a warp loads before its math (2 x 16 B per chunk per lane: U = 4 -> 128 B per lane in flight)
//   WARPS  warps per block (4: 128 threads, as now; 8: 256)
//   KW     warps per 16-row tile inside a block (1: as now, each warp streams its own tile; 2, 4, 8: the warps of a
//          tile take turns over its k range in groups of U chunks, so a tile is read KW * U KB at a time, contiguous,
//          and fewer tiles are open at once; partial sums meet in shared memory in warp order)
//   PIPE   0: load U chunks, then math (as now); 1: register double buffer, the next U chunks are loaded before the
//          math of the current ones, so each warp always has a batch in flight
//   CVT    0: e4m3 -> fp32 exactly (fp8x4_to_f32x4: hardware cvt on sm_89+); 1: integer route without the rescale:
//          e4m3 bits moved into bf16/fp32 bits give value * 2^-120 exactly, and the 2^120 is folded into the per-row
//          scale at the end (y = scale * (acc * 2^120)); fp32 FMA keeps denormals (no -ftz), so this differs from
//          CVT 0 only by rounding when |acc| < 2^-6 (then the absolute error is at most ~2^-30 per FMA)
//   LD     weight loads: 0 ld.global.nc.L1::no_allocate (as now); 1 the same + L2::evict_first cache policy;
//          2 the same + L2::256B prefetch hint
//   XS     0: x read as bf16 through L1 (__ldg, as now); 1: the block's k range of x converted once to fp32 in
//          dynamic shared memory (M * 64 * chunks-per-split * 4 bytes), read back as float4 without bank conflicts
// Grid: items = groups * splits (group = WARPS / KW tiles); block b walks items b, b + gridDim, ...: launched with
// one block per item (grid (groups, splits)) it is the usual grid; with fewer blocks (SMs * resident blocks) it is
// persistent (no wave tail). Split partials are added by the tile's last warp in split order, as in gemv_fp8.cu:
// deterministic. Requirements: k % 64 == 0, x 16-byte aligned; part / tickets as gemv_fp8.cu (zero before the first
// launch, left zero).
#pragma once

namespace fp8v2 {

template <int LD>
__device__ __forceinline__ uint4 ld_w(const uint8_t* p, uint64_t policy) {
    uint4 v;
    if constexpr (LD == 1) {
        asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p), "l"(policy));
    } else if constexpr (LD == 2) {
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(p));
    } else {
        v = ld_stream_u4(p);
    }
    return v;
}

// 4 e4m3 (one word, element 0 in the low byte) -> 4 fp32. CVT 0: exact values. CVT 1: exact values times 2^-120
// (the bf16 bit move of fp8x4_to_bf16x4 without its FMA, then bf16 -> fp32 by shift / mask).
template <int CVT>
__device__ __forceinline__ void cvt4(uint32_t v, float* f) {
    if constexpr (CVT == 0) {
        fp8x4_to_f32x4(v, f);
    } else {
        uint32_t a = __byte_perm(v, 0, 0x1404);  // [0, b0, 0, b1]
        uint32_t b = __byte_perm(v, 0, 0x3424);  // [0, b2, 0, b3]
        a = ((a >> 4) & 0x07F007F0u) | (a & 0x80008000u);
        b = ((b >> 4) & 0x07F007F0u) | (b & 0x80008000u);
        f[0] = __uint_as_float(a << 16); f[1] = __uint_as_float(a & 0xFFFF0000u);
        f[2] = __uint_as_float(b << 16); f[3] = __uint_as_float(b & 0xFFFF0000u);
    }
}

// Where element kk (0..63) of a chunk sits in the staged fp32 x (XS 1): lane (g, t4) reads its 16 values as
// [h][t4][8], so the 4 distinct float4 addresses of a warp-wide read fall in different banks.
__host__ __device__ constexpr int xs_pos(int kk) { return ((kk >> 3) & 1) * 32 + (kk >> 4) * 8 + (kk & 7); }

// Dynamic shared memory the XS 1 variant needs for this shape and split count (0 for XS 0).
template <int M, int XS>
__host__ __device__ size_t smem_bytes(int k, int splits) {
    if (XS == 0) return 0;
    const int chunks = k / 64, per = (chunks + splits - 1) / splits;
    return (size_t)M * per * 64 * sizeof(float);
}

template <int M, int U, int WARPS, int KW, int PIPE, int CVT, int LD, int XS>
__device__ __forceinline__ void body(const uint8_t* __restrict__ w, const float* __restrict__ scale,
                                     const __nv_bfloat16* __restrict__ x, float* __restrict__ y,
                                     float* __restrict__ part, int* __restrict__ tickets, int n, int k, int accumulate,
                                     int splits) {
    static_assert(WARPS % KW == 0, "KW must divide WARPS");
    constexpr int TPB = WARPS / KW;
    extern __shared__ float4 xs_dyn[];
    __shared__ float red[WARPS][16 * M];
    float* xs = reinterpret_cast<float*>(xs_dyn);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int kw = warp % KW, tslot = warp / KW;
    const int tiles = (n + 15) / 16, groups = (tiles + TPB - 1) / TPB, items = groups * splits;
    const int chunks = k / 64;
    uint64_t policy = 0;
    if constexpr (LD == 1) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));

    kernel_entry_barrier();

    for (int item = blockIdx.y * gridDim.x + blockIdx.x; item < items; item += gridDim.x * gridDim.y) {
        const int group = item % groups, split = item / groups;
        const int tile = group * TPB + tslot;
        const bool valid = tile < tiles;  // no early exit: the block meets at barriers below
        const int c_begin = (int)((long)chunks * split / splits), c_end = (int)((long)chunks * (split + 1) / splits);

        if constexpr (XS == 1) {
            __syncthreads();  // the previous item's reads of xs are done
            const int len = (c_end - c_begin) * 64;
            const uint16_t* xb = reinterpret_cast<const uint16_t*>(x);
            for (int i = threadIdx.x; i < M * len / 8; i += WARPS * 32) {
                const int m = i / (len / 8), e = (i % (len / 8)) * 8;  // 8 consecutive k of row m
                float f[8];
                unpack_bf16x8(ld_ro_u4(xb + (size_t)m * k + (size_t)c_begin * 64 + e), f);
                float* dst = xs + (size_t)m * len + (e & ~63) + xs_pos(e & 63);  // e % 8 == 0: 8 consecutive slots
                reinterpret_cast<float4*>(dst)[0] = make_float4(f[0], f[1], f[2], f[3]);
                reinterpret_cast<float4*>(dst)[1] = make_float4(f[4], f[5], f[6], f[7]);
            }
            __syncthreads();
        }

        float acc[M][2];
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = 0.f;

        if (valid) {
            const uint8_t* wt = w + (size_t)tile * 16 * k + lane * 16;
            const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x) + 16 * t4;
            const int len = (c_end - c_begin) * 64;

            auto math = [&](const uint4& va, const uint4& vb, int ch) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    float wa[8], wb[8];
                    cvt4<CVT>(h ? va.z : va.x, wa);
                    cvt4<CVT>(h ? va.w : va.y, wa + 4);
                    cvt4<CVT>(h ? vb.z : vb.x, wb);
                    cvt4<CVT>(h ? vb.w : vb.y, wb + 4);
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        float xf[8];
                        if constexpr (XS == 1) {
                            const float4* p = reinterpret_cast<const float4*>(xs + (size_t)m * len + (ch - c_begin) * 64 + h * 32 + t4 * 8);
                            const float4 p0 = p[0], p1 = p[1];
                            xf[0] = p0.x; xf[1] = p0.y; xf[2] = p0.z; xf[3] = p0.w;
                            xf[4] = p1.x; xf[5] = p1.y; xf[6] = p1.z; xf[7] = p1.w;
                        } else {
                            unpack_bf16x8(ld_ro_u4(xbits + (size_t)m * k + (size_t)ch * 64 + 8 * h), xf);
                        }
#pragma unroll
                        for (int j = 0; j < 8; ++j) {
                            acc[m][0] = fmaf(wa[j], xf[j], acc[m][0]);
                            acc[m][1] = fmaf(wb[j], xf[j], acc[m][1]);
                        }
                    }
                }
            };
            auto load = [&](int b, uint4 (&va)[U], uint4 (&vb)[U]) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    if (b + u < c_end) {
                        const uint8_t* p = wt + (size_t)(b + u) * 1024;
                        va[u] = ld_w<LD>(p, policy);
                        vb[u] = ld_w<LD>(p + 512, policy);
                    } else {
                        va[u] = make_uint4(0, 0, 0, 0);
                        vb[u] = make_uint4(0, 0, 0, 0);
                    }
                }
            };
            auto compute = [&](int b, const uint4 (&va)[U], const uint4 (&vb)[U]) {
#pragma unroll
                for (int u = 0; u < U; ++u)
                    if (b + u < c_end) math(va[u], vb[u], b + u);
            };

            constexpr int S = KW * U;  // chunks between a warp's batches
            if constexpr (PIPE == 0) {
                for (int b = c_begin + kw * U; b < c_end; b += S) {
                    uint4 va[U], vb[U];
                    load(b, va, vb);
                    compute(b, va, vb);
                }
            } else {
                uint4 a0[U], b0[U], a1[U], b1[U];
                int b = c_begin + kw * U;
                if (b < c_end) load(b, a0, b0);
                for (; b < c_end; b += 2 * S) {
                    if (b + S < c_end) load(b + S, a1, b1);
                    compute(b, a0, b0);
                    if (b + S >= c_end) break;
                    if (b + 2 * S < c_end) load(b + 2 * S, a0, b0);
                    compute(b + S, a1, b1);
                }
            }
        }

        fp8_quad_sum<M>(acc);  // kernels/gemv_fp8.cu: lane (g, 0) then holds rows g and g + 8
        if constexpr (KW > 1) {
            if (t4 == 0) {
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    red[warp][m * 16 + g] = acc[m][0];
                    red[warp][m * 16 + 8 + g] = acc[m][1];
                }
            }
            __syncthreads();
            if (kw == 0) {  // in warp order: deterministic
#pragma unroll
                for (int m = 0; m < M; ++m)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        float s = 0.f;
#pragma unroll
                        for (int q = 0; q < KW; ++q) s += red[warp + q][m * 16 + r * 8 + g];
                        acc[m][r] = s;
                    }
            }
            __syncthreads();  // red is free for the next item
        }

        if (!valid || kw != 0) continue;
        if (splits > 1) {
            float* mine = part + ((size_t)tile * splits + split) * (16 * M);
            if (t4 == 0) {
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    mine[m * 16 + g] = acc[m][0];
                    mine[m * 16 + 8 + g] = acc[m][1];
                }
            }
            if (!warp_takes_last_ticket(tickets + tile, splits)) continue;
            const float* all = part + (size_t)tile * splits * (16 * M);
#pragma unroll
            for (int m = 0; m < M; ++m)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float s = 0.f;
                    for (int sp = 0; sp < splits; ++sp) s += __ldcg(all + (size_t)sp * 16 * M + m * 16 + r * 8 + g);
                    acc[m][r] = s;
                }
            if (lane == 0) tickets[tile] = 0;
        }
        if (t4 == 0) {
            const int row0 = tile * 16;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = row0 + g + 8 * r;
                if (row >= n) continue;
                const float s = scale[row];
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const float v = CVT == 1 ? s * (acc[m][r] * 0x1p120f) : s * acc[m][r];
                    float* dst = y + (size_t)m * n + row;
                    *dst = accumulate ? *dst + v : v;
                }
            }
        }
    }
}

// Benchmark entry: MINB is the launch-bounds minimum of resident blocks (register budget 65536 / (MINB * 32 * WARPS)).
template <int M, int U, int WARPS, int KW, int PIPE, int CVT, int LD, int XS, int MINB>
__global__ void __launch_bounds__(WARPS * 32, MINB)
gemv_fp8_v2(const uint8_t* __restrict__ w, const float* __restrict__ scale, const __nv_bfloat16* __restrict__ x,
            float* __restrict__ y, float* __restrict__ part, int* __restrict__ tickets, int n, int k, int accumulate,
            int splits) {
    body<M, U, WARPS, KW, PIPE, CVT, LD, XS>(w, scale, x, y, part, tickets, n, k, accumulate, splits);
}

}  // namespace fp8v2

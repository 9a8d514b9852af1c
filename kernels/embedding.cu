// Token embedding lookup: out[t, :] = fp32(table[ids[t], :]). Starts the fp32 residual stream.
#include "common.cuh"

// Launch: grid.x = tokens, block = 256 threads (strided over the row).
// Out-of-range ids produce a NaN row so a host-side bug cannot silently pass as a valid embedding.
extern "C" __global__ void __launch_bounds__(256)
embedding_gather_bf16(const __nv_bfloat16* __restrict__ table,  // [vocab, hidden]
                      const int* __restrict__ ids,              // [tokens]
                      float* __restrict__ out,                  // [tokens, hidden]
                      int vocab, int hidden) {
    kernel_entry_barrier();
    const int t = blockIdx.x;
    const int id = ids[t];
    float* dst = out + (size_t)t * hidden;
    if (id < 0 || id >= vocab) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __int_as_float(0x7FC00000);
        return;
    }
    const uint16_t* src = reinterpret_cast<const uint16_t*>(table) + (size_t)id * hidden;
    if ((hidden & 7) == 0 && is_aligned(src, 16) && is_aligned(dst, 16)) {
        for (int c = threadIdx.x; c < (hidden >> 3); c += blockDim.x) {
            float f[8];
            unpack_bf16x8(ld_ro_u4(src + c * 8), f);
            float4* d = reinterpret_cast<float4*>(dst + c * 8);
            d[0] = make_float4(f[0], f[1], f[2], f[3]);
            d[1] = make_float4(f[4], f[5], f[6], f[7]);
        }
    } else {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = bf16_bits_to_float(src[i]);
    }
}

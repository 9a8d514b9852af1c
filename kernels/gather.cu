// Row gather: dst[r, :] = src[rows[r], :]. Used to run lm_head only on the positions whose logits are needed.
#include "common.cuh"

// Launch: grid.x = R (number of gathered rows), block = 256 threads.
// Out-of-range row indices produce a NaN row (0x7FC0 in bf16) instead of reading out of bounds.
extern "C" __global__ void __launch_bounds__(256)
gather_rows_bf16(const __nv_bfloat16* __restrict__ src,  // [T, hidden]
                 const int* __restrict__ rows,           // [R], each in [0, T)
                 __nv_bfloat16* __restrict__ dst,        // [R, hidden]
                 int t_rows, int hidden) {
    kernel_entry_barrier();
    const int r = blockIdx.x;
    const int row = rows[r];
    uint16_t* d = reinterpret_cast<uint16_t*>(dst) + (size_t)r * hidden;
    if (row < 0 || row >= t_rows) {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) d[i] = 0x7FC0;
        return;
    }
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src) + (size_t)row * hidden;
    if ((hidden & 7) == 0 && is_aligned(s, 16) && is_aligned(d, 16)) {
        for (int c = threadIdx.x; c < (hidden >> 3); c += blockDim.x)
            reinterpret_cast<uint4*>(d)[c] = ld_ro_u4(s + c * 8);
    } else {
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) d[i] = s[i];
    }
}

// Row scatter: dst_rows[r][dst_offset + c] = src[r * src_stride + c] for c < cols, fp32 rows: each sequence of a step
// takes its logits row into its own buffer in one launch instead of one copy call per sequence. With tensor parallel
// the rows come from a rank's shard of the vocabulary (src_stride its padded width, dst_offset its first id).
// Launch: grid = (R, ceil(cols / (256 * 4))), block 256.
extern "C" __global__ void __launch_bounds__(256)
scatter_rows_f32(const float* __restrict__ src,      // [R, src_stride]
                 long long src_stride,
                 float* const* __restrict__ dst_rows, // [R] device pointers, each to dst_offset + cols floats
                 long long dst_offset,
                 int cols) {
    kernel_entry_barrier();
    const int r = blockIdx.x;
    const float* s = src + (size_t)r * src_stride;
    float* d = dst_rows[r] + dst_offset;
    const int base = blockIdx.y * blockDim.x * 4 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int i = base + k * blockDim.x;
        if (i < cols) d[i] = s[i];
    }
}

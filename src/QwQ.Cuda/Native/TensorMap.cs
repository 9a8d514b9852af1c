using System.Runtime.CompilerServices;

namespace QwQ.Cuda.Native;

/// <summary>
/// A TMA tensor map (the driver's CUtensorMap: 128 opaque bytes that the driver fills and the GPU's copy engine reads),
/// passed to a kernel by value as a <c>__grid_constant__</c> parameter: the launch's argument array points at it and
/// the driver copies it into the parameter space, so where this copy lives on the host does not matter there.
/// <see cref="EncodeBf16Rows"/> builds the one the sm_90a prefill attention reads its K and V tiles through.
/// </summary>
[InlineArray(16)]
internal struct TensorMap
{
    private ulong _element0;

    /// <summary>
    /// A map over <paramref name="rows"/> rows of <paramref name="rowElements"/> bf16 at <paramref name="address"/> (the
    /// rows contiguous), read in boxes of <paramref name="boxRows"/> rows × 64 elements (128 bytes) with the 128-byte
    /// swizzle: the layout kernels/sm90a/attention_prefill_sm90a.cu gives a 64-dim half of a tile. Host-only work
    /// (microseconds; no allocation). Throws naming cuTensorMapEncodeTiled and the driver's message on failure.
    /// </summary>
    public static unsafe TensorMap EncodeBf16Rows(ulong address, ulong rows, int rowElements, int boxRows)
    {
        if (address == 0 || (address & 15) != 0) throw new ArgumentException($"address 0x{address:x} must be non-null and 16-byte aligned", nameof(address));
        if (rowElements < 64 || rowElements % 64 != 0) throw new ArgumentOutOfRangeException(nameof(rowElements), rowElements, "a multiple of 64");
        if (boxRows is < 1 or > 256) throw new ArgumentOutOfRangeException(nameof(boxRows), boxRows, "1 to 256 (the box limit)");
        if (rows is 0 or > 1UL << 32) throw new ArgumentOutOfRangeException(nameof(rows), rows, "1 to 2^32 (the map's limit)");
        // The driver wants the map 64-byte aligned: encode into an aligned scratch and copy out.
        byte* raw = stackalloc byte[128 + 64];
        var aligned = (TensorMap*)(((nuint)raw + 63) & ~(nuint)63);
        ulong* dims = stackalloc ulong[] { (ulong)rowElements, rows };
        ulong* strides = stackalloc ulong[] { (ulong)rowElements * 2 };
        uint* box = stackalloc uint[] { 64, (uint)boxRows };
        uint* elementStrides = stackalloc uint[] { 1, 1 };
        CudaErrors.Check(CudaDriverApi.cuTensorMapEncodeTiled(aligned, CudaDriverApi.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, address,
            dims, strides, box, elementStrides, CudaDriverApi.CU_TENSOR_MAP_INTERLEAVE_NONE, CudaDriverApi.CU_TENSOR_MAP_SWIZZLE_128B,
            CudaDriverApi.CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CudaDriverApi.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), "cuTensorMapEncodeTiled");
        return *aligned;
    }
}

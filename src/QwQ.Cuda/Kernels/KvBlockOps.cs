using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Copy-on-write of paged KV blocks (kernels/kv_blocks.cu): many (source, destination) pairs of one pool, every layer
/// and plane, in one launch rather than one copy per (block, layer, plane).
/// </summary>
internal sealed class KvBlockOps(PtxLibrary lib)
{
    [KernelEntry] public const string CopyBlocksEntry = "kv_copy_blocks";

    /// <summary>Planes a pool layer may have (fp8: K codes, V codes, K scales, V scales).</summary>
    public const int MaxPlanes = 4;

    private readonly CudaKernel _copyBlocks = lib.GetKernel(CopyBlocksEntry);

    /// <summary>The kernel's plane table, by value (mirrors struct KvPlanes in kernels/kv_blocks.cu).</summary>
    private unsafe struct Planes
    {
        public fixed long Offset[MaxPlanes];
        public fixed long BlockBytes[MaxPlanes];
    }

    /// <summary>
    /// Copies <paramref name="count"/> blocks, pairs int32 [count, 2] (source, destination) on the device, in every one of
    /// <paramref name="layers"/> layers (<paramref name="layerBytes"/> apart from <paramref name="pool"/>) and every plane
    /// (<paramref name="planeOffsets"/> within a layer, blocks <paramref name="planeBlockBytes"/> apart; multiples of 16).
    /// </summary>
    public unsafe void CopyBlocks(CudaStream s, ulong pool, long layerBytes, int layers, ReadOnlySpan<long> planeOffsets,
        ReadOnlySpan<long> planeBlockBytes, ulong pairs, int count)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(pool, 16, nameof(pool));
        LaunchChecks.Aligned(pairs, 4, nameof(pairs));
        LaunchChecks.Positive(count, nameof(count));
        LaunchChecks.Positive(layers, nameof(layers));
        int planeCount = planeOffsets.Length;
        if (planeCount < 1 || planeCount > MaxPlanes || planeBlockBytes.Length != planeCount)
            throw new ArgumentException($"1 to {MaxPlanes} planes, an offset and a block size each");
        var planes = new Planes();
        for (int p = 0; p < planeCount; p++)
        {
            if (planeOffsets[p] % 16 != 0 || planeBlockBytes[p] % 16 != 0 || planeBlockBytes[p] <= 0)
                throw new ArgumentException($"plane {p}: offset {planeOffsets[p]} and block bytes {planeBlockBytes[p]} must be multiples of 16");
            planes.Offset[p] = planeOffsets[p];
            planes.BlockBytes[p] = planeBlockBytes[p];
        }
        if (layerBytes % 16 != 0) throw new ArgumentException($"layer bytes {layerBytes} must be a multiple of 16", nameof(layerBytes));
        void** args = stackalloc void*[] { &pool, &layerBytes, &planes, &planeCount, &pairs };
        _copyBlocks.Launch(new Dim3((uint)count, (uint)layers), new Dim3(256), 0, s, args);
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// The paged KV cache's device memory: <see cref="Blocks"/> blocks of <see cref="AttentionOps.KvBlockSize"/>
/// positions, shared by every sequence (docs/ENGINE_V2.md). Which block belongs to whom is host bookkeeping
/// (<c>Batching.KvBlockPool</c>); this class only knows where a block's bytes are and how they are stored
/// (<see cref="Kind"/>), and hands the kernels one layer at a time (<see cref="Layer"/>).
/// <para>
/// Per layer, the pool is a few planes, each [blocks, n_kv_heads, 64, ...] so that a block's rows of one head are
/// contiguous (an attention key tile is one read): bf16 K and V [blocks, nkv, 64, head_dim]; fp8 (docs/KV_CACHE.md)
/// K codes and V codes [blocks, nkv, 64, head_dim] bytes, then K scales and V scales [blocks, nkv, 64] fp32. Keeping
/// the scales in planes of their own, rather than beside each block's codes, lets both kinds address a row the same way
/// (<c>attn::KvLayout::tile_row</c>, in elements of one row or of one scale), and keeps every code row 16-byte aligned
/// for cp.async; a block copy is then one copy per plane.
/// </para>
/// </summary>
internal sealed class KvPool : IDisposable
{
    private readonly DeviceBuffer _buffer;
    private readonly long[] _planeBlockBytes; // bytes of one block in each plane of a layer, in plane order
    private readonly long[] _planeOffset;     // where each plane starts within a layer
    private readonly long _layerBytes;

    public int Blocks { get; }
    public int Layers { get; }

    /// <summary>Bytes from one layer's planes to the next's (every plane of layer l is l × this past layer 0's).</summary>
    public long LayerBytes => _layerBytes;

    /// <summary>How K and V are stored: bf16, or e4m3 codes with one fp32 scale per position and KV head.</summary>
    public KvCacheKind Kind { get; }

    public KvPool(ModelConfig c, int blocks, KvCacheKind kind = KvCacheKind.Bf16)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blocks, 1);
        Blocks = blocks;
        Layers = c.NumHiddenLayers;
        Kind = kind;
        _planeBlockBytes = PlaneBlockBytes(c, kind);
        _planeOffset = new long[_planeBlockBytes.Length];
        for (int p = 1; p < _planeOffset.Length; p++) _planeOffset[p] = _planeOffset[p - 1] + _planeBlockBytes[p - 1] * blocks;
        _layerBytes = _planeBlockBytes.Sum() * blocks;
        _buffer = DeviceBuffer.Allocate(_layerBytes * Layers);
    }

    /// <summary>
    /// Bytes of one block in each plane of one layer: bf16 K, V [n_kv_heads, 64, head_dim] × 2; fp8 K codes, V codes
    /// [n_kv_heads, 64, head_dim] × 1, K scales, V scales [n_kv_heads, 64] × 4.
    /// </summary>
    private static long[] PlaneBlockBytes(ModelConfig c, KvCacheKind kind)
    {
        long rows = (long)c.NumKeyValueHeads * AttentionOps.KvBlockSize;
        return kind switch
        {
            KvCacheKind.Bf16 => [rows * c.HeadDim * 2, rows * c.HeadDim * 2],
            KvCacheKind.Fp8 => [rows * c.HeadDim, rows * c.HeadDim, rows * KvCacheFp8.ScaleBytes, rows * KvCacheFp8.ScaleBytes],
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "bf16 or fp8"),
        };
    }

    /// <summary>Device bytes one block takes over all layers, K and V (and fp8's scales).</summary>
    public static long BytesPerBlock(ModelConfig c, KvCacheKind kind = KvCacheKind.Bf16) => PlaneBlockBytes(c, kind).Sum() * c.NumHiddenLayers;

    /// <summary>
    /// Device bytes one position takes over all layers: <see cref="KvCacheFp8.BytesPerPositionPerLayer"/> × layers
    /// (QwQ-32B: 256 KiB in bf16, 132 KiB in fp8).
    /// </summary>
    public static long BytesPerToken(ModelConfig c, KvCacheKind kind = KvCacheKind.Bf16) =>
        KvCacheFp8.BytesPerPositionPerLayer(c, kind) * c.NumHiddenLayers;

    /// <summary>Layer <paramref name="layer"/> as the rope and attention kernels take it.</summary>
    public KvLayer Layer(int layer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, Layers);
        ulong Plane(int p) => _buffer.Ptr + (ulong)(layer * _layerBytes + _planeOffset[p]);
        return Kind == KvCacheKind.Fp8 ? KvLayer.Fp8(Plane(0), Plane(1), Plane(2), Plane(3)) : KvLayer.Bf16(Plane(0), Plane(1));
    }

    /// <summary>
    /// Copy-on-write of many blocks in one launch: <paramref name="count"/> (source, destination) pairs, int32 [count, 2]
    /// on the device, every layer and plane (<see cref="KvBlockOps"/>).
    /// </summary>
    public void CopyBlocks(KvBlockOps ops, CudaStream s, ulong pairs, int count) =>
        ops.CopyBlocks(s, _buffer.Ptr, _layerBytes, Layers, _planeOffset, _planeBlockBytes, pairs, count);

    public void Dispose() => _buffer.Dispose();
}

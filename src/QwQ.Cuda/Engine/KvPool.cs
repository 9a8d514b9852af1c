using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// The paged KV cache's device memory: <see cref="Blocks"/> blocks of <see cref="AttentionOps.KvBlockSize"/>
/// positions, shared by every sequence (docs/ENGINE_V2.md). Which block belongs to whom is host bookkeeping
/// (<c>Batching.KvBlockPool</c>); this class only knows where a block's bytes are.
/// Per layer, K and V are each bf16 [blocks, n_kv_heads, 64, head_dim]: a block's keys of one head are contiguous,
/// so an attention key tile is one 16 KiB read.
/// </summary>
internal sealed class KvPool : IDisposable
{
    private readonly DeviceBuffer _buffer;
    private readonly long _layerStride; // bytes of one layer's K (same for V)
    private readonly long _blockStride; // bytes of one block within one layer's K

    public int Blocks { get; }
    public int Layers { get; }

    public KvPool(ModelConfig c, int blocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blocks, 1);
        Blocks = blocks;
        Layers = c.NumHiddenLayers;
        _blockStride = BlockBytesPerLayerHalf(c);
        _layerStride = _blockStride * blocks;
        _buffer = DeviceBuffer.Allocate(2 * _layerStride * Layers);
    }

    /// <summary>Bytes of one block's K (or V) in one layer: [n_kv_heads, 64, head_dim] bf16.</summary>
    private static long BlockBytesPerLayerHalf(ModelConfig c) => 2L * c.NumKeyValueHeads * AttentionOps.KvBlockSize * c.HeadDim;

    /// <summary>Device bytes one block takes over all layers, K and V.</summary>
    public static long BytesPerBlock(ModelConfig c) => 2 * BlockBytesPerLayerHalf(c) * c.NumHiddenLayers;

    /// <summary>K of layer <paramref name="layer"/>: bf16 [blocks, n_kv_heads, 64, head_dim].</summary>
    public ulong K(int layer) => _buffer.Ptr + (ulong)(2 * layer * _layerStride);

    /// <summary>V of layer <paramref name="layer"/>: bf16 [blocks, n_kv_heads, 64, head_dim].</summary>
    public ulong V(int layer) => _buffer.Ptr + (ulong)((2 * layer + 1) * _layerStride);

    /// <summary>Copy-on-write: block <paramref name="src"/>'s K and V of every layer into block <paramref name="dst"/>.</summary>
    public void CopyBlock(int src, int dst, CudaStream s)
    {
        for (int half = 0; half < 2 * Layers; half++)
        {
            long layerBase = half * _layerStride;
            _buffer.CopyFromDevice(_buffer.Ptr + (ulong)(layerBase + src * _blockStride), _blockStride, layerBase + dst * _blockStride, s);
        }
    }

    public void Dispose() => _buffer.Dispose();
}

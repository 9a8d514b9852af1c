using QwQ.Cuda.Config;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// bf16 K and V for every layer, preallocated for <see cref="Capacity"/> positions. Each layer's K (and V) is
/// [n_kv_heads, capacity, head_dim]: one KV head's positions are contiguous, so prefill and decode attention
/// stream them with plain 16-byte loads.
/// </summary>
internal sealed class KvCache : IDisposable
{
    private readonly DeviceBuffer _buffer;
    private readonly long _layerStride; // bytes of one layer's K (same for V)

    public int Capacity { get; }
    public int Layers { get; }

    public KvCache(ModelConfig c, int capacity)
    {
        Capacity = capacity;
        Layers = c.NumHiddenLayers;
        _layerStride = 2L * c.NumKeyValueHeads * capacity * c.HeadDim;
        _buffer = DeviceBuffer.Allocate(2 * _layerStride * Layers);
    }

    /// <summary>K of layer <paramref name="layer"/>: bf16 [n_kv_heads, capacity, head_dim].</summary>
    public ulong K(int layer) => _buffer.Ptr + (ulong)(2 * layer * _layerStride);

    /// <summary>V of layer <paramref name="layer"/>: bf16 [n_kv_heads, capacity, head_dim].</summary>
    public ulong V(int layer) => _buffer.Ptr + (ulong)((2 * layer + 1) * _layerStride);

    public void Dispose() => _buffer.Dispose();
}

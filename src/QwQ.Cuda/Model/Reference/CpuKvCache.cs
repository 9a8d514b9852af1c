using QwQ.Cuda.Config;

namespace QwQ.Cuda.Model.Reference;

/// <summary>fp32 K and V per layer, each <c>[capacity, nkv, D]</c> (position-major, unlike the GPU's head-major cache).</summary>
internal sealed class CpuKvCache
{
    private readonly float[][] _k, _v;
    private readonly int _row; // nkv * D

    public int Capacity { get; }

    public CpuKvCache(ModelConfig c, int capacity)
    {
        Capacity = capacity;
        _row = c.KvDim;
        _k = new float[c.NumHiddenLayers][];
        _v = new float[c.NumHiddenLayers][];
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            _k[l] = new float[(long)capacity * _row];
            _v[l] = new float[(long)capacity * _row];
        }
    }

    /// <summary>Writes k, v <c>[T, nkv, D]</c> at positions startPos...</summary>
    public void Store(int layer, int startPos, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        if (startPos < 0 || startPos * _row + k.Length > _k[layer].Length)
            throw new InvalidOperationException($"KV cache holds {Capacity} positions; cannot store past it");
        k.CopyTo(_k[layer].AsSpan(startPos * _row));
        v.CopyTo(_v[layer].AsSpan(startPos * _row));
    }

    public ReadOnlySpan<float> Keys(int layer, int positions) => _k[layer].AsSpan(0, positions * _row);
    public ReadOnlySpan<float> Values(int layer, int positions) => _v[layer].AsSpan(0, positions * _row);
}

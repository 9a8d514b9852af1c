using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// The CPU reference's paged KV memory: one fp32 array per block of a <see cref="KvBlockPool"/>, each
/// <c>[layers, 2 (K, V), nkv, B, D]</c> (head-major within a block, like the GPU's). A block's array is allocated
/// on its first write and kept for reuse, so a big pool costs only what is used. A block is written only by the one
/// table that owns it exclusively (see <see cref="KvBlockTable.Reserve"/>).
/// <para>
/// With <see cref="KvCacheKind.Fp8"/> every K and V head vector is quantized as it is stored (<see cref="KvCacheFp8"/>:
/// e4m3 codes and one scale amax / 448) and the block keeps the dequantized floats, code × scale: exactly the values an
/// fp8 cache gives attention back, held as fp32 here because the arithmetic is what the reference defines, not the bytes.
/// Copies (copy-on-write, forks, the prefix cache) move those values as they are, as a GPU copies codes and scales.
/// </para>
/// </summary>
internal sealed class CpuKvBlocks
{
    private readonly float[]?[] _blocks; // [TotalBlocks] each [layers, 2, nkv, B, D] fp32, null until first written
    private readonly int _layers, _nkv, _headDim, _blockSize;

    public CpuKvBlocks(ModelConfig c, int totalBlocks, int blockSize = KvBlockPool.DefaultBlockSize, KvCacheKind kind = KvCacheKind.Bf16)
    {
        if (kind is not (KvCacheKind.Bf16 or KvCacheKind.Fp8)) throw new ArgumentOutOfRangeException(nameof(kind), kind, "bf16 or fp8");
        Pool = new KvBlockPool(totalBlocks, blockSize);
        _blocks = new float[]?[totalBlocks];
        (_layers, _nkv, _headDim, _blockSize) = (c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, blockSize);
        Kind = kind;
    }

    /// <summary>A pool of exactly enough default-size blocks for <paramref name="positions"/> positions.</summary>
    public static CpuKvBlocks ForPositions(ModelConfig c, long positions, KvCacheKind kind = KvCacheKind.Bf16) =>
        new(c, checked((int)((positions + KvBlockPool.DefaultBlockSize - 1) / KvBlockPool.DefaultBlockSize)), kind: kind);

    public KvBlockPool Pool { get; }

    /// <summary>How K and V are stored: as computed (fp32), or rounded through the fp8 format as they are written.</summary>
    public KvCacheKind Kind { get; }

    /// <summary>The copy-on-write callback for <see cref="KvBlockTable.Reserve"/>.</summary>
    public void CopyBlock(int source, int destination)
    {
        if (_blocks[source] is not { } src) return; // never written: nothing anyone may read
        src.CopyTo(_blocks[destination] ??= new float[src.Length], 0);
    }

    /// <summary>Writes k, v <c>[T, nkv, D]</c> of positions startPos.. into the table's blocks.</summary>
    public void Store(KvBlockTable table, int layer, int startPos, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        int row = _nkv * _headDim, tokens = k.Length / row;
        if (startPos + tokens > table.Length)
            throw new InvalidOperationException($"positions up to {startPos + tokens} are not reserved (the table backs {table.Length})");
        for (int t = 0; t < tokens; t++)
        {
            int pos = startPos + t;
            var block = _blocks[table.Blocks[pos / _blockSize]] ??= new float[_layers * 2 * _nkv * _blockSize * _headDim];
            for (int h = 0; h < _nkv; h++)
            {
                var kDst = block.AsSpan(Offset(layer, 0, h, pos % _blockSize), _headDim);
                var vDst = block.AsSpan(Offset(layer, 1, h, pos % _blockSize), _headDim);
                k.Slice(t * row + h * _headDim, _headDim).CopyTo(kDst);
                v.Slice(t * row + h * _headDim, _headDim).CopyTo(vDst);
                if (Kind == KvCacheKind.Fp8)
                {
                    // quantize at append (one scale per (position, head) vector), dequantize for every later read
                    KvCacheFp8.RoundTrip(kDst);
                    KvCacheFp8.RoundTrip(vDst);
                }
            }
        }
    }

    /// <summary>Reads positions [0, positions) of the table's K and V into contiguous <c>[positions, nkv, D]</c>.</summary>
    public void Gather(KvBlockTable table, int layer, int positions, Span<float> k, Span<float> v)
    {
        int row = _nkv * _headDim;
        for (int pos = 0; pos < positions; pos++)
        {
            var block = _blocks[table.Blocks[pos / _blockSize]]
                        ?? throw new InvalidOperationException($"position {pos} was reserved but never written");
            for (int h = 0; h < _nkv; h++)
            {
                block.AsSpan(Offset(layer, 0, h, pos % _blockSize), _headDim).CopyTo(k.Slice(pos * row + h * _headDim, _headDim));
                block.AsSpan(Offset(layer, 1, h, pos % _blockSize), _headDim).CopyTo(v.Slice(pos * row + h * _headDim, _headDim));
            }
        }
    }

    /// <summary>
    /// Turns the keys of positions [0, <paramref name="positions"/>), every layer and head, from <paramref name="from"/>'s
    /// rotation into <paramref name="to"/>'s, in place (<see cref="AdaptiveYarn"/>). The table must own those blocks
    /// exclusively (<see cref="KvBlockTable.Reserve"/> from 0 first): another sequence or the prefix cache would otherwise see
    /// its keys turn under it. An fp8 cache turns the dequantized keys and quantizes each again (a new scale): close to,
    /// but not exactly, what a recompute in the new rope writes (that is only a measured alternative, see RopeSwitchMethod).
    /// </summary>
    public void RerotateKeys(KvBlockTable table, int positions, RopeParameters from, RopeParameters to)
    {
        if (positions > table.Length)
            throw new InvalidOperationException($"positions up to {positions} are not backed (the table backs {table.Length})");
        int half = _headDim / 2;
        var cos = new double[half];
        var sin = new double[half];
        for (int pos = 0; pos < positions; pos++)
        {
            var block = _blocks[table.Blocks[pos / _blockSize]]
                        ?? throw new InvalidOperationException($"position {pos} was reserved but never written");
            AdaptiveYarn.Coefficients(pos, from, to, cos, sin);
            for (int layer = 0; layer < _layers; layer++)
                for (int h = 0; h < _nkv; h++)
                {
                    var key = block.AsSpan(Offset(layer, 0, h, pos % _blockSize), _headDim);
                    AdaptiveYarn.Apply(key, cos, sin);
                    if (Kind == KvCacheKind.Fp8) KvCacheFp8.RoundTrip(key);
                }
        }
    }

    private int Offset(int layer, int kv, int head, int slot) => (((layer * 2 + kv) * _nkv + head) * _blockSize + slot) * _headDim;
}

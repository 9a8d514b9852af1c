using QwQ.Cuda.Config;

namespace QwQ.Cuda.Engine;

/// <summary>Device pointers to one decoder layer's weights, fused for fewer, larger products.</summary>
internal readonly record struct LayerWeights(
    ulong InputNorm,   // bf16 [hidden]
    ulong QkvWeight,   // bf16 [(nq + 2*nkv) * D, hidden]  rows: q, then k, then v
    ulong QkvBias,     // bf16 [(nq + 2*nkv) * D]
    ulong OWeight,     // bf16 [hidden, nq * D]
    ulong PostNorm,    // bf16 [hidden]
    ulong GateUp,      // bf16 [2 * intermediate, hidden]  rows: gate, then up
    ulong Down);       // bf16 [hidden, intermediate]

/// <summary>
/// Where every weight of the model sits in the weights arena. The layout is computed from the config alone,
/// so real checkpoints and synthetic weights fill the same places.
/// </summary>
internal sealed class ModelWeights : IDisposable
{
    private readonly DeviceArena _arena;

    public ulong Embedding { get; }      // bf16 [vocab, hidden]
    public LayerWeights[] Layers { get; }
    public ulong FinalNorm { get; }      // bf16 [hidden]
    public ulong LmHead { get; }         // bf16 [vocab, hidden]; == Embedding when tied
    public long Bytes => _arena.Capacity;

    private ModelWeights(ModelConfig c, DeviceArena arena)
    {
        _arena = arena;
        Embedding = arena.Take(EmbeddingBytes(c));
        Layers = new LayerWeights[c.NumHiddenLayers];
        for (int i = 0; i < Layers.Length; i++)
        {
            Layers[i] = new LayerWeights(
                InputNorm: arena.Take(2L * c.HiddenSize),
                QkvWeight: arena.Take(2L * c.QkvDim * c.HiddenSize),
                QkvBias: arena.Take(2L * c.QkvDim),
                OWeight: arena.Take(2L * c.HiddenSize * c.NumAttentionHeads * c.HeadDim),
                PostNorm: arena.Take(2L * c.HiddenSize),
                GateUp: arena.Take(2L * 2 * c.IntermediateSize * c.HiddenSize),
                Down: arena.Take(2L * c.HiddenSize * c.IntermediateSize));
        }
        FinalNorm = arena.Take(2L * c.HiddenSize);
        LmHead = c.TieWordEmbeddings ? Embedding : arena.Take(EmbeddingBytes(c));
    }

    private static long EmbeddingBytes(ModelConfig c) => 2L * c.VocabSize * c.HiddenSize;

    /// <summary>Device bytes the weights take (bf16, with alignment padding).</summary>
    public static long DeviceBytes(ModelConfig c)
    {
        var sizes = new List<long> { EmbeddingBytes(c) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
            sizes.AddRange([2L * c.HiddenSize, 2L * c.QkvDim * c.HiddenSize, 2L * c.QkvDim,
                2L * c.HiddenSize * c.NumAttentionHeads * c.HeadDim, 2L * c.HiddenSize,
                4L * c.IntermediateSize * c.HiddenSize, 2L * c.HiddenSize * c.IntermediateSize]);
        sizes.Add(2L * c.HiddenSize);
        if (!c.TieWordEmbeddings) sizes.Add(EmbeddingBytes(c));
        return DeviceArena.SizeFor(sizes);
    }

    public void CopyFromHostAsync(ulong dst, IntPtr src, long bytes, Native.CudaStream stream) =>
        _arena.CopyFromHostAsync(dst, src, bytes, stream);

    public static ModelWeights Allocate(ModelConfig c) => new(c, new DeviceArena(DeviceBytes(c)));

    public void Dispose() => _arena.Dispose();
}

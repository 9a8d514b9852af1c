using QwQ.Cuda.Config;

namespace QwQ.Cuda.Engine;

/// <summary>One decoder layer's weights on the device, q/k/v and gate/up fused for fewer, larger products.</summary>
internal readonly record struct LayerWeights(
    ulong InputNorm,      // bf16 [hidden]
    LinearWeight Qkv,     // [(nq + 2*nkv) * D, hidden]  rows: q, then k, then v
    ulong QkvBias,        // bf16 [(nq + 2*nkv) * D]
    LinearWeight O,       // [hidden, nq * D]
    ulong PostNorm,       // bf16 [hidden]
    LinearWeight GateUp,  // [2 * intermediate, hidden]  rows: gate, then up
    LinearWeight Down);   // [hidden, intermediate]

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
    public LinearWeight LmHead { get; }  // [vocab, hidden]; the embedding's bytes when tied
    public long Bytes => _arena.Capacity;

    private ModelWeights(ModelConfig c, DeviceArena arena)
    {
        _arena = arena;
        Embedding = arena.Take(EmbeddingBytes(c));
        Layers = new LayerWeights[c.NumHiddenLayers];
        LinearWeight Linear(int outFeatures, int inFeatures)
        {
            var shape = new LinearWeight(0, outFeatures, inFeatures);
            return shape with { Weight = arena.Take(shape.Bytes) };
        }
        for (int i = 0; i < Layers.Length; i++)
        {
            Layers[i] = new LayerWeights(
                InputNorm: arena.Take(2L * c.HiddenSize),
                Qkv: Linear(c.QkvDim, c.HiddenSize),
                QkvBias: arena.Take(2L * c.QkvDim),
                O: Linear(c.HiddenSize, c.QDim),
                PostNorm: arena.Take(2L * c.HiddenSize),
                GateUp: Linear(2 * c.IntermediateSize, c.HiddenSize),
                Down: Linear(c.HiddenSize, c.IntermediateSize));
        }
        FinalNorm = arena.Take(2L * c.HiddenSize);
        LmHead = c.TieWordEmbeddings ? new LinearWeight(Embedding, c.VocabSize, c.HiddenSize) : Linear(c.VocabSize, c.HiddenSize);
    }

    private static long EmbeddingBytes(ModelConfig c) => 2L * c.VocabSize * c.HiddenSize;

    /// <summary>Device bytes the weights take (bf16, with alignment padding): the same sizes, in the same order, as the constructor takes.</summary>
    public static long DeviceBytes(ModelConfig c)
    {
        long Linear(int outFeatures, int inFeatures) => new LinearWeight(0, outFeatures, inFeatures).Bytes;
        var sizes = new List<long> { EmbeddingBytes(c) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
            sizes.AddRange([2L * c.HiddenSize, Linear(c.QkvDim, c.HiddenSize), 2L * c.QkvDim, Linear(c.HiddenSize, c.QDim),
                2L * c.HiddenSize, Linear(2 * c.IntermediateSize, c.HiddenSize), Linear(c.HiddenSize, c.IntermediateSize)]);
        sizes.Add(2L * c.HiddenSize);
        if (!c.TieWordEmbeddings) sizes.Add(Linear(c.VocabSize, c.HiddenSize));
        return DeviceArena.SizeFor(sizes);
    }

    public void CopyFromHostAsync(ulong dst, IntPtr src, long bytes, Native.CudaStream stream) =>
        _arena.CopyFromHostAsync(dst, src, bytes, stream);

    public static ModelWeights Allocate(ModelConfig c) => new(c, new DeviceArena(DeviceBytes(c)));

    public void Dispose() => _arena.Dispose();
}

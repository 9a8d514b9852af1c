using QwQ.Cuda.Config;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Engine;

/// <summary>One decoder layer's weights on the device, q/k/v and gate/up fused for fewer, larger products.</summary>
internal readonly record struct LayerWeights(
    ulong InputNorm,      // bf16 [hidden]
    LinearWeight Qkv,     // [(nq + 2*nkv) * D, hidden]  rows: q, then k, then v (fp8: scales in the same row order)
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
    public LinearWeight LmHead { get; }  // bf16 [lm_head_rows, hidden]; the embedding's bytes when tied on one GPU
    /// <summary>How the layers' linear weights are stored (embedding, norms, biases and lm_head stay bf16).</summary>
    public WeightKind LinearKind { get; }
    public long Bytes => _arena.Capacity;

    private ModelWeights(RankShape shape, WeightKind kind, DeviceArena arena)
    {
        ModelConfig c = shape.Config;
        _arena = arena;
        LinearKind = kind;
        Embedding = arena.Take(EmbeddingBytes(c));
        Layers = new LayerWeights[c.NumHiddenLayers];
        int group = Int4Group(c);
        LinearWeight Linear(int outFeatures, int inFeatures, WeightKind k)
        {
            var shape = new LinearWeight(0, outFeatures, inFeatures, k, Group: group);
            ulong weight = arena.Take(shape.Bytes);
            return shape with { Weight = weight, Scales = shape.ScaleBytes > 0 ? arena.Take(shape.ScaleBytes) : 0 };
        }
        for (int i = 0; i < Layers.Length; i++)
        {
            Layers[i] = new LayerWeights(
                InputNorm: arena.Take(2L * c.HiddenSize),
                Qkv: Linear(c.QkvDim, c.HiddenSize, kind),
                QkvBias: arena.Take(2L * c.QkvDim),
                O: Linear(c.HiddenSize, c.QDim, kind),
                PostNorm: arena.Take(2L * c.HiddenSize),
                GateUp: Linear(2 * c.IntermediateSize, c.HiddenSize, kind),
                Down: Linear(c.HiddenSize, c.IntermediateSize, kind));
        }
        FinalNorm = arena.Take(2L * c.HiddenSize);
        LmHead = SharesEmbedding(shape) ? new LinearWeight(Embedding, c.VocabSize, c.HiddenSize) : Linear(shape.LmHeadRows, c.HiddenSize, WeightKind.Bf16);
    }

    /// <summary>Tied embeddings on one GPU read lm_head from the embedding; a tensor-parallel rank keeps its vocabulary rows apart.</summary>
    public static bool SharesEmbedding(RankShape shape) => shape.Config.TieWordEmbeddings && !shape.IsSharded;

    private static long EmbeddingBytes(ModelConfig c) => 2L * c.VocabSize * c.HiddenSize;

    /// <summary>Inputs per scale of int4 weights: an AWQ checkpoint's group size, else 128 (--quantize int4).</summary>
    public static int Int4Group(ModelConfig c) => c.Quantization is AwqQuantizationConfig awq ? awq.GroupSize : LinearWeight.Int4GroupSize;

    /// <summary>
    /// Device bytes the weights take with linear weights of <paramref name="kind"/> (with alignment padding): the same
    /// sizes, in the same order, as the constructor takes.
    /// </summary>
    public static long DeviceBytes(ModelConfig c, WeightKind kind = WeightKind.Bf16) => DeviceBytes(RankShape.Whole(c), kind);

    /// <summary>Device bytes one GPU's share of the weights takes (<see cref="DeviceBytes(ModelConfig, WeightKind)"/> per rank).</summary>
    public static long DeviceBytes(RankShape shape, WeightKind kind)
    {
        ModelConfig c = shape.Config;
        int group = Int4Group(c);
        IEnumerable<long> Linear(int outFeatures, int inFeatures, WeightKind k)
        {
            var w = new LinearWeight(0, outFeatures, inFeatures, k, Group: group);
            return w.ScaleBytes > 0 ? [w.Bytes, w.ScaleBytes] : [w.Bytes];
        }
        var sizes = new List<long> { EmbeddingBytes(c) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            sizes.Add(2L * c.HiddenSize);
            sizes.AddRange(Linear(c.QkvDim, c.HiddenSize, kind));
            sizes.Add(2L * c.QkvDim);
            sizes.AddRange(Linear(c.HiddenSize, c.QDim, kind));
            sizes.Add(2L * c.HiddenSize);
            sizes.AddRange(Linear(2 * c.IntermediateSize, c.HiddenSize, kind));
            sizes.AddRange(Linear(c.HiddenSize, c.IntermediateSize, kind));
        }
        sizes.Add(2L * c.HiddenSize);
        if (!SharesEmbedding(shape)) sizes.AddRange(Linear(shape.LmHeadRows, c.HiddenSize, WeightKind.Bf16));
        return DeviceArena.SizeFor(sizes);
    }

    /// <summary>
    /// The largest layer product's weight count: the bf16 scratch that quantized weights are expanded into for
    /// prefill-sized products (and that synthetic and --quantize loads generate into) holds this many elements.
    /// </summary>
    public static long LargestLayerProduct(ModelConfig c) =>
        new[] { (long)c.QkvDim * c.HiddenSize, (long)c.HiddenSize * c.QDim, 2L * c.IntermediateSize * c.HiddenSize, (long)c.HiddenSize * c.IntermediateSize }.Max();

    /// <summary>
    /// Device bytes of row-major e4m3 copies of one GPU's fp8 layer weights (<see cref="EngineOptions.Fp8PrefillCopy"/>):
    /// out × in bytes each, every copy 256-byte aligned (cuBLASLt's FP8 GEMM reads them in place).
    /// </summary>
    public static long Fp8RowMajorBytes(RankShape shape)
    {
        ModelConfig c = shape.Config;
        long one = Align((long)c.QkvDim * c.HiddenSize) + Align((long)c.HiddenSize * c.QDim) +
                   Align(2L * c.IntermediateSize * c.HiddenSize) + Align((long)c.HiddenSize * c.IntermediateSize);
        return one * c.NumHiddenLayers;
        static long Align(long bytes) => (bytes + 255) / 256 * 256;
    }

    /// <summary>Device bytes outside the weights that linear weights of <paramref name="kind"/> need: the bf16 scratch for quantized kinds.</summary>
    public static long ScratchBytes(ModelConfig c, WeightKind kind) => kind == WeightKind.Bf16 ? 0 : 2 * LargestLayerProduct(c);

    /// <summary>Every layer's copy of each product, in forward order (qkv, o, gate_up, down), then lm_head.</summary>
    public IReadOnlyList<(LinearWeight[] Layers, bool Accumulate)> Products() =>
    [
        (Layers.Select(l => l.Qkv).ToArray(), false),
        (Layers.Select(l => l.O).ToArray(), true),
        (Layers.Select(l => l.GateUp).ToArray(), false),
        (Layers.Select(l => l.Down).ToArray(), true),
        ([LmHead], false),
    ];

    public void CopyFromHostAsync(ulong dst, IntPtr src, long bytes, Native.CudaStream stream) =>
        _arena.CopyFromHostAsync(dst, src, bytes, stream);

    public static ModelWeights Allocate(ModelConfig c, WeightKind kind = WeightKind.Bf16) => Allocate(RankShape.Whole(c), kind);

    public static ModelWeights Allocate(RankShape shape, WeightKind kind) => new(shape, kind, new DeviceArena(DeviceBytes(shape, kind)));

    /// <summary>Where every weight would sit, with addresses but no device memory (<see cref="DeviceArena.LayoutOnly"/>): for checking loads where there is no GPU.</summary>
    public static ModelWeights LayoutOnly(RankShape shape, WeightKind kind = WeightKind.Bf16) => new(shape, kind, DeviceArena.LayoutOnly(DeviceBytes(shape, kind)));

    public void Dispose() => _arena.Dispose();
}

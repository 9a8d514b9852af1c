using QwQ.Cuda.Config;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Weights;

/// <summary>
/// The tensor names of quantized checkpoints (beside <see cref="TensorNames"/>, the only other place they are spelled
/// out), and which layout each linear layer has under a config: compressed-tensors FP8 names a layer's tensors
/// <c>&lt;module&gt;.weight</c> and <c>.weight_scale</c> (and maybe <c>.input_scale</c>); AutoAWQ
/// <c>&lt;module&gt;.qweight</c>, <c>.qzeros</c> and <c>.scales</c>.
/// </summary>
public static class QuantizedTensorNames
{
    private const string WeightScaleSuffix = ".weight_scale", InputScaleSuffix = ".input_scale";
    private const string QWeightSuffix = ".qweight", QZerosSuffix = ".qzeros", ScalesSuffix = ".scales";

    /// <summary>compressed-tensors: an FP8 weight's scale, [out, 1] or [1].</summary>
    public static string WeightScale(string module) => module + WeightScaleSuffix;

    /// <summary>compressed-tensors: a static input-activation scale, [1] (ignored: activations stay bf16).</summary>
    public static string InputScale(string module) => module + InputScaleSuffix;

    /// <summary>AWQ: packed 4-bit weight, I32 [in, out/8].</summary>
    public static string QWeight(string module) => module + QWeightSuffix;

    /// <summary>AWQ: packed 4-bit zero points, I32 [in/group, out/8].</summary>
    public static string QZeros(string module) => module + QZerosSuffix;

    /// <summary>AWQ: scales, [in/group, out].</summary>
    public static string Scales(string module) => module + ScalesSuffix;

    /// <summary>The tensors of linear layer <paramref name="p"/> of decoder layer <paramref name="layer"/> under <paramref name="c"/>.</summary>
    public static LinearTensors Linear(ModelConfig c, int layer, Projection p)
    {
        if (p == Projection.LmHead)
            return OutputProjection(c) ?? throw new ArgumentException("the config ties lm_head to the embedding: it has no tensors of its own", nameof(p));
        if ((uint)layer >= (uint)c.NumHiddenLayers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"the config has {c.NumHiddenLayers} layers");
        return Describe(c, TensorNames.Module(layer, p), p);
    }

    /// <summary>lm_head's tensors, or null when the config ties it to the embedding (which is never quantized).</summary>
    public static LinearTensors? OutputProjection(ModelConfig c) =>
        c.TieWordEmbeddings ? null : Describe(c, TensorNames.LmHeadModule, Projection.LmHead);

    /// <summary>Every linear layer of the model, in load order (layer by layer, q k v o gate up down; lm_head last).</summary>
    public static IEnumerable<LinearTensors> Linears(ModelConfig c)
    {
        for (int i = 0; i < c.NumHiddenLayers; i++)
            foreach (var p in TensorNames.DecoderProjections)
                yield return Linear(c, i, p);
        if (OutputProjection(c) is { } lmHead) yield return lmHead;
    }

    private static LinearTensors Describe(ModelConfig c, string module, Projection p)
    {
        var (outFeatures, inFeatures) = TensorNames.Features(c, p);
        LinearTensors plain = new PlainLinearTensors(module, outFeatures, inFeatures, TensorNames.Weight(module));
        return c.Quantization switch
        {
            null => plain,
            Fp8QuantizationConfig fp8 => fp8.SchemeFor(module) is { } s
                ? new Fp8LinearTensors(module, outFeatures, inFeatures, TensorNames.Weight(module), WeightScale(module), s.Strategy,
                                       s.StaticInputScale ? InputScale(module) : null)
                : plain,
            // AutoAWQ quantizes the decoder's linear layers only: lm_head stays fp16 whatever the config lists.
            AwqQuantizationConfig awq => p != Projection.LmHead && awq.Converts(module)
                ? new AwqLinearTensors(module, outFeatures, inFeatures, QWeight(module), QZeros(module), Scales(module), awq.GroupSize)
                : plain,
            _ => throw new NotSupportedException($"quantization {c.Quantization.Method}"),
        };
    }

    /// <summary>
    /// The quantized layout a checkpoint's tensors show, whatever its config says: FP8 when it has an F8_E4M3 tensor,
    /// AWQ when it has an I32 qweight, else null (plain); with one such tensor as an example. The validator names both
    /// sides when this disagrees with the config.
    /// </summary>
    public static (QuantizationMethod? Method, TensorInfo? Example) Detect(IEnumerable<TensorInfo> tensors)
    {
        TensorInfo? awq = null;
        foreach (var t in tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            if (t.DType == DType.F8_E4M3) return (QuantizationMethod.CompressedTensorsFp8, t);
            if (awq is null && t.DType == DType.I32 && t.Name.EndsWith(QWeightSuffix, StringComparison.Ordinal)) awq = t;
        }
        return awq is null ? (null, null) : (QuantizationMethod.AwqInt4, awq);
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Weights;

/// <summary>
/// A tensor the checkpoint must hold for a config, with its expected shape (HF [out, in] layout) and the dtypes it
/// may have: any plain float (bf16, fp16, fp32: converted on load) unless it holds quantized values.
/// </summary>
public sealed record ExpectedTensor(string Name, long[] Shape)
{
    /// <summary>BF16, F16 and F32: what unquantized tensors (and scales) may be stored as.</summary>
    public static readonly IReadOnlyList<DType> PlainFloat = [DType.BF16, DType.F16, DType.F32];

    /// <summary>The dtypes the tensor may have.</summary>
    public IReadOnlyList<DType> DTypes { get; init; } = PlainFloat;

    /// <summary>Other shapes that mean the same (a per-tensor scale that older writers store as a scalar, []).</summary>
    public IReadOnlyList<long[]> OtherShapes { get; init; } = [];

    public string ShapeText => string.Join(" or ", new[] { Shape }.Concat(OtherShapes).Select(TensorInfo.FormatShape));

    public string DTypeText => DTypes.Count == 1 ? DTypes[0].ToString()
        : string.Join(", ", DTypes.Take(DTypes.Count - 1)) + " or " + DTypes[^1];

    /// <summary>Whether <paramref name="shape"/> is <see cref="Shape"/> or one of <see cref="OtherShapes"/>.</summary>
    public bool Fits(long[] shape) => shape.SequenceEqual(Shape) || OtherShapes.Any(shape.SequenceEqual);
}

/// <summary>The linear layers of a Qwen2 decoder, and its output projection.</summary>
public enum Projection
{
    Q, K, V, O, Gate, Up, Down,
    /// <summary>lm_head: [vocab, hidden]; absent when the embedding is tied to it.</summary>
    LmHead,
}

/// <summary>
/// The Hugging Face tensor names of a Qwen2ForCausalLM checkpoint. This is the only place in the
/// code base where they are spelled out; everything else asks here.
/// </summary>
public static class TensorNames
{
    public const string Embedding = "model.embed_tokens.weight";       // [vocab, hidden]
    public const string FinalNorm = "model.norm.weight";               // [hidden]
    public const string LmHeadModule = "lm_head";
    public const string LmHead = LmHeadModule + WeightSuffix;          // [vocab, hidden]; absent when tied

    internal const string WeightSuffix = ".weight", BiasSuffix = ".bias";
    private const string LayersPrefix = "model.layers.";
    private static string Layer(int i) => $"{LayersPrefix}{i}.";

    /// <summary>
    /// The module path of a linear layer ("model.layers.3.mlp.down_proj", "lm_head"): quantized checkpoints name a
    /// layer's tensors after it, and quantization configs select layers by it.
    /// </summary>
    public static string Module(int layer, Projection p) => p switch
    {
        Projection.Q => Layer(layer) + "self_attn.q_proj",
        Projection.K => Layer(layer) + "self_attn.k_proj",
        Projection.V => Layer(layer) + "self_attn.v_proj",
        Projection.O => Layer(layer) + "self_attn.o_proj",
        Projection.Gate => Layer(layer) + "mlp.gate_proj",
        Projection.Up => Layer(layer) + "mlp.up_proj",
        Projection.Down => Layer(layer) + "mlp.down_proj",
        Projection.LmHead => LmHeadModule,
        _ => throw new ArgumentOutOfRangeException(nameof(p), p, null),
    };

    /// <summary>The unquantized weight of a linear layer, [out, in].</summary>
    public static string Weight(string module) => module + WeightSuffix;

    /// <summary>The bias of a linear layer, [out] (q/k/v only in Qwen2).</summary>
    public static string Bias(string module) => module + BiasSuffix;

    /// <summary>(out, in) features of a projection: its weight is [out, in] in the Hugging Face Linear layout.</summary>
    public static (int Out, int In) Features(ModelConfig c, Projection p) => p switch
    {
        Projection.Q => (c.QDim, c.HiddenSize),
        Projection.K or Projection.V => (c.KvDim, c.HiddenSize),
        Projection.O => (c.HiddenSize, c.QDim),
        Projection.Gate or Projection.Up => (c.IntermediateSize, c.HiddenSize),
        Projection.Down => (c.HiddenSize, c.IntermediateSize),
        Projection.LmHead => (c.VocabSize, c.HiddenSize),
        _ => throw new ArgumentOutOfRangeException(nameof(p), p, null),
    };

    /// <summary>The seven linear layers of every decoder layer, in load order.</summary>
    public static IReadOnlyList<Projection> DecoderProjections { get; } =
        [Projection.Q, Projection.K, Projection.V, Projection.O, Projection.Gate, Projection.Up, Projection.Down];

    public static string InputNorm(int layer) => Layer(layer) + "input_layernorm.weight";              // [hidden]
    public static string QWeight(int layer) => Weight(Module(layer, Projection.Q));                    // [nq*D, hidden]
    public static string QBias(int layer) => Bias(Module(layer, Projection.Q));                        // [nq*D]
    public static string KWeight(int layer) => Weight(Module(layer, Projection.K));                    // [nkv*D, hidden]
    public static string KBias(int layer) => Bias(Module(layer, Projection.K));                        // [nkv*D]
    public static string VWeight(int layer) => Weight(Module(layer, Projection.V));                    // [nkv*D, hidden]
    public static string VBias(int layer) => Bias(Module(layer, Projection.V));                        // [nkv*D]
    public static string OWeight(int layer) => Weight(Module(layer, Projection.O));                    // [hidden, nq*D]
    public static string PostAttentionNorm(int layer) => Layer(layer) + "post_attention_layernorm.weight"; // [hidden]
    public static string GateWeight(int layer) => Weight(Module(layer, Projection.Gate));              // [I, hidden]
    public static string UpWeight(int layer) => Weight(Module(layer, Projection.Up));                  // [I, hidden]
    public static string DownWeight(int layer) => Weight(Module(layer, Projection.Down));              // [hidden, I]

    /// <summary>
    /// RoPE's inverse frequencies, [head_dim / 2]. Older transformers versions registered them as a persistent
    /// buffer, so checkpoints saved with those carry one per layer. They are a function of the config alone (rope_theta,
    /// head_dim, rope_scaling), and we compute them from the config, so the stored copy holds nothing to load.
    /// </summary>
    public static string RotaryInvFreq(int layer) => Layer(layer) + "self_attn.rotary_emb.inv_freq";

    /// <summary>The name of the output projection: the embedding itself when tied.</summary>
    public static string OutputProjection(ModelConfig c) => c.TieWordEmbeddings ? Embedding : LmHead;

    /// <summary>
    /// Tensors a checkpoint for <paramref name="c"/> may hold besides <see cref="Expected"/>, because they hold
    /// nothing the config does not already say (see each name). Anything else extra means config and checkpoint
    /// disagree. Only for layers the config has: an inv_freq of layer 40 in a 32-layer config is a mismatch too.
    /// </summary>
    /// <remarks>
    /// A quantized checkpoint may also hold the static input-activation scales of its FP8 layers
    /// (<see cref="Fp8LinearTensors.InputScale"/>): we compute in bf16 and never quantize activations.
    /// </remarks>
    public static IReadOnlySet<string> Ignorable(ModelConfig c)
    {
        var names = Enumerable.Range(0, c.NumHiddenLayers).Select(RotaryInvFreq).ToHashSet(StringComparer.Ordinal);
        if (c.Quantization is not null)
            foreach (var linear in QuantizedTensorNames.Linears(c))
                if (linear is Fp8LinearTensors { InputScale: { } inputScale }) names.Add(inputScale);
        return names;
    }

    /// <summary>The decoder layer a tensor name belongs to ("model.layers.7.mlp..." → 7), or null.</summary>
    public static int? LayerIndex(string name)
    {
        if (!name.StartsWith(LayersPrefix, StringComparison.Ordinal)) return null;
        int dot = name.IndexOf('.', LayersPrefix.Length);
        return dot > LayersPrefix.Length &&
               int.TryParse(name.AsSpan(LayersPrefix.Length, dot - LayersPrefix.Length), System.Globalization.NumberStyles.None,
                            System.Globalization.CultureInfo.InvariantCulture, out int layer) ? layer : null;
    }

    /// <summary>
    /// Every tensor a checkpoint for <paramref name="c"/> must contain, in load order. A linear layer is its weight,
    /// or, when <see cref="ModelConfig.Quantization"/> quantizes it, the tensors of its layout
    /// (<see cref="QuantizedTensorNames.Linear"/>); everything else is a plain float tensor.
    /// </summary>
    public static IReadOnlyList<ExpectedTensor> Expected(ModelConfig c)
    {
        long h = c.HiddenSize, q = c.QDim, kv = c.KvDim, v = c.VocabSize;
        var list = new List<ExpectedTensor> { new(Embedding, [v, h]) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            list.Add(new(InputNorm(i), [h]));
            foreach (var p in DecoderProjections)
            {
                if (p == Projection.Gate) list.Add(new(PostAttentionNorm(i), [h]));
                list.AddRange(QuantizedTensorNames.Linear(c, i, p).Expected());
                long bias = p switch { Projection.Q => q, Projection.K or Projection.V => kv, _ => 0 };
                if (bias > 0) list.Add(new(Bias(Module(i, p)), [bias]));
            }
        }
        list.Add(new(FinalNorm, [h]));
        if (QuantizedTensorNames.OutputProjection(c) is { } lmHead) list.AddRange(lmHead.Expected());
        return list;
    }
}

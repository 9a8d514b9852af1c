using QwQ.Cuda.Errors;
using static System.FormattableString;

namespace QwQ.Cuda.Config;

/// <summary>
/// The architecture of a Qwen2 causal LM, read from a Hugging Face config.json. Only what the engine
/// needs is kept; everything is validated on load so later code can trust it. Accepts both the
/// transformers 4 layout (top-level <c>rope_theta</c>, <c>rope_scaling</c>, <c>torch_dtype</c>) and the
/// transformers 5 layout (<c>rope_parameters</c>, <c>dtype</c>).
/// </summary>
public sealed record ModelConfig
{
    public const string SupportedModelType = "qwen2";
    public const string SupportedArchitecture = "Qwen2ForCausalLM";

    // ---- bounds -------------------------------------------------------------------------------
    // Every size config.json gives is bounded, far above any released Qwen2 checkpoint (QwQ-32B: 64 layers, hidden
    // 5120, 40 heads of 128, intermediate 27648, vocabulary 152064, 40960 positions) yet low enough that every
    // derived size fits its type: QkvDim ≤ 3·2^20 fits an int, element and byte counts (≤ 2^52) fit a long. So a
    // crafted file cannot wrap a product around to plausible shapes, nor make `qwq info` allocate per-layer lists
    // for a billion layers.

    /// <summary>Decoder layers (released models: ≤ ~130).</summary>
    public const int MaxLayers = 1024;
    /// <summary>hidden_size (released models: ≤ ~25k).</summary>
    public const int MaxHiddenSize = 1 << 16;
    /// <summary>intermediate_size, the MLP width (released models: ≤ ~100k).</summary>
    public const int MaxIntermediateSize = 1 << 20;
    /// <summary>Query heads, and so key/value heads (released models: ≤ 128).</summary>
    public const int MaxHeads = 1024;
    /// <summary>head_dim (released models: 64–256); it must also be even, RoPE rotates pairs.</summary>
    public const int MaxHeadDim = 1024;
    /// <summary>vocab_size and every token id below it (released vocabularies: ≤ ~260k).</summary>
    public const int MaxVocabSize = 1 << 24;
    /// <summary>Positions, with or without YaRN: they are int32 on the device and index the KV cache.</summary>
    public const int MaxPositions = 1 << 24;

    public string ModelType { get; init; } = SupportedModelType;
    public string Architecture { get; init; } = SupportedArchitecture;
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    /// <summary>Per-head dimension: config's head_dim, else hidden_size / num_attention_heads.</summary>
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public required double RmsNormEps { get; init; }
    public required double RopeTheta { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Checkpoint dtype name as transformers writes it: bfloat16, float16 or float32.</summary>
    public string TorchDtype { get; init; } = "bfloat16";
    /// <summary>YaRN scaling, or null for plain RoPE.</summary>
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Always false: sliding-window attention is rejected at load.</summary>
    public bool UseSlidingWindow { get; init; }
    /// <summary>
    /// The checkpoint's quantized layout (config.json's quantization_config), or null for plain bf16/fp16/fp32 weights.
    /// <see cref="TorchDtype"/> is then the dtype of what stays unquantized (embedding, norms, biases, lm_head).
    /// </summary>
    public QuantizationConfig? Quantization { get; init; }

    // ---- derived sizes ------------------------------------------------------------------------

    /// <summary>Query heads sharing one KV head.</summary>
    // Checked: Parse bounds the sizes so none of these can overflow, but a record built in code is not parsed, and
    // a wrapped product would silently describe some other, plausible model.

    public int QueriesPerKvHead => NumAttentionHeads / NumKeyValueHeads;
    public int QDim => checked(NumAttentionHeads * HeadDim);
    public int KvDim => checked(NumKeyValueHeads * HeadDim);

    /// <summary>
    /// The first layer input size (hidden, q, intermediate: the k of every decoder product) that is not a multiple of
    /// <paramref name="multiple"/>, or null: quantized kernels and formats need whole chunks or groups of inputs.
    /// </summary>
    internal int? LayerInputSizeNotMultipleOf(int multiple) =>
        new[] { HiddenSize, QDim, IntermediateSize }.Where(k => k % multiple != 0).Select(k => (int?)k).FirstOrDefault();
    /// <summary>Rows of the fused qkv projection: (nq + 2·nkv)·D.</summary>
    public int QkvDim => checked((NumAttentionHeads + 2 * NumKeyValueHeads) * HeadDim);

    /// <summary>bf16 KV-cache bytes per token over all layers: K and V, 2 bytes each.</summary>
    public long KvBytesPerToken => checked(2L * NumHiddenLayers * NumKeyValueHeads * HeadDim * 2);

    /// <summary>Bytes of one element of the checkpoint's dtype.</summary>
    public int DtypeBytes => TorchDtype == "float32" ? 4 : 2;

    /// <summary>Parameters of the whole model (lm_head counted once more unless tied).</summary>
    public long ParameterCount
    {
        get
        {
            checked
            {
                long h = HiddenSize, i = IntermediateSize, qkv = QkvDim;
                long perLayer =
                    h                                   // input_layernorm
                    + qkv * h + qkv                     // q,k,v weights + biases
                    + h * QDim                          // o_proj
                    + h                                 // post_attention_layernorm
                    + 3 * h * i;                        // gate, up, down
                long embed = VocabSize * h;
                return embed + NumHiddenLayers * perLayer + h + (TieWordEmbeddings ? 0 : embed);
            }
        }
    }

    /// <summary>Checkpoint size in bytes at <see cref="TorchDtype"/>.</summary>
    public long WeightBytes => checked(ParameterCount * DtypeBytes);

    // ---- loading ------------------------------------------------------------------------------

    /// <summary>Reads and validates a config.json file.</summary>
    public static ModelConfig Load(string path) => Parse(JsonFields.ReadFile(path, "model config"), path);

    /// <summary>Parses and validates config.json text; <paramref name="sourceName"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string sourceName)
    {
        using var doc = JsonFields.ParseDocument(json, sourceName);
        var f = JsonFields.Root(doc, sourceName);

        string modelType = f.RequiredString("model_type");
        if (modelType != SupportedModelType)
            throw f.Invalid($"'model_type' = {JsonFields.Quote(modelType)} is not supported (only \"{SupportedModelType}\" is)");

        var architectures = f.OptionalStringList("architectures");
        if (architectures is not null && !architectures.Contains(SupportedArchitecture))
            throw f.Invalid($"'architectures' = [{string.Join(", ", architectures.Take(4).Select(JsonFields.Quote))}{(architectures.Count > 4 ? ", ..." : "")}] " +
                            $"does not include \"{SupportedArchitecture}\", the only supported architecture");

        int hidden = f.RequiredInt("hidden_size", 1, MaxHiddenSize);
        int intermediate = f.RequiredInt("intermediate_size", 1, MaxIntermediateSize);
        int layers = f.RequiredInt("num_hidden_layers", 1, MaxLayers);
        int heads = f.RequiredInt("num_attention_heads", 1, MaxHeads);
        int kvHeads = f.RequiredInt("num_key_value_heads", 1, MaxHeads);
        int vocab = f.RequiredInt("vocab_size", 1, MaxVocabSize);
        int maxPos = f.RequiredInt("max_position_embeddings", 1, MaxPositions);

        if (heads % kvHeads != 0)
            throw f.Invalid($"'num_key_value_heads' = {kvHeads} must divide 'num_attention_heads' = {heads}");

        // Qwen2 takes head_dim from the config when given (then heads·head_dim need not equal hidden_size: q_proj
        // maps hidden → heads·head_dim and o_proj back), else hidden_size / num_attention_heads.
        int headDim;
        if (f.OptionalInt("head_dim", 2, MaxHeadDim) is int hd)
        {
            headDim = hd;
        }
        else
        {
            if (hidden % heads != 0)
                throw f.Invalid($"'num_attention_heads' = {heads} must divide 'hidden_size' = {hidden} " +
                                "(or give 'head_dim' explicitly)");
            headDim = hidden / heads;
            if (headDim > MaxHeadDim)
                throw f.Invalid($"head dimension 'hidden_size' / 'num_attention_heads' = {headDim} must be at most {MaxHeadDim}");
        }
        if (headDim % 2 != 0)
            throw f.Invalid($"head dimension {headDim} must be even for rotary embeddings");

        // Added to the mean square of the activations: a larger one would swamp it (released models: 1e-6 or 1e-5).
        double eps = f.RequiredDouble("rms_norm_eps", new NumberRange(0, 1, MinExclusive: true));

        string act = f.OptionalString("hidden_act") ?? "silu";
        if (act != "silu")
            throw f.Invalid($"'hidden_act' = {JsonFields.Quote(act)} is not supported (only \"silu\" is)");

        bool sliding = f.OptionalBool("use_sliding_window") ?? false;
        if (sliding)
            throw f.Invalid("'use_sliding_window' = true is not supported (sliding-window attention is not implemented)");

        string dtype = f.OptionalString("torch_dtype") ?? f.OptionalString("dtype") ?? "bfloat16";
        if (dtype is not ("bfloat16" or "float16" or "float32"))
        {
            string key = f.Has("torch_dtype") ? "torch_dtype" : "dtype";
            throw f.Invalid($"'{key}' = {JsonFields.Quote(dtype)} is not supported (bfloat16, float16 or float32)");
        }

        // transformers 5 moves rope_theta and the scaling dict into 'rope_parameters'.
        var ropeParams = f.Object("rope_parameters");
        double theta;
        // Above 1, or the frequencies would not fall with the dimension (and YaRN divides by ln θ).
        var thetaRange = new NumberRange(1, double.MaxValue, MinExclusive: true);
        if (ropeParams is { } rp && rp.Has("rope_theta")) theta = rp.RequiredDouble("rope_theta", thetaRange);
        else theta = f.RequiredDouble("rope_theta", thetaRange);

        var scalingFields = f.Object("rope_scaling") ?? ropeParams;
        RopeScaling? scaling = scalingFields is { } sf ? ParseRopeScaling(sf, maxPos) : null;

        QuantizationConfig? quantization = null;
        if (f.Object("quantization_config") is { } qf)
        {
            quantization = QuantizationConfig.Parse(qf);
            if (quantization is AwqQuantizationConfig awq)
                CheckAwqSizes(qf, awq, hidden, heads * headDim, kvHeads * headDim, intermediate);
        }

        return new ModelConfig
        {
            ModelType = modelType,
            Architecture = SupportedArchitecture,
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            VocabSize = vocab,
            RmsNormEps = eps,
            RopeTheta = theta,
            MaxPositionEmbeddings = maxPos,
            TieWordEmbeddings = f.OptionalBool("tie_word_embeddings") ?? false,
            TorchDtype = dtype,
            RopeScaling = scaling,
            UseSlidingWindow = false,
            Quantization = quantization,
        };
    }

    /// <summary>
    /// AWQ packs 8 output features per int32 and groups input features: every quantizable layer's sizes must fit.
    /// Checked for every decoder linear layer kind, even one modules_to_not_convert may leave out, so the config is
    /// judged on its own.
    /// </summary>
    private static void CheckAwqSizes(JsonFields q, AwqQuantizationConfig awq, int hidden, int qDim, int kvDim, int intermediate)
    {
        // (what, size): inputs of q/k/v/gate/up, o_proj and down_proj; outputs of q, k/v, o/down, gate/up.
        (string, int)[] inputs = [("hidden_size", hidden), ("num_attention_heads × head_dim", qDim), ("intermediate_size", intermediate)];
        foreach (var (what, size) in inputs)
            if (size % awq.GroupSize != 0)
                throw q.Invalid($"{q.Name("group_size")} = {awq.GroupSize} must divide the input size of every quantized layer, " +
                                $"but {what} = {size} is not a multiple of it");
        (string, int)[] outputs = [("hidden_size", hidden), ("num_attention_heads × head_dim", qDim), ("num_key_value_heads × head_dim", kvDim), ("intermediate_size", intermediate)];
        foreach (var (what, size) in outputs)
            if (size % Weights.Quantization.AwqPacking.ValuesPerInt != 0)
                throw q.Invalid($"AWQ packs {Weights.Quantization.AwqPacking.ValuesPerInt} output features per int32, " +
                                $"but {what} = {size} is not a multiple of {Weights.Quantization.AwqPacking.ValuesPerInt}");
    }

    /// <summary>Null for "default" RoPE (no scaling); YaRN parameters otherwise; anything else is unsupported.</summary>
    private static RopeScaling? ParseRopeScaling(JsonFields s, int maxPositionEmbeddings)
    {
        // "type" is the transformers 4 spelling, "rope_type" the newer one.
        string? type = s.OptionalString("rope_type") ?? s.OptionalString("type");
        if (type is null)
        {
            if (s.Has("factor")) throw s.Missing("type");
            return null;
        }
        if (type == "default") return null;
        if (type != "yarn")
            throw s.Invalid($"{s.Name(s.Has("rope_type") ? "rope_type" : "type")} = {JsonFields.Quote(type)} is not supported " +
                            "(only \"yarn\" RoPE scaling is)");

        double factor = s.RequiredDouble("factor", new NumberRange(1, MaxPositions));
        int original = s.OptionalInt("original_max_position_embeddings", 1, MaxPositions) ?? maxPositionEmbeddings;
        // The extended context (factor × original, see MemoryPlan.ModelMaxPositions) is an int number of positions.
        if (factor * original > MaxPositions)
            throw s.Invalid(Invariant($"{s.Name("factor")} × {s.Name("original_max_position_embeddings")} = {factor * original} positions must be at most {MaxPositions}"));

        // transformers reads these as `get(...) or default`, so an explicit 0 also means the default. They count
        // rotations, and YaRN takes their logarithm: positive, or NaN frequencies would follow.
        double betaFast = s.OptionalDouble("beta_fast", NumberRange.NonNegative) is double bf && bf != 0 ? bf : 32;
        double betaSlow = s.OptionalDouble("beta_slow", NumberRange.NonNegative) is double bs && bs != 0 ? bs : 1;
        if (betaFast < betaSlow)
            throw s.Invalid($"{s.Name("beta_fast")} = {JsonFields.Format(betaFast)} must not be below " +
                            $"{s.Name("beta_slow")} = {JsonFields.Format(betaSlow)}");

        double? attention = s.OptionalDouble("attention_factor", NumberRange.NonNegative);
        // Non-negative keeps 0.1·mscale·ln(factor) + 1 at 1 or more, so their ratio is finite.
        double? mscale = s.OptionalDouble("mscale", NumberRange.NonNegative);
        double? mscaleAllDim = s.OptionalDouble("mscale_all_dim", NumberRange.NonNegative);

        return new RopeScaling
        {
            Type = "yarn",
            Factor = factor,
            OriginalMaxPositionEmbeddings = original,
            BetaFast = betaFast,
            BetaSlow = betaSlow,
            AttentionFactor = attention,
            Mscale = mscale,
            MscaleAllDim = mscaleAllDim,
            Truncate = s.OptionalBool("truncate") ?? true,
        };
    }
}

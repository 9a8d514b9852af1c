using System.Text.Json;
using QwQ.Cuda.Errors;

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

    // ---- derived sizes ------------------------------------------------------------------------

    /// <summary>Query heads sharing one KV head.</summary>
    public int QueriesPerKvHead => NumAttentionHeads / NumKeyValueHeads;
    public int QDim => NumAttentionHeads * HeadDim;
    public int KvDim => NumKeyValueHeads * HeadDim;
    /// <summary>Rows of the fused qkv projection: (nq + 2·nkv)·D.</summary>
    public int QkvDim => (NumAttentionHeads + 2 * NumKeyValueHeads) * HeadDim;

    /// <summary>bf16 KV-cache bytes per token over all layers: K and V, 2 bytes each.</summary>
    public long KvBytesPerToken => 2L * NumHiddenLayers * NumKeyValueHeads * HeadDim * 2;

    /// <summary>Bytes of one element of the checkpoint's dtype.</summary>
    public int DtypeBytes => TorchDtype == "float32" ? 4 : 2;

    /// <summary>Parameters of the whole model (lm_head counted once more unless tied).</summary>
    public long ParameterCount
    {
        get
        {
            long h = HiddenSize, i = IntermediateSize;
            long perLayer =
                h                                   // input_layernorm
                + QkvDim * h + QkvDim               // q,k,v weights + biases
                + h * QDim                          // o_proj
                + h                                 // post_attention_layernorm
                + 3 * h * i;                        // gate, up, down
            long embed = (long)VocabSize * h;
            return embed + NumHiddenLayers * perLayer + h + (TieWordEmbeddings ? 0 : embed);
        }
    }

    /// <summary>Checkpoint size in bytes at <see cref="TorchDtype"/>.</summary>
    public long WeightBytes => ParameterCount * DtypeBytes;

    // ---- loading ------------------------------------------------------------------------------

    /// <summary>Reads and validates a config.json file.</summary>
    public static ModelConfig Load(string path)
    {
        string json;
        try { json = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"{path}: cannot read model config: {e.Message}");
        }
        return Parse(json, path);
    }

    /// <summary>Parses and validates config.json text; <paramref name="sourceName"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string sourceName)
    {
        using var doc = JsonFields.ParseDocument(json, sourceName);
        var f = JsonFields.Root(doc, sourceName);

        string modelType = f.RequiredString("model_type");
        if (modelType != SupportedModelType)
            throw f.Invalid($"'model_type' = \"{modelType}\" is not supported (only \"{SupportedModelType}\" is)");

        var architectures = f.OptionalStringList("architectures");
        if (architectures is not null && !architectures.Contains(SupportedArchitecture))
            throw f.Invalid($"'architectures' = [{string.Join(", ", architectures.Select(a => $"\"{a}\""))}] " +
                            $"does not include \"{SupportedArchitecture}\", the only supported architecture");

        int hidden = Positive(f, "hidden_size");
        int intermediate = Positive(f, "intermediate_size");
        int layers = Positive(f, "num_hidden_layers");
        int heads = Positive(f, "num_attention_heads");
        int kvHeads = Positive(f, "num_key_value_heads");
        int vocab = Positive(f, "vocab_size");
        int maxPos = Positive(f, "max_position_embeddings");

        if (heads % kvHeads != 0)
            throw f.Invalid($"'num_key_value_heads' = {kvHeads} must divide 'num_attention_heads' = {heads}");

        int headDim;
        if (f.OptionalInt("head_dim") is int hd)
        {
            if (hd <= 0) throw f.Invalid($"'head_dim' = {hd} must be positive");
            headDim = hd;
        }
        else
        {
            if (hidden % heads != 0)
                throw f.Invalid($"'num_attention_heads' = {heads} must divide 'hidden_size' = {hidden} " +
                                "(or give 'head_dim' explicitly)");
            headDim = hidden / heads;
        }
        if (headDim % 2 != 0)
            throw f.Invalid($"head dimension {headDim} must be even for rotary embeddings");

        double eps = f.RequiredDouble("rms_norm_eps");
        if (!(eps > 0)) throw f.Invalid($"'rms_norm_eps' = {JsonFields.Format(eps)} must be positive");

        string act = f.OptionalString("hidden_act") ?? "silu";
        if (act != "silu")
            throw f.Invalid($"'hidden_act' = \"{act}\" is not supported (only \"silu\" is)");

        bool sliding = f.OptionalBool("use_sliding_window") ?? false;
        if (sliding)
            throw f.Invalid("'use_sliding_window' = true is not supported (sliding-window attention is not implemented)");

        string dtype = f.OptionalString("torch_dtype") ?? f.OptionalString("dtype") ?? "bfloat16";
        if (dtype is not ("bfloat16" or "float16" or "float32"))
        {
            string key = f.Has("torch_dtype") ? "torch_dtype" : "dtype";
            throw f.Invalid($"'{key}' = \"{dtype}\" is not supported (bfloat16, float16 or float32)");
        }

        // transformers 5 moves rope_theta and the scaling dict into 'rope_parameters'.
        var ropeParams = f.Object("rope_parameters");
        double theta;
        if (ropeParams is { } rp && rp.Has("rope_theta")) theta = rp.RequiredDouble("rope_theta");
        else theta = f.RequiredDouble("rope_theta");
        if (!(theta > 1)) throw f.Invalid($"'rope_theta' = {JsonFields.Format(theta)} must be greater than 1");

        var scalingFields = f.Object("rope_scaling") ?? ropeParams;
        RopeScaling? scaling = scalingFields is { } sf ? ParseRopeScaling(sf, maxPos) : null;

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
        };
    }

    private static int Positive(JsonFields f, string field)
    {
        int v = f.RequiredInt(field);
        if (v <= 0) throw f.Invalid($"'{field}' = {v} must be positive");
        return v;
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
            throw s.Invalid($"{s.Name(s.Has("rope_type") ? "rope_type" : "type")} = \"{type}\" is not supported " +
                            "(only \"yarn\" RoPE scaling is)");

        double factor = s.RequiredDouble("factor");
        if (!(factor >= 1)) throw s.Invalid($"{s.Name("factor")} = {JsonFields.Format(factor)} must be at least 1");

        int original = s.OptionalInt("original_max_position_embeddings") ?? maxPositionEmbeddings;
        if (original <= 0)
            throw s.Invalid($"{s.Name("original_max_position_embeddings")} = {original} must be positive");

        // transformers reads these as `get(...) or default`, so an explicit 0 also means the default.
        double betaFast = s.OptionalDouble("beta_fast") is double bf && bf != 0 ? bf : 32;
        double betaSlow = s.OptionalDouble("beta_slow") is double bs && bs != 0 ? bs : 1;
        if (betaFast < betaSlow)
            throw s.Invalid($"{s.Name("beta_fast")} = {JsonFields.Format(betaFast)} must not be below " +
                            $"{s.Name("beta_slow")} = {JsonFields.Format(betaSlow)}");

        double? attention = s.OptionalDouble("attention_factor");
        if (attention is < 0)
            throw s.Invalid($"{s.Name("attention_factor")} = {JsonFields.Format(attention.Value)} must not be negative");

        return new RopeScaling
        {
            Type = "yarn",
            Factor = factor,
            OriginalMaxPositionEmbeddings = original,
            BetaFast = betaFast,
            BetaSlow = betaSlow,
            AttentionFactor = attention,
            Mscale = s.OptionalDouble("mscale"),
            MscaleAllDim = s.OptionalDouble("mscale_all_dim"),
            Truncate = s.OptionalBool("truncate") ?? true,
        };
    }
}

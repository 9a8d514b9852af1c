using System.Text.Json;
using System.Text.RegularExpressions;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Config;

/// <summary>The quantized checkpoint layouts we load (besides plain bf16/fp16/fp32 ones).</summary>
public enum QuantizationMethod
{
    /// <summary>compressed-tensors (llm-compressor's FP8 / FP8_DYNAMIC schemes): fp8 e4m3 weights with per-channel or per-tensor scales.</summary>
    CompressedTensorsFp8,
    /// <summary>AutoAWQ "gemm": 4-bit weights with a zero point and a scale per group of input features.</summary>
    AwqInt4,
}

/// <summary>How many scales an FP8 weight has.</summary>
public enum Fp8ScaleStrategy
{
    /// <summary>One per output channel: weight_scale [out, 1].</summary>
    Channel,
    /// <summary>One for the whole tensor: weight_scale [1] (older writers: a scalar, []).</summary>
    Tensor,
}

/// <summary>
/// config.json's <c>quantization_config</c>: which quantized layout the checkpoint holds and which linear layers it
/// covers. Parsed strictly: every value that would change how the stored numbers are read is checked, and anything we
/// cannot read exactly is refused with the field, its value and what is supported. Fields that only steer other
/// runtimes (kernel choices, calibration observers) are ignored, as the rest of config.json's unknown fields are.
/// Module names below are Hugging Face module paths ("model.layers.0.mlp.down_proj"); the caller supplies them
/// (<c>QwQ.Cuda.Weights.QuantizedTensorNames</c>), so no name is spelled out here.
/// </summary>
public abstract record QuantizationConfig
{
    /// <summary>config.json's quant_method of compressed-tensors checkpoints.</summary>
    public const string CompressedTensorsMethod = "compressed-tensors";
    /// <summary>config.json's quant_method of AWQ checkpoints.</summary>
    public const string AwqMethod = "awq";

    private protected QuantizationConfig() { }

    public abstract QuantizationMethod Method { get; }

    /// <summary>One line for <c>qwq info</c> and error messages, e.g. "AWQ INT4 (gemm packing, group size 128, zero points)".</summary>
    public abstract string Description { get; }

    /// <summary>What each supported method must look like, for the message that refuses another.</summary>
    internal const string Supported =
        "supported: \"compressed-tensors\" with FP8 e4m3 weights (format \"float-quantized\", per-channel or per-tensor scales), " +
        "and \"awq\" INT4 (bits 4, version \"gemm\", zero_point true)";

    /// <summary>Parses <c>quantization_config</c>; <paramref name="f"/> is that object.</summary>
    internal static QuantizationConfig Parse(JsonFields f)
    {
        string method = f.RequiredString("quant_method");
        return method switch
        {
            CompressedTensorsMethod => Fp8QuantizationConfig.ParseCompressedTensors(f),
            AwqMethod => AwqQuantizationConfig.ParseAwq(f),
            _ => throw f.Invalid($"{f.Name("quant_method")} = {JsonFields.Quote(method)} is not supported ({Supported})"),
        };
    }

    /// <summary>The value of <paramref name="field"/> for a message (it is present).</summary>
    private protected static JsonElement Value(JsonFields f, string field) => f.Find(field)!.Value;

    /// <summary>
    /// A compressed-tensors module pattern: "re:" + a Python regular expression matched at the start of the module
    /// name (re.match), else an exact module name. The class name "Linear" matches every linear layer. A pattern
    /// .NET cannot compile is refused here rather than silently never matching.
    /// </summary>
    private protected static void CheckPattern(JsonFields f, string field, string pattern)
    {
        if (!pattern.StartsWith("re:", StringComparison.Ordinal)) return;
        try { _ = new Regex(pattern[3..], RegexOptions.CultureInvariant); }
        catch (ArgumentException e)
        {
            throw f.Invalid($"{f.Name(field)} holds {JsonFields.Quote(pattern)}, which is not a regular expression we can read: {e.Message}");
        }
    }

    /// <summary>Whether a linear layer named <paramref name="module"/> matches a compressed-tensors target or ignore entry.</summary>
    internal static bool MatchesLinear(string pattern, string module)
    {
        if (pattern == "Linear") return true; // the class name: every linear layer (all of ours are nn.Linear)
        if (pattern.StartsWith("re:", StringComparison.Ordinal))
            return Regex.IsMatch(module, @"\A(?:" + pattern[3..] + ")", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
        return pattern == module;
    }
}

/// <summary>One compressed-tensors config group with FP8 weights: the modules it targets and how their scales are laid out.</summary>
/// <param name="Group">Its key in config_groups ("group_0").</param>
/// <param name="Targets">Module patterns (see <see cref="QuantizationConfig"/>; "Linear" is every linear layer).</param>
/// <param name="Strategy">Scale layout of the weights.</param>
/// <param name="StaticInputScale">
/// Static input activations: the checkpoint stores an <c>input_scale</c> [1] per layer. Activations stay bf16 here,
/// so those scales are accepted and ignored (running activations at higher precision than calibrated is safe).
/// </param>
public sealed record Fp8WeightScheme(string Group, IReadOnlyList<string> Targets, Fp8ScaleStrategy Strategy, bool StaticInputScale)
{
    public bool Equals(Fp8WeightScheme? other) =>
        other is not null && Group == other.Group && Targets.SequenceEqual(other.Targets) &&
        Strategy == other.Strategy && StaticInputScale == other.StaticInputScale;

    public override int GetHashCode() => HashCode.Combine(Group, Targets.Count, Strategy, StaticInputScale);
}

/// <summary>
/// compressed-tensors with FP8 weights (what llm-compressor's FP8 and FP8_DYNAMIC schemes write): each quantized
/// linear layer stores <c>weight</c> F8_E4M3 [out, in] and <c>weight_scale</c> (bf16/fp16/fp32) [out, 1] or [1];
/// dequantized w = fp8 · scale. Layers in <see cref="Ignore"/> (typically lm_head) stay unquantized.
/// </summary>
public sealed record Fp8QuantizationConfig : QuantizationConfig
{
    /// <summary>The compressed-tensors formats that store FP8 weights as fp8 values plus scales (the same bytes both).</summary>
    public static readonly IReadOnlyList<string> SupportedFormats = ["float-quantized", "naive-quantized"];

    public override QuantizationMethod Method => QuantizationMethod.CompressedTensorsFp8;

    public required IReadOnlyList<Fp8WeightScheme> Schemes { get; init; }

    /// <summary>Modules left unquantized even when a target matches them (same patterns as targets).</summary>
    public IReadOnlyList<string> Ignore { get; init; } = [];

    public override string Description
    {
        get
        {
            var strategies = Schemes.Select(s => s.Strategy).Distinct().Order().Select(s => s == Fp8ScaleStrategy.Channel ? "per-channel" : "per-tensor");
            string ignored = Ignore.Count == 0 ? "" : Ignore.Count <= 3 ? $"; unquantized: {string.Join(", ", Ignore)}" : $"; {Ignore.Count} modules unquantized";
            return $"FP8 e4m3 weights, {string.Join(" and ", strategies)} scales (compressed-tensors{ignored})";
        }
    }

    /// <summary>
    /// The scheme that quantizes linear layer <paramref name="module"/>, or null when it stays unquantized (no target
    /// matches it, or <see cref="Ignore"/> does). When targets of several groups match, the most specific kind of
    /// match wins (exact name, then "re:" pattern, then "Linear"), as compressed-tensors orders them; groups that tie
    /// must agree on the layout.
    /// </summary>
    public Fp8WeightScheme? SchemeFor(string module)
    {
        if (Ignore.Any(p => MatchesLinear(p, module))) return null;
        for (int specificity = 0; specificity < 3; specificity++)
        {
            var matches = Schemes.Where(s => s.Targets.Any(t => Specificity(t) == specificity && MatchesLinear(t, module))).ToList();
            if (matches.Count == 0) continue;
            if (matches.Any(m => m.Strategy != matches[0].Strategy || m.StaticInputScale != matches[0].StaticInputScale))
                throw new ConfigException($"quantization_config: module '{module}' is targeted by config_groups " +
                                          $"{string.Join(" and ", matches.Select(m => $"'{m.Group}'"))}, which store it differently");
            return matches[0];
        }
        return null;
    }

    private static int Specificity(string target) =>
        target.StartsWith("re:", StringComparison.Ordinal) ? 1 : target == "Linear" ? 2 : 0;

    public bool Equals(Fp8QuantizationConfig? other) =>
        other is not null && Schemes.SequenceEqual(other.Schemes) && Ignore.SequenceEqual(other.Ignore);

    public override int GetHashCode() => HashCode.Combine(Method, Schemes.Count, Ignore.Count);

    internal static Fp8QuantizationConfig ParseCompressedTensors(JsonFields f)
    {
        const string weightOnly = "FP8 e4m3 weights are the only compressed-tensors checkpoints we read";

        // Top-level checks first: they say what kind of checkpoint this is at all.
        if (f.OptionalString("quantization_status") is { } status && status != "compressed")
            throw f.Bad("quantization_status", "must be \"compressed\" (the weights stored as fp8 with their scales; " +
                                               "\"frozen\" and earlier states store unquantized weights)", Value(f, "quantization_status"));
        if (f.Has("kv_cache_scheme"))
            throw f.Invalid($"{f.Name("kv_cache_scheme")} is set: KV-cache quantization is not supported (the KV cache is bf16); " +
                            "use a checkpoint quantized without it");
        if (f.Object("sparsity_config") is { } sparsity && sparsity.OptionalString("format") is { } sparseFormat && sparseFormat != "dense")
            throw sparsity.Bad("format", "must be \"dense\" (sparse checkpoints are not supported)", Value(sparsity, "format"));
        if (f.Has("transform_config"))
            throw f.Invalid($"{f.Name("transform_config")} is set: rotated (transformed) weights are not supported");

        string format = f.RequiredString("format");
        bool mixed = format == "mixed-precision";
        if (!mixed && !SupportedFormats.Contains(format))
            throw f.Bad("format", $"must be {Formats()} ({weightOnly})", Value(f, "format"));

        var groups = f.Object("config_groups") ?? throw f.Missing("config_groups");
        var names = groups.FieldNames();
        if (names.Count == 0) throw groups.Invalid($"{f.Name("config_groups")} is empty: no layer is quantized");
        var schemes = new List<Fp8WeightScheme>();
        foreach (string name in names)
        {
            var g = groups.Object(name) ?? throw groups.Missing(name);
            // Since compressed-tensors 0.10 a group may carry its own format; "mixed-precision" at the top means they differ.
            string? groupFormat = g.OptionalString("format");
            if (groupFormat is not null && !SupportedFormats.Contains(groupFormat))
                throw g.Bad("format", $"must be {Formats()} ({weightOnly})", Value(g, "format"));
            if (mixed && groupFormat is null)
                throw f.Invalid($"{f.Name("format")} = \"mixed-precision\" but {g.Name("format")} is not given: " +
                                $"every group must say its format, and only {Formats()} are supported");

            var targets = g.OptionalStringList("targets");
            if (targets is null || targets.Count == 0) throw g.Missing("targets");
            foreach (var t in targets) CheckPattern(g, "targets", t);

            var w = g.Object("weights")
                ?? throw g.Invalid($"{g.Name("weights")} is missing or null: the group quantizes no weights ({weightOnly})");
            var strategy = ParseWeights(w, weightOnly);

            if (g.Has("output_activations"))
                throw g.Invalid($"{g.Name("output_activations")} is set: output quantization is not supported");
            bool staticInput = g.Object("input_activations") is { } a && ParseInputActivations(a);
            schemes.Add(new Fp8WeightScheme(name, targets, strategy, staticInput));
        }

        var ignore = f.OptionalStringList("ignore") ?? [];
        foreach (var p in ignore) CheckPattern(f, "ignore", p);
        return new Fp8QuantizationConfig { Schemes = schemes, Ignore = ignore };
    }

    private static string Formats() => string.Join(" or ", SupportedFormats.Select(s => $"\"{s}\""));

    /// <summary>The weights' args: 8-bit float, symmetric, static, one scale per channel or per tensor.</summary>
    private static Fp8ScaleStrategy ParseWeights(JsonFields w, string weightOnly)
    {
        int bits = w.OptionalInt("num_bits", 1, 64) ?? 8; // compressed-tensors' default
        if (bits != 8)
            throw w.Bad("num_bits", $"must be 8 ({weightOnly}; for 4-bit weights use an AWQ checkpoint)", Value(w, "num_bits"));
        // compressed-tensors defaults type to "int": absent means int8, which we do not read.
        string type = w.OptionalString("type") ?? throw w.Invalid($"{w.Name("type")} is missing, which means \"int\" ({weightOnly}: type must be \"float\")");
        if (!type.Equals("float", StringComparison.OrdinalIgnoreCase))
            throw w.Bad("type", $"must be \"float\" ({weightOnly}; int8 weights are not supported)", Value(w, "type"));
        if (w.OptionalBool("symmetric") == false)
            throw w.Bad("symmetric", "must be true (asymmetric FP8, with zero points, is not supported)", Value(w, "symmetric"));
        if (w.Find("dynamic") is { } dyn && dyn.ValueKind != JsonValueKind.False)
            throw w.Bad("dynamic", "must be false (FP8 weights need their stored scales)", dyn);
        if (w.Has("block_structure"))
            throw w.Bad("block_structure", "must be null (block-wise scales are not supported: per-channel or per-tensor only)", Value(w, "block_structure"));

        int? groupSize = w.OptionalInt("group_size", -1, int.MaxValue);
        string? strategyText = w.OptionalString("strategy");
        // compressed-tensors infers the strategy when it is not written: no group_size → tensor, -1 → channel.
        string strategy = strategyText?.ToLowerInvariant() ?? (groupSize switch { null => "tensor", -1 => "channel", _ => "group" });
        if (strategy is not ("channel" or "tensor"))
        {
            string why = $"must be \"channel\" or \"tensor\" (group, block and token scales of FP8 weights are not supported)";
            throw strategyText is null
                ? w.Bad("group_size", $"implies strategy \"{strategy}\", but the strategy {why}", Value(w, "group_size"))
                : w.Bad("strategy", why, Value(w, "strategy"));
        }
        if (groupSize is > 0 || (groupSize == -1 && strategy == "tensor"))
            throw w.Bad("group_size", $"does not fit strategy \"{strategy}\" (must be null{(strategy == "channel" ? " or -1" : "")})", Value(w, "group_size"));
        return strategy == "channel" ? Fp8ScaleStrategy.Channel : Fp8ScaleStrategy.Tensor;
    }

    /// <summary>
    /// Input activations: we compute in bf16 and never quantize them, so the scheme matters only for which tensors
    /// the checkpoint holds. FP8 ones are accepted; true if they are static (an input_scale per layer, ignored).
    /// </summary>
    private static bool ParseInputActivations(JsonFields a)
    {
        const string why = "activations run in bf16 here; only FP8 input schemes (whose scales are ignored) are accepted";
        int bits = a.OptionalInt("num_bits", 1, 64) ?? 8;
        if (bits != 8) throw a.Bad("num_bits", $"must be 8 ({why})", Value(a, "num_bits"));
        string type = a.OptionalString("type") ?? "int";
        if (!type.Equals("float", StringComparison.OrdinalIgnoreCase))
            throw a.Find("type") is { } t ? a.Bad("type", $"must be \"float\" ({why})", t)
                                          : a.Invalid($"{a.Name("type")} is missing, which means \"int\" ({why})");
        if (a.OptionalBool("symmetric") == false)
            throw a.Bad("symmetric", $"must be true ({why}; asymmetric ones store zero points)", Value(a, "symmetric"));
        return a.Find("dynamic") switch
        {
            null or { ValueKind: JsonValueKind.False } => true,
            { ValueKind: JsonValueKind.True } => false,
            { } other => throw a.Bad("dynamic", "must be true or false", other),
        };
    }
}

/// <summary>
/// AutoAWQ's INT4 "gemm" layout (e.g. Qwen/QwQ-32B-AWQ): each quantized linear layer stores <c>qweight</c> I32
/// [in, out/8], <c>qzeros</c> I32 [in/group, out/8] and <c>scales</c> F16 [in/group, out]; biases stay <c>bias</c>.
/// Every linear layer of the decoder is quantized but those whose name contains an entry of
/// <see cref="ModulesToNotConvert"/>; lm_head never is (AutoAWQ leaves it).
/// </summary>
public sealed record AwqQuantizationConfig : QuantizationConfig
{
    /// <summary>The smallest group size accepted; group sizes are powers of two from here.</summary>
    public const int MinGroupSize = 32;

    public override QuantizationMethod Method => QuantizationMethod.AwqInt4;

    /// <summary>Always 4.</summary>
    public int Bits => 4;

    /// <summary>Input features sharing one scale and zero point: a power of two ≥ 32 dividing every input size (128 in QwQ-32B-AWQ).</summary>
    public required int GroupSize { get; init; }

    /// <summary>Substrings of module names left unquantized (vLLM and transformers match them as substrings).</summary>
    public IReadOnlyList<string> ModulesToNotConvert { get; init; } = [];

    public override string Description =>
        $"AWQ INT4 (gemm packing, group size {GroupSize}, zero points" +
        (ModulesToNotConvert.Count == 0 ? ")" : $"; not converted: {string.Join(", ", ModulesToNotConvert)})");

    /// <summary>Whether decoder linear layer <paramref name="module"/> is quantized (not named by <see cref="ModulesToNotConvert"/>).</summary>
    public bool Converts(string module) => !ModulesToNotConvert.Any(m => module.Contains(m, StringComparison.Ordinal));

    public bool Equals(AwqQuantizationConfig? other) =>
        other is not null && GroupSize == other.GroupSize && ModulesToNotConvert.SequenceEqual(other.ModulesToNotConvert);

    public override int GetHashCode() => HashCode.Combine(Method, GroupSize, ModulesToNotConvert.Count);

    internal static AwqQuantizationConfig ParseAwq(JsonFields f)
    {
        // AutoAWQ's own quant_config.json spells bits and group_size "w_bit" and "q_group_size"; config.json does not.
        int bits = f.OptionalInt("bits", 1, 64) ?? throw f.Missing("bits");
        if (bits != 4) throw f.Bad("bits", "must be 4 (AWQ: only INT4 is supported)", Value(f, "bits"));

        int groupSize = f.OptionalInt("group_size", int.MinValue, int.MaxValue) ?? throw f.Missing("group_size");
        if (groupSize < MinGroupSize || (groupSize & (groupSize - 1)) != 0)
            throw f.Bad("group_size", $"must be a power of two of at least {MinGroupSize} (QwQ-32B-AWQ uses 128; per-channel, -1, is not supported)",
                        Value(f, "group_size"));

        if (f.OptionalBool("zero_point") is not true)
            throw f.Find("zero_point") is { } zp
                ? f.Bad("zero_point", "must be true (symmetric AWQ, without zero points, is not supported)", zp)
                : f.Missing("zero_point");

        string version = f.OptionalString("version") ?? throw f.Missing("version");
        if (!version.Equals("gemm", StringComparison.OrdinalIgnoreCase))
            throw f.Bad("version", "must be \"gemm\" (the packing we read; \"gemv\", \"marlin\" and \"exllama\" store other layouts)", Value(f, "version"));

        // transformers' AwqConfig: llm-awq (MIT's original) packs differently from AutoAWQ.
        if (f.OptionalString("backend") is { } backend && !backend.Equals("autoawq", StringComparison.OrdinalIgnoreCase))
            throw f.Bad("backend", "must be \"autoawq\" (other AWQ backends pack differently)", Value(f, "backend"));

        var skip = f.OptionalStringList("modules_to_not_convert") ?? [];
        if (skip.Any(string.IsNullOrEmpty))
            throw f.Bad("modules_to_not_convert", "must not hold an empty name (it would match every layer)", Value(f, "modules_to_not_convert"));
        return new AwqQuantizationConfig { GroupSize = groupSize, ModulesToNotConvert = skip };
    }
}

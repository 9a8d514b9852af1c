using System.CommandLine;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using static System.FormattableString;

namespace QwQ.Cuda.Cli;

/// <summary>Where the model comes from and how it is run: shared by generate, chat and info.</summary>
internal sealed class ModelSourceOptions
{
    public readonly Option<string?> Model = new("--model", "-m")
    {
        Description = "Model directory (config.json, tokenizer, *.safetensors) or a Hugging Face id in the local HF cache, e.g. Qwen/QwQ-32B",
        HelpName = "DIR|HF_ID",
    };

    public readonly Option<string?> Synthetic = new("--synthetic")
    {
        Description = "Run a named architecture with synthetic weights instead of a checkpoint (e.g. qwq-32b)",
        HelpName = "PRESET",
    };

    public readonly Option<string?> Tokenizer = new("--tokenizer")
    {
        Description = "Directory with tokenizer.json (and tokenizer_config.json); default: the model directory",
        HelpName = "DIR",
    };

    public readonly Option<string?> Backend = new("--backend")
    {
        Description = "cuda: the GPU engine; cpu: the float32 reference (small models only)",
        DefaultValueFactory = _ => "cuda",
    };

    // -c/--ctx-size: what llama.cpp users type for the same thing.
    public readonly Option<int?> MaxContext = TypedOptions.Integer<int>("--max-context", "8192",
        "KV-cache positions to reserve (default: as many as fit in GPU memory, up to the model's maximum)", "-c", "--ctx-size");

    public readonly Option<int> Device = TypedOptions.Integer("--device", 0, "CUDA device ordinal");

    public readonly Option<QuantizeMode> Quantize = TypedOptions.OneOf("--quantize", QuantizeMode.None,
        "Quantize a bf16 checkpoint's layer weights while loading: None, Fp8 (e4m3, one scale per output channel: half the bytes per token) " +
        "or Int4 (round-to-nearest, a scale and zero point per 128 inputs: about a quarter; below AWQ's quality, prefer Qwen/QwQ-32B-AWQ)");
    public readonly Option<KvCacheKind> KvCache = TypedOptions.OneOf("--kv-cache", KvCacheKind.Bf16,
        "How the KV cache stores keys and values: bf16 (the default) or fp8 (e4m3 with one scale per position and KV head: " +
        "about half the bytes per position, so about twice the context in the same memory; see docs/KV_CACHE.md)");
    public readonly Option<Fp8PrefillCopy> Fp8PrefillCopy = TypedOptions.OneOf("--fp8-prefill-copy", Engine.Fp8PrefillCopy.Auto,
        "With fp8 weights on an H100/H200: keep a row-major copy of the weights for prefill's FP8 GEMM (keep: the fp8 weights' " +
        "size again, prefill no longer re-lays them out every pass), untile them every pass (untile: no extra memory), or " +
        "auto (keep when the KV pool still holds the model's longest context and half its positions beside the copy; the default)");
    public readonly Option<int> TensorParallel = TypedOptions.Integer("--tensor-parallel", 1,
        "GPUs to split the model over (tensor parallelism), devices --device to --device + N - 1; must divide the model's KV heads (QwQ-32B: 1, 2, 4 or 8)");
    public readonly Option<AllReduceKind> AllReduce = TypedOptions.OneOf("--allreduce", AllReduceKind.Custom,
        "With --tensor-parallel: how the GPUs sum their partial products: custom (our one-shot kernel over NVLink for decode, NCCL for prefill; the default) or nccl (NCCL throughout)");

    // Lower-case names as the issue and README spell them; null (not given) leaves the engine's default.
    public readonly Option<string?> RopeScaling = new("--rope-scaling")
    {
        Description = "How the config's YaRN rope_scaling applies: adaptive (the default: plain RoPE until a sequence outgrows --rope-switch, " +
                      "then YaRN from position 0), static (YaRN everywhere, as transformers and vLLM apply it), off (plain RoPE everywhere)",
        HelpName = "adaptive|static|off",
    };
    public readonly Option<int?> RopeSwitch = TypedOptions.Integer<int>("--rope-switch", "8192",
        "With adaptive rope scaling (the default): the length past which a sequence switches to YaRN (default: original_max_position_embeddings, 32768 for QwQ)");

    public readonly Option<RopeSwitchMethod> RopeSwitchMethod = TypedOptions.OneOf("--rope-switch-method", Engine.RopeSwitchMethod.Recompute,
        "With adaptive rope scaling: how a sequence's cache turns to YaRN at the switch: recompute (run it again from position 0: " +
        "exactly static YaRN, a prefill of its length; the default) or rerotate (turn the cached keys in place: milliseconds, " +
        "close to but not exactly static YaRN past the first layer; README, \"Rope scaling\")");

    public ModelSourceOptions(bool withBackend = true)
    {
        TypedOptions.AcceptOnly(Backend, "cuda", "cpu");
        MaxContext.HelpName = "N";
        TensorParallel.HelpName = "N";
        TypedOptions.AcceptOnly(RopeScaling, "adaptive", "static", "off");
        RopeSwitch.HelpName = "N";
        WithBackend = withBackend;
    }

    private bool WithBackend { get; }

    public void AddTo(Command command)
    {
        command.Add(Model);
        command.Add(Synthetic);
        command.Add(Tokenizer);
        command.Add(MaxContext);
        if (WithBackend)
        {
            command.Add(Backend);
            command.Add(Device);
            command.Add(Quantize);
            command.Add(KvCache);
            command.Add(Fp8PrefillCopy);
            command.Add(TensorParallel);
            command.Add(AllReduce);
            command.Add(RopeScaling);
            command.Add(RopeSwitch);
            command.Add(RopeSwitchMethod);
        }
    }

    /// <summary>The --model value, or null with --synthetic; exactly one of the two must be given.</summary>
    public (string? Model, string? Synthetic) Source(ParseResult p) =>
        ExactlyOne(p.GetValue(Model), p.GetValue(Synthetic), "no model given", "to run without weights");

    /// <summary>--model or --synthetic, exactly one; the messages name both and say what --synthetic gives.</summary>
    internal static (string? Model, string? Synthetic) ExactlyOne(string? model, string? synthetic, string missing, string syntheticGives)
    {
        if (model is not null && synthetic is not null)
            throw new OptionException("give either --model or --synthetic, not both");
        if (model is null && synthetic is null)
            throw new OptionException($"{missing}: pass --model DIR (or a Hugging Face id such as Qwen/QwQ-32B), or --synthetic qwq-32b {syntheticGives}");
        return (model, synthetic);
    }

    public QwqModelOptions Bind(ParseResult p)
    {
        var (_, synthetic) = Source(p);
        int? maxContext = p.GetValue(MaxContext);
        if (maxContext is < 1)
            throw new OptionException($"--max-context {maxContext} must be at least 1");
        int tensorParallel = WithBackend ? p.GetValue(TensorParallel) : 1;
        if (tensorParallel < 1)
            throw new OptionException($"--tensor-parallel {tensorParallel} must be at least 1 (1: one GPU)");
        return new QwqModelOptions
        {
            Synthetic = synthetic,
            TokenizerPath = p.GetValue(Tokenizer),
            Backend = WithBackend && p.GetValue(Backend) == "cpu" ? BackendKind.Cpu : BackendKind.Cuda,
            Engine = new EngineOptions
            {
                MaxContext = maxContext,
                Device = WithBackend ? p.GetValue(Device) : 0,
                Quantize = WithBackend ? p.GetValue(Quantize) : QuantizeMode.None,
                KvCache = WithBackend ? p.GetValue(KvCache) : KvCacheKind.Bf16, // both backends run either kind
                Fp8PrefillCopy = WithBackend ? p.GetValue(Fp8PrefillCopy) : Engine.Fp8PrefillCopy.Auto,
                TensorParallel = tensorParallel, // checked against the model and the backend at load (TensorParallelSupport)
                AllReduce = WithBackend ? p.GetValue(AllReduce) : AllReduceKind.Custom,
                // checked against the model and the backend at load (RopePlan.Resolve, CudaBackend.RopeFor)
                RopeScaling = WithBackend ? p.GetValue(RopeScaling) switch
                {
                    "adaptive" => RopeScalingMode.Adaptive,
                    "static" => RopeScalingMode.Static,
                    "off" => RopeScalingMode.Off,
                    _ => null,
                } : null,
                RopeSwitchPosition = WithBackend ? p.GetValue(RopeSwitch) : null,
                RopeSwitch = WithBackend ? p.GetValue(RopeSwitchMethod) : Engine.RopeSwitchMethod.Recompute,
                // serve, chat and eval step through the batch scheduler, and generate appends a prompt 2048 rows at a
                // time (GenerationOptions.PrefillChunk): no step has more rows than the scheduler's, so EngineOptions'
                // 4096-row workspace (for qwq bench and direct Append calls) would hold activations no step uses. Sized
                // to the scheduler's step, that memory goes to the KV pool: ~1,700 positions on an 80 GB card.
                PrefillChunk = new SchedulerOptions().MaxRowsPerStep,
            },
        };
    }
}

/// <summary>Every sampling and stopping option; unset values take the model's generation_config.json.</summary>
internal sealed class SamplingCliOptions
{
    // --temp as in llama.cpp. No -t: llama.cpp users mean threads by it, and `qwq tokenize -t` is its text.
    public readonly Option<double?> Temperature = TypedOptions.Real("--temperature", "0.6",
        "Sampling temperature; 0 = greedy (default: the model's, 0.6 for QwQ)", "--temp");
    public readonly Option<double?> TopP = TypedOptions.Real("--top-p", "0.95",
        "Nucleus sampling: keep the smallest set of tokens whose probability reaches P, in (0, 1]");
    public readonly Option<int?> TopK = TypedOptions.Integer<int>("--top-k", "40", "Keep the K most likely tokens; 0 = off");
    public readonly Option<double?> MinP = TypedOptions.Real("--min-p", "0.05", "Drop tokens less likely than P × the most likely one, in [0, 1]");
    public readonly Option<double?> PresencePenalty = TypedOptions.Real("--presence-penalty", "0.5",
        "Subtract this from the logits of tokens already generated");
    public readonly Option<double?> FrequencyPenalty = TypedOptions.Real("--frequency-penalty", "0.5",
        "Subtract this × count from the logits of tokens already generated");
    public readonly Option<double?> RepetitionPenalty = TypedOptions.Real("--repetition-penalty", "1.05",
        "Divide positive (multiply negative) logits of seen tokens by this; 1 = off");
    public readonly Option<ulong?> Seed = TypedOptions.Integer<ulong>("--seed", "42", "Random seed, for reproducible sampling", "-s");
    public readonly Option<int?> MaxTokens = TypedOptions.Integer<int>("--max-tokens", "512",
        "Most new tokens to generate (default: until the end of the answer or a full context)", "-n");
    public readonly Option<string[]> Stop = new("--stop")
    {
        Description = "Stop when the output contains this text (repeatable); the text itself is not printed",
        AllowMultipleArgumentsPerToken = false,
        Arity = ArgumentArity.ZeroOrMore,
    };

    public void AddTo(Command command)
    {
        command.Add(Temperature);
        command.Add(TopP);
        command.Add(TopK);
        command.Add(MinP);
        command.Add(PresencePenalty);
        command.Add(FrequencyPenalty);
        command.Add(RepetitionPenalty);
        command.Add(Seed);
        command.Add(MaxTokens);
        command.Add(Stop);
    }

    /// <summary>The options over <paramref name="defaults"/> (the model's sampling defaults); validated, with CLI flag names in messages.</summary>
    public GenerationOptions Bind(ParseResult p, SamplingOptions defaults)
    {
        // Checked here first so the message names the flag a user typed.
        if (p.GetValue(Temperature) is double t && !(t >= 0 && double.IsFinite(t)))
            throw new OptionException(Invariant($"--temperature {t} must be 0 (greedy) or positive"));
        if (p.GetValue(TopP) is double tp && !(tp > 0 && tp <= 1))
            throw new OptionException(Invariant($"--top-p {tp} must be in (0, 1]"));
        if (p.GetValue(TopK) is int tk && tk < 0)
            throw new OptionException(Invariant($"--top-k {tk} must be 0 (off) or positive"));
        if (p.GetValue(MinP) is double mp && !(mp >= 0 && mp <= 1))
            throw new OptionException(Invariant($"--min-p {mp} must be in [0, 1]"));
        if (p.GetValue(RepetitionPenalty) is double rp && !(rp > 0 && double.IsFinite(rp)))
            throw new OptionException(Invariant($"--repetition-penalty {rp} must be positive (1 = off)"));
        if (p.GetValue(PresencePenalty) is double pp && !double.IsFinite(pp))
            throw new OptionException(Invariant($"--presence-penalty {pp} must be a finite number"));
        if (p.GetValue(FrequencyPenalty) is double fp && !double.IsFinite(fp))
            throw new OptionException(Invariant($"--frequency-penalty {fp} must be a finite number"));
        if (p.GetValue(MaxTokens) is int mt && mt < 1)
            throw new OptionException(Invariant($"--max-tokens {mt} must be at least 1"));
        string[] stops = p.GetValue(Stop) ?? [];
        if (stops.Any(string.IsNullOrEmpty))
            throw new OptionException("--stop needs non-empty text");

        var sampling = SamplingBinding.Apply(defaults,
            p.GetValue(Temperature), p.GetValue(TopP), p.GetValue(TopK), p.GetValue(MinP),
            p.GetValue(PresencePenalty), p.GetValue(FrequencyPenalty), p.GetValue(RepetitionPenalty), p.GetValue(Seed));
        var options = new GenerationOptions
        {
            Sampling = sampling,
            MaxNewTokens = p.GetValue(MaxTokens),
            StopStrings = stops,
        };
        options.Validate();
        return options;
    }
}

/// <summary>Output switches shared by generate and chat.</summary>
internal sealed class OutputCliOptions
{
    public readonly Option<bool> Json = new("--json") { Description = "Write JSON lines (one object per update, then a final one) for scripts" };
    public readonly Option<bool> HideReasoning = new("--hide-reasoning") { Description = "Do not print the model's reasoning (the <think> part)" };
    public readonly Option<bool> NoProgress = new("--no-progress") { Description = "No progress bar while loading" };

    public void AddTo(Command command)
    {
        command.Add(Json);
        command.Add(HideReasoning);
        command.Add(NoProgress);
    }
}

/// <summary>
/// Where tokenize and render find the tokenizer: a model directory, a Hugging Face id in the local cache, or a
/// synthetic preset's built-in files. They need no weights, so a directory with only the tokenizer files is enough.
/// </summary>
internal sealed class TokenizerSourceOptions(string modelDescription, Func<string, string?>? environment)
{
    public readonly Option<string?> Model = new("--model", "-m") { Description = modelDescription, HelpName = "DIR|HF_ID" };

    public readonly Option<string?> Synthetic = new("--synthetic")
    {
        Description = "Use a preset's built-in tokenizer files instead of a model directory (e.g. qwq-32b)",
        HelpName = "PRESET",
    };

    public void AddTo(Command command)
    {
        command.Add(Model);
        command.Add(Synthetic);
    }

    /// <summary>The directory holding the tokenizer files; exactly one of --model and --synthetic must be given.</summary>
    public string Resolve(ParseResult p)
    {
        var (model, synthetic) = ModelSourceOptions.ExactlyOne(p.GetValue(Model), p.GetValue(Synthetic), "no tokenizer given", "for the built-in QwQ tokenizer");
        if (model is not null) return Hosting.ModelLocator.Resolve(model, environment);
        Config.ModelPresets.Get(synthetic!); // an unknown preset is reported with the list of known ones
        return Presets.PresetFiles.Extract(synthetic!)
               ?? throw new OptionException($"the preset '{synthetic}' has no built-in tokenizer; pass --model DIR with the tokenizer files");
    }
}

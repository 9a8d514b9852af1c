using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Native;
using QwQ.Cuda.Weights;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq info</c>: the architecture, parameter count and memory table (every weight kind's bytes and the context that
/// fits), from config.json alone — no weights and no GPU needed. Without a GPU it says so and plans for an 80 GB H100
/// instead; <c>--gpu-memory</c> plans for cards of other sizes.
/// </summary>
internal static class InfoCommand
{
    /// <summary>
    /// Free memory of an idle 80 GB H100 once a CUDA context exists: what --gpu-memory 80GB assumes (78.7 GiB; a
    /// context takes about 0.5 GiB, 0.51 measured on an H200), so the plan without a GPU is that card's.
    /// </summary>
    internal static readonly long H100FreeBytes = MemoryTable.AssumedFreeBytes(80L << 30);

    /// <summary>A card size as given to --gpu-memory, and its bytes (GB as cards are labelled, = GiB = 2^30).</summary>
    internal readonly record struct CardSize(string Text, long Bytes);

    /// <summary>One table of the memory plan: the device (or card) it is for, whether its free memory is assumed.</summary>
    private sealed record PlannedDevice(string Name, bool Assumed, MemoryTable Table);

    /// <summary>The largest card --gpu-memory takes (far above any GPU; keeps the byte count and its sums in a long).</summary>
    internal const long MaxCardBytes = 1L << 50;

    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions(withBackend: false);
        var device = TypedOptions.Integer("--device", 0, "CUDA device ordinal to plan for");
        var json = new Option<bool>("--json") { Description = "Write one JSON object" };
        var tensorParallel = TypedOptions.Integer("--tensor-parallel", 1,
            "Plan for the model split over N alike GPUs (tensor parallelism): weights, KV cache and context per GPU");
        tensorParallel.HelpName = "N";
        var gpuMemory = new Option<string?>("--gpu-memory")
        {
            Description = "Plan for cards of these sizes instead of this GPU: 24GB, 80GiB, or a list such as 24GiB,48GiB,80GiB,141GiB " +
                          "(sizes as on the card's label: a card sold as \"80GB\" holds 80 GiB, so GB and GiB both mean 2^30 bytes here)",
            HelpName = "SIZES",
        };
        var command = new Command("info", "Show the model's architecture, parameter count and GPU memory plan (needs only config.json)");
        source.AddTo(command);
        command.Add(device);
        command.Add(tensorParallel);
        command.Add(source.KvCache); // plans the pool in this format (the other backend options do not change the plan)
        command.Add(json);
        command.Add(gpuMemory);
        command.SetAction(p =>
        {
            var cards = p.GetValue(gpuMemory) is string sizes ? ParseGpuMemory(sizes) : null;
            var (model, synthetic) = source.Source(p);
            var modelOptions = source.Bind(p);
            var engine = modelOptions.Engine with
            {
                Device = p.GetValue(device), TensorParallel = p.GetValue(tensorParallel), KvCache = p.GetValue(source.KvCache),
            };
            Run(host, model, synthetic, engine, p.GetValue(json), cards, modelOptions.TokenizerPath);
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>
    /// --gpu-memory: card sizes separated by commas, each a number (invariant culture, decimals allowed) and GB or GiB,
    /// any case, a space between them or none: "24GB", "24 GB", "79.2GiB", "24GB,48GB,80GB,141GB". GB means what a card's label means: GPU memory is sold in
    /// binary units (an "80GB" H100 holds 80 GiB, 79.2 of it visible), so both units are 2^30 bytes here; planning
    /// 80·10^9 bytes for a user who typed the card's name would answer for a card nobody sells.
    /// </summary>
    internal static IReadOnlyList<CardSize> ParseGpuMemory(string text)
    {
        var cards = new List<CardSize>();
        foreach (string part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            var (number, unit) =
                part.EndsWith("GiB", StringComparison.OrdinalIgnoreCase) ? (part[..^3], 1L << 30)
                : part.EndsWith("GB", StringComparison.OrdinalIgnoreCase) ? (part[..^2], 1L << 30)
                : (part, 0L);
            // A space before the unit is how labels read ("24 GB"); NumberStyles.AllowDecimalPoint alone: no sign,
            // exponent, group separators or spaces inside the number ("2 4GB").
            if (unit == 0 || !decimal.TryParse(number.TrimEnd(), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out decimal value))
                throw new OptionException(
                    $"--gpu-memory '{text}': '{part}' is not a card size; expected a number of GB as on the card's label (= GiB), " +
                    "comma-separated, e.g. 24GB or 24GB,48GB,80GB,141GB");
            // Bounded before multiplying: 10^20 GB would overflow the decimal.
            decimal bytes = value <= MaxCardBytes / (decimal)unit ? Math.Round(value * unit) : decimal.MaxValue;
            if (bytes < 1L << 30 || bytes > MaxCardBytes)
                throw new OptionException(
                    $"--gpu-memory '{text}': {part} is outside 1 GiB to {MaxCardBytes >> 40} TiB; give a card size such as 24GB or 80GiB");
            cards.Add(new CardSize(part, (long)bytes));
        }
        return cards;
    }

    internal static void Run(CliHost host, string? model, string? synthetic, EngineOptions engine, bool json, IReadOnlyList<CardSize>? cards = null,
        string? tokenizerDir = null)
    {
        ModelConfig config;
        string sourceText;
        string? dir = null;
        if (synthetic is not null)
        {
            config = ModelPresets.Get(synthetic);
            sourceText = $"preset '{synthetic}' (synthetic weights)";
        }
        else
        {
            dir = ModelLocator.Resolve(model!, host.Environment);
            string configPath = Path.Combine(dir, "config.json");
            if (!File.Exists(configPath))
                throw new ConfigException($"{configPath} does not exist: the model directory needs the checkpoint's config.json");
            config = ModelConfig.Load(configPath);
            sourceText = dir;
        }

        if (TensorParallelPlan.Check(config, engine.TensorParallel) is { } tpError) throw new OptionException(tpError);
        var weights = dir is null ? (Files: 0, Bytes: 0L) : FindWeights(dir);
        // Users run info to check a download: weights that do not match the config (another model's, a missing shard, a
        // truncated file) are that error, as every other command would say at load, not a plan printed over them. The
        // headers only; a directory with config.json alone (before the download) is still planned for.
        if (dir is not null && (weights.Files > 0 || File.Exists(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName))))
        {
            using var checkpoint = SafetensorsCheckpoint.Open(dir);
            CheckpointValidator.Validate(checkpoint, config);
        }
        // Where a load would read it: --tokenizer, else the model directory.
        bool tokenizer = (tokenizerDir ?? dir) is { } tokenizerAt && File.Exists(Path.Combine(tokenizerAt, "tokenizer.json"));

        // The plan: for the cards asked about; else on this GPU when there is one, else for an H100 80GB. Each table is
        // the engine's own plan per weight kind, so the numbers are what a load on that device would pick.
        bool gpu = QwQ.Cuda.Native.Cuda.IsAvailable(out string noGpuReason);
        var devices = new List<PlannedDevice>();
        if (cards is not null)
        {
            foreach (var card in cards)
            {
                var table = MemoryTable.For(config, card.Bytes, engine);
                string size = card.Text;
                devices.Add(new PlannedDevice($"{Cards(engine)}{size} card (assumed: {Gib(table.FreeBytes)} free)", Assumed: true, table));
            }
        }
        else if (gpu)
        {
            using var context = CudaContext.Create(engine.Device);
            long free = context.GetMemoryInfo().Free;
            devices.Add(new PlannedDevice($"{Cards(engine)}{context.DeviceName}, {Gib(free)} free", Assumed: false,
                MemoryTable.ForFreeBytes(config, free, engine, context.ComputeCapability.Major)));
        }
        else
        {
            devices.Add(new PlannedDevice($"{Cards(engine)}NVIDIA H100 80GB (assumed: {Gib(H100FreeBytes)} free)", Assumed: true,
                MemoryTable.ForFreeBytes(config, H100FreeBytes, engine)));
        }

        var info = new Info(config, sourceText, weights, tokenizer, tokenizerDir, gpu, noGpuReason, cards, devices, engine.ReserveBytes, engine.KvCache);
        if (json) WriteJson(host, info);
        else WriteText(host, info);
    }

    /// <summary>"2 × " before a card's name when the model is split over several (the figures are per card).</summary>
    private static string Cards(EngineOptions engine) => engine.TensorParallel > 1 ? $"{engine.TensorParallel} × " : "";

    private sealed record Info(ModelConfig Config, string Source, (int Files, long Bytes) Weights, bool Tokenizer, string? TokenizerDir, bool Gpu, string NoGpuReason,
        IReadOnlyList<CardSize>? Cards, IReadOnlyList<PlannedDevice> Devices, long ReserveBytes, KvCacheKind KvCache)
    {
        /// <summary>Planned for --gpu-memory's cards rather than the present device.</summary>
        public bool ForCards => Cards is not null;

        /// <summary>The kind the checkpoint loads as (bf16 for plain weights): its row is "the" plan of the present device.</summary>
        public WeightKind PlanKind => MemoryTable.CheckpointKind(Config) ?? WeightKind.Bf16;
    }

    private static (int Files, long Bytes) FindWeights(string dir)
    {
        var files = Directory.GetFiles(dir, "*.safetensors");
        return (files.Length, files.Sum(f => ((FileInfo?)new FileInfo(f).ResolveLinkTarget(returnFinalTarget: true) ?? new FileInfo(f)).Length) /* HF cache: links into blobs/ */);
    }

    private static void WriteText(CliHost host, Info info)
    {
        var (c, source, weights) = (info.Config, info.Source, info.Weights);
        var o = host.Out;
        o.WriteLine(host.Bold("Model"));
        Row(o, "source", source);
        Row(o, "architecture", $"{c.Architecture} ({c.ModelType}), {c.TorchDtype}");
        Row(o, "layers", c.NumHiddenLayers.ToString(CultureInfo.InvariantCulture));
        Row(o, "hidden size", c.HiddenSize.ToString(CultureInfo.InvariantCulture));
        Row(o, "attention heads", Invariant($"{c.NumAttentionHeads} query, {c.NumKeyValueHeads} key/value, head dim {c.HeadDim}"));
        Row(o, "intermediate size", c.IntermediateSize.ToString(CultureInfo.InvariantCulture));
        Row(o, "vocabulary", c.VocabSize.ToString(CultureInfo.InvariantCulture));
        Row(o, "max positions", c.MaxPositionEmbeddings.ToString(CultureInfo.InvariantCulture) + (c.RopeScaling is null ? "" : " (YaRN scaling)"));
        Row(o, "rope theta", c.RopeTheta.ToString("G", CultureInfo.InvariantCulture));
        Row(o, "rope scaling", RopeScalingText(c));
        Row(o, "tied embeddings", c.TieWordEmbeddings ? "yes" : "no");
        Row(o, "parameters", Invariant($"{c.ParameterCount:N0} ({c.ParameterCount / 1e9:F2} B)"));
        Row(o, "quantization", c.Quantization?.Description ?? "none");
        // Device bytes per kind (the layers' linear weights in that kind; embedding, norms, biases and lm_head bf16).
        var byKind = info.Devices[0].Table.Rows;
        int tp = info.Devices[0].Table.TensorParallel;
        Row(o, "weights", string.Join(", ", byKind.Select(r => $"{r.Name} {Gb(r.WeightBytes)} ({Gib(r.WeightBytes)}{(r.IsCheckpointKind ? ", the checkpoint's" : "")})")) +
                          (tp > 1 ? $" on each of {tp} GPUs (tensor parallel; the embedding on every one)" : " on the GPU"));
        Row(o, "unquantized", $"{Gb(c.WeightBytes)} ({Gib(c.WeightBytes)}) at {c.TorchDtype}");
        if (!source.StartsWith("preset", StringComparison.Ordinal))
        {
            Row(o, "checkpoint files", weights.Files == 0 ? "no *.safetensors (config only)" : Invariant($"{weights.Files} safetensors, {Gb(weights.Bytes)}"));
            Row(o, "tokenizer", (info.Tokenizer, info.TokenizerDir) switch
            {
                (true, null) => "tokenizer.json",
                (true, string t) => Path.Combine(t, "tokenizer.json"),
                (false, null) => "none in the model directory",
                (false, string t) => $"none in {t}",
            });
        }
        o.WriteLine();
        o.WriteLine(host.Bold("Memory plan"));
        if (!info.Gpu && !info.ForCards) o.WriteLine(host.Dim($"  no usable GPU here: {info.NoGpuReason}"));
        string kvFormat = info.KvCache == KvCacheKind.Fp8 ? "fp8 K and V with a scale per head" : "bf16 K and V";
        Row(o, "KV cache per token", $"{PerTokenSize(KvPool.BytesPerToken(c, info.KvCache))} ({kvFormat}, {c.NumHiddenLayers} layers)" +
                                     (tp > 1 ? $"; {PerTokenSize(byKind[0].KvBytesPerToken)} on each of {tp} GPUs" : ""));
        Row(o, "reserve", $"{Gib(info.ReserveBytes)} left free beside weights, workspace and KV cache");
        Row(o, "model maximum", Invariant($"{MemoryPlan.ModelMaxPositions(c):N0} positions"));
        foreach (var device in info.Devices)
        {
            o.WriteLine();
            Row(o, "device", device.Name);
            o.WriteLine(host.Dim($"  {"kind",-22} {"weights",-10} {"workspace",-10} {"max context",-15} {"KV pool",-18} on the GPU today"));
            foreach (var r in device.Table.Rows)
            {
                string kind = r.Name + (r.IsCheckpointKind ? " (checkpoint)" : "");
                string fit = r.Plan is { } p
                    ? Invariant($"{$"{p.MaxContext:N0} tokens",-15} {$"{p.KvPoolPositions:N0} positions",-18}")
                    : $"{"does not fit",-15} {"",-18}";
                o.WriteLine($"  {kind,-22} {Gib(r.WeightBytes),-10} {Gib(r.WorkspaceBytes),-10} {fit} {r.GpuNote}");
                if (r.DoesNotFit is { } reason) o.WriteLine(host.Dim($"  {"",-22} {reason}"));
                if (r.Plan is { Fp8PrefillCopyBytes: > 0 } kept)
                    o.WriteLine(host.Dim($"  {"",-22} with {Gib(kept.Fp8PrefillCopyBytes)} of row-major copies of the weights for prefill's FP8 GEMM (--fp8-prefill-copy)"));
            }
        }
        if (info.Cards is { } cards)
        {
            o.WriteLine();
            o.WriteLine(host.Dim($"  assumed free: {MemoryTable.VisiblePercent}% of the card (the rest is ECC and the driver's) less " +
                                 $"{Gib(MemoryTable.ContextOverheadBytes)} for a CUDA context; an H100 80GB shows 79.2 GiB total, about 78.7 GiB free."));
        }
    }

    /// <summary>
    /// What generate, chat, serve and eval run by default (README, "Rope scaling"): adaptive YaRN where config.json has
    /// YaRN rope_scaling, plain RoPE where it has none.
    /// </summary>
    internal static string RopeScalingText(ModelConfig c)
    {
        if (c.RopeScaling is not { } y)
            return "none: plain RoPE (config.json has no rope_scaling; QwQ-32B's card adds YaRN for inputs over 32,768 tokens)";
        var plan = DefaultRope(c);
        return Invariant($"{ModeName(plan)} (the default): plain RoPE up to {plan.SwitchPosition:N0} positions, YaRN (factor {y.Factor:G}) past them; ") +
               "--rope-scaling static|off and --rope-switch change it";
    }

    /// <summary>The rope plan the engine resolves when no --rope-scaling is given (the one place that decides the default).</summary>
    private static Model.RopePlan DefaultRope(ModelConfig c) => Model.RopePlan.Resolve(c, null, null);

    private static string ModeName(Model.RopePlan plan) => plan.Mode.ToString().ToLowerInvariant();

    private static void WriteJson(CliHost host, Info info)
    {
        var c = info.Config;
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("source", info.Source);
            w.WriteString("architecture", c.Architecture);
            w.WriteString("dtype", c.TorchDtype);
            if (c.Quantization is { } q)
            {
                w.WriteStartObject("quantization");
                w.WriteString("method", q.Method switch
                {
                    QuantizationMethod.CompressedTensorsFp8 => QuantizationConfig.CompressedTensorsMethod,
                    QuantizationMethod.AwqInt4 => QuantizationConfig.AwqMethod,
                    _ => q.Method.ToString(),
                });
                w.WriteString("description", q.Description);
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("quantization");
            }
            w.WriteString("checkpoint_kind", MemoryTable.CheckpointKind(c) is { } kind ? MemoryTable.KindName(kind) : null);
            w.WriteNumber("num_hidden_layers", c.NumHiddenLayers);
            w.WriteNumber("hidden_size", c.HiddenSize);
            w.WriteNumber("num_attention_heads", c.NumAttentionHeads);
            w.WriteNumber("num_key_value_heads", c.NumKeyValueHeads);
            w.WriteNumber("head_dim", c.HeadDim);
            w.WriteNumber("intermediate_size", c.IntermediateSize);
            w.WriteNumber("vocab_size", c.VocabSize);
            w.WriteNumber("max_position_embeddings", c.MaxPositionEmbeddings);
            if (c.RopeScaling is { } yarn)
            {
                // what the engine runs without --rope-scaling: adaptive, switching past the original context
                w.WriteStartObject("rope_scaling");
                w.WriteString("type", yarn.Type);
                w.WriteNumber("factor", yarn.Factor);
                w.WriteNumber("original_max_position_embeddings", yarn.OriginalMaxPositionEmbeddings);
                var plan = DefaultRope(c);
                w.WriteString("default_mode", ModeName(plan));
                w.WriteNumber("switch_position", plan.SwitchPosition);
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("rope_scaling");
            }
            w.WriteNumber("parameters", c.ParameterCount);
            w.WriteNumber("weight_bytes", c.WeightBytes); // unquantized, at dtype
            w.WriteStartObject("device_weight_bytes");
            foreach (var r in info.Devices[0].Table.Rows) w.WriteNumber(r.Name, r.WeightBytes);
            w.WriteEndObject();
            w.WriteNumber("checkpoint_files", info.Weights.Files);
            w.WriteNumber("checkpoint_bytes", info.Weights.Bytes);
            w.WriteBoolean("tokenizer", info.Tokenizer);
            w.WriteString("kv_cache", info.KvCache.ToString().ToLowerInvariant());
            w.WriteNumber("kv_bytes_per_token", KvPool.BytesPerToken(c, info.KvCache));
            w.WriteNumber("tensor_parallel", info.Devices[0].Table.TensorParallel); // device figures are per GPU
            w.WriteNumber("model_max_positions", MemoryPlan.ModelMaxPositions(c));
            w.WriteBoolean("gpu", info.Gpu);
            if (!info.Gpu) w.WriteString("no_gpu_reason", info.NoGpuReason);
            if (!info.ForCards)
            {
                // The present device's plan for the kind the checkpoint loads as (the table below has every kind).
                var device = info.Devices[0];
                var row = device.Table[info.PlanKind];
                w.WriteString("plan_device", device.Name);
                if (row.Plan is { } plan)
                {
                    w.WriteStartObject("plan");
                    w.WriteString("kind", row.Name);
                    w.WriteNumber("free_bytes", plan.FreeBytes);
                    w.WriteNumber("weight_bytes", plan.WeightBytes);
                    w.WriteNumber("workspace_bytes", plan.WorkspaceBytes);
                    w.WriteNumber("reserve_bytes", plan.ReserveBytes);
                    w.WriteNumber("kv_bytes_per_token", plan.KvBytesPerToken);
                    w.WriteNumber("max_context", plan.MaxContext);
                    w.WriteNumber("kv_cache_bytes", plan.KvCacheBytes);
                    w.WriteEndObject();
                }
                else
                {
                    w.WriteString("plan_error", row.DoesNotFit);
                }
            }
            w.WriteStartArray("memory");
            foreach (var device in info.Devices)
            {
                var t = device.Table;
                w.WriteStartObject();
                w.WriteString("device", device.Name);
                if (t.CardBytes is long card) w.WriteNumber("card_bytes", card);
                w.WriteNumber("free_bytes", t.FreeBytes);
                w.WriteBoolean("free_assumed", device.Assumed);
                w.WriteNumber("reserve_bytes", info.ReserveBytes);
                w.WriteStartArray("rows");
                foreach (var r in t.Rows)
                {
                    w.WriteStartObject();
                    w.WriteString("kind", r.Name);
                    w.WriteBoolean("checkpoint", r.IsCheckpointKind);
                    w.WriteString("gpu", r.Gpu.ToString().ToLowerInvariant());
                    w.WriteString("gpu_note", r.GpuNote);
                    w.WriteNumber("weight_bytes", r.WeightBytes);
                    w.WriteNumber("workspace_bytes", r.WorkspaceBytes);
                    w.WriteNumber("kv_bytes_per_token", r.KvBytesPerToken);
                    w.WriteBoolean("fits", r.Fits);
                    if (r.Plan is { } p)
                    {
                        w.WriteNumber("max_context", p.MaxContext);
                        w.WriteNumber("kv_pool_positions", p.KvPoolPositions);
                        w.WriteNumber("kv_cache_bytes", p.KvCacheBytes);
                        w.WriteNumber("fp8_prefill_copy_bytes", p.Fp8PrefillCopyBytes);
                    }
                    else
                    {
                        w.WriteString("reason", r.DoesNotFit);
                    }
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        host.Out.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    private static void Row(TextWriter o, string name, string value) => o.WriteLine($"  {name,-20} {value}");

    /// <summary>A KV size per position: whole KiB as QwQ-32B's are (256 KiB), bytes below 1 KiB (a small test model's 512 bytes would print as "0 KiB").</summary>
    internal static string PerTokenSize(long bytes) =>
        bytes < 1024 ? Invariant($"{bytes} bytes") : Invariant($"{bytes / 1024.0:0.#} KiB");

    internal static string Gib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F1} GiB");
    internal static string Gb(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1e9:F1} GB");
}

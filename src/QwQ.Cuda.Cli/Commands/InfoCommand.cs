using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Native;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq info</c>: the architecture, parameter count and memory plan, from config.json alone — no weights and no
/// GPU needed. Without a GPU it says so and plans for an 80 GB H100 instead.
/// </summary>
internal static class InfoCommand
{
    /// <summary>Free memory of an idle 80 GB H100 once a CUDA context exists (about 79.1 GiB).</summary>
    internal const long H100FreeBytes = 84_935_000_000;

    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions(withBackend: false);
        var device = TypedOptions.Integer("--device", 0, "CUDA device ordinal to plan for");
        var json = new Option<bool>("--json") { Description = "Write one JSON object" };
        var command = new Command("info", "Show the model's architecture, parameter count and GPU memory plan (needs only config.json)");
        source.AddTo(command);
        command.Add(device);
        command.Add(json);
        command.SetAction(p =>
        {
            var (model, synthetic) = source.Source(p);
            var modelOptions = source.Bind(p);
            var engine = modelOptions.Engine with { Device = p.GetValue(device) };
            Run(host, model, synthetic, engine, p.GetValue(json));
            return ExitCodes.Ok;
        });
        return command;
    }

    internal static void Run(CliHost host, string? model, string? synthetic, EngineOptions engine, bool json)
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

        var weights = dir is null ? (Files: 0, Bytes: 0L) : FindWeights(dir);
        bool tokenizer = dir is not null && File.Exists(Path.Combine(dir, "tokenizer.json"));

        // The plan: on this GPU when there is one, else for an H100 80GB.
        bool gpu = QwQ.Cuda.Native.Cuda.IsAvailable(out string noGpuReason);
        string planDevice;
        long free;
        if (gpu)
        {
            using var context = CudaContext.Create(engine.Device);
            free = context.GetMemoryInfo().Free;
            planDevice = $"{context.DeviceName}, {Gib(free)} free";
        }
        else
        {
            free = H100FreeBytes;
            planDevice = $"NVIDIA H100 80GB (assumed: {Gib(free)} free)";
        }
        // The engine's own plan, so the numbers are what a load on this device would pick.
        MemoryPlan? plan = null;
        string? planError = null;
        try { plan = MemoryPlan.Create(config, free, engine); }
        catch (CudaOutOfMemoryPlanException e) { planError = e.Message; }

        if (json) WriteJson(host, config, sourceText, weights, tokenizer, gpu, noGpuReason, planDevice, plan, planError);
        else WriteText(host, config, sourceText, weights, tokenizer, gpu, noGpuReason, planDevice, plan, planError);
    }

    private static (int Files, long Bytes) FindWeights(string dir)
    {
        var files = Directory.GetFiles(dir, "*.safetensors");
        return (files.Length, files.Sum(f => ((FileInfo?)new FileInfo(f).ResolveLinkTarget(returnFinalTarget: true) ?? new FileInfo(f)).Length) /* HF cache: links into blobs/ */);
    }

    private static void WriteText(CliHost host, ModelConfig c, string source, (int Files, long Bytes) weights, bool tokenizer,
        bool gpu, string noGpuReason, string planDevice, MemoryPlan? plan, string? planError)
    {
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
        Row(o, "tied embeddings", c.TieWordEmbeddings ? "yes" : "no");
        Row(o, "parameters", Invariant($"{c.ParameterCount:N0} ({c.ParameterCount / 1e9:F2} B)"));
        Row(o, "quantization", c.Quantization?.Description ?? "none");
        // TODO(quantized memory plan): WeightBytes counts every parameter at TorchDtype, i.e. before quantization; the
        // engine's memory table (MemoryPlan) is to give the quantized bytes per kind.
        Row(o, "weights", $"{Gb(c.WeightBytes)} ({Gib(c.WeightBytes)}) at {c.TorchDtype}{(c.Quantization is null ? "" : ", unquantized")}");
        if (!source.StartsWith("preset", StringComparison.Ordinal))
        {
            Row(o, "checkpoint files", weights.Files == 0 ? "no *.safetensors (config only)" : Invariant($"{weights.Files} safetensors, {Gb(weights.Bytes)}"));
            Row(o, "tokenizer", tokenizer ? "tokenizer.json" : "none in the model directory");
        }
        o.WriteLine();
        o.WriteLine(host.Bold("Memory plan"));
        if (!gpu) o.WriteLine(host.Dim($"  no usable GPU here: {noGpuReason}"));
        Row(o, "device", planDevice);
        Row(o, "KV cache per token", Invariant($"{c.KvBytesPerToken / 1024.0:F0} KiB (bf16 K and V, {c.NumHiddenLayers} layers)"));
        if (plan is not null)
        {
            Row(o, "weights on device", $"{Gib(plan.WeightBytes)} (bf16)");
            Row(o, "workspace", Gib(plan.WorkspaceBytes));
            Row(o, "reserve", Gib(plan.ReserveBytes));
            Row(o, "max context", Invariant($"{plan.MaxContext:N0} tokens ({Gib(plan.KvCacheBytes)} KV cache; model maximum {MemoryPlan.ModelMaxPositions(c):N0})"));
        }
        else
        {
            Row(o, "max context", $"does not fit: {planError}");
        }
    }

    private static void WriteJson(CliHost host, ModelConfig c, string source, (int Files, long Bytes) weights, bool tokenizer,
        bool gpu, string noGpuReason, string planDevice, MemoryPlan? plan, string? planError)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("source", source);
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
            w.WriteNumber("num_hidden_layers", c.NumHiddenLayers);
            w.WriteNumber("hidden_size", c.HiddenSize);
            w.WriteNumber("num_attention_heads", c.NumAttentionHeads);
            w.WriteNumber("num_key_value_heads", c.NumKeyValueHeads);
            w.WriteNumber("head_dim", c.HeadDim);
            w.WriteNumber("intermediate_size", c.IntermediateSize);
            w.WriteNumber("vocab_size", c.VocabSize);
            w.WriteNumber("max_position_embeddings", c.MaxPositionEmbeddings);
            w.WriteNumber("parameters", c.ParameterCount);
            w.WriteNumber("weight_bytes", c.WeightBytes);
            w.WriteNumber("checkpoint_files", weights.Files);
            w.WriteNumber("checkpoint_bytes", weights.Bytes);
            w.WriteBoolean("tokenizer", tokenizer);
            w.WriteNumber("kv_bytes_per_token", c.KvBytesPerToken);
            w.WriteBoolean("gpu", gpu);
            if (!gpu) w.WriteString("no_gpu_reason", noGpuReason);
            w.WriteString("plan_device", planDevice);
            if (plan is null)
            {
                w.WriteString("plan_error", planError);
            }
            else
            {
                w.WriteStartObject("plan");
                w.WriteNumber("free_bytes", plan.FreeBytes);
                w.WriteNumber("weight_bytes", plan.WeightBytes);
                w.WriteNumber("workspace_bytes", plan.WorkspaceBytes);
                w.WriteNumber("reserve_bytes", plan.ReserveBytes);
                w.WriteNumber("kv_bytes_per_token", plan.KvBytesPerToken);
                w.WriteNumber("max_context", plan.MaxContext);
                w.WriteNumber("kv_cache_bytes", plan.KvCacheBytes);
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        host.Out.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    private static void Row(TextWriter o, string name, string value) => o.WriteLine($"  {name,-20} {value}");

    internal static string Gib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F1} GiB");
    internal static string Gb(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1e9:F1} GB");
}

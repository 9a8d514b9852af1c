using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Benchmarking;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq bench</c>: end-to-end batch-1 timings of the engine (prefill, decode, time to first token), each against
/// its floor, written as JSON and Markdown; <c>--compare</c> runs transformers on the same shapes in the same run.
/// </summary>
internal static class BenchCommand
{
    public static Command Create(CliHost host)
    {
        var synthetic = new Option<string>("--synthetic") { Description = "Preset to benchmark with random weights", DefaultValueFactory = _ => "qwq-32b" };
        var model = new Option<string?>("--model", "-m") { Description = "Benchmark a checkpoint directory (or a Hugging Face id in the local HF cache) instead of synthetic weights", HelpName = "DIR|HF_ID" };
        var prefill = new Option<string>("--prefill") { Description = "Prompt lengths to prefill, comma-separated (lengths past what a sequence holds here are named and skipped)", DefaultValueFactory = _ => "512,2048,16384,32768" };
        var decode = new Option<string>("--decode") { Description = "Contexts to decode at, comma-separated (contexts past what a sequence holds here, steps included, are named and skipped; 131008: the 64 steps end at position 131072)", DefaultValueFactory = _ => "1024,16384,32768,65536,131008" };
        var batch = new Option<string?>("--batch") { Description = "Also decode this many sequences at once at each --decode context, comma-separated (e.g. 1,8,32,64): aggregate tok/s against the floor" };
        var mixed = new Option<string?>("--decode-mixed") { Description = "Also decode batches whose rows have different contexts, comma-separated, each as contexts joined by '+' with NxC for N rows at C (e.g. 32768+7x1024: one long trace among seven short ones)", HelpName = "MIX" };
        var gemvRows = TypedOptions.Integer<int>("--gemv-max-rows", "4", "Products over at most this many rows use the GEMV kernels, more use cuBLAS (default 4; 0: always cuBLAS)");
        var decodeBlocks = TypedOptions.Integer<int>("--decode-blocks-per-sm", "2", "Decode attention split blocks counted per multiprocessor when the splits are planned, 1 to 4 (default: as many as fit, 2 for the bf16 cache, 3 for fp8 on Hopper; a diagnostic: fewer make fewer, longer splits)");
        var chunk = TypedOptions.Integer<int>("--prefill-chunk", "8192", $"The most rows one forward step takes, at least {MemoryPlan.MinPrefillChunk}: longer prompts prefill in chunks of this many (default {new EngineOptions().PrefillChunk}, or the largest --batch; the memory plan may halve it on a small card)");
        var mmaRows = TypedOptions.Integer<int>("--tensor-core-gemv-max-rows", "8", "bf16 products over more rows than --gemv-max-rows and at most this many use the tensor-core GEMV (default: per product, whichever measured faster at load; 0: never)");
        // How the engine stores the model and sums across GPUs: the same options as generate, chat and serve. Bench keeps
        // its own --model/--synthetic, and its own --tensor-parallel (it has no --device: always from device 0).
        var engineOptions = new ModelSourceOptions();
        var (quantize, kvCache, allReduce, switchMethod) = (engineOptions.Quantize, engineOptions.KvCache, engineOptions.AllReduce, engineOptions.RopeSwitchMethod);
        var tensorParallel = TypedOptions.Integer("--tensor-parallel", 1, "GPUs to split the model over (tensor parallelism), devices 0 to N - 1; reports the all-reduce, ours against NCCL's");
        tensorParallel.HelpName = "N";
        var steps = TypedOptions.Integer("--steps", 64, "Decode steps timed at each context");
        var outDir = new Option<string?>("--out") { Description = "Directory for the JSON and Markdown results (e.g. bench/results)" };
        var commit = new Option<string?>("--commit") { Description = "Commit to record (default: git rev-parse --short HEAD)" };
        var compare = new Option<bool>("--compare") { Description = "Also run transformers (static cache + torch.compile) on the same shapes via python3 and print the ratio" };
        var eager = new Option<bool>("--compare-eager") { Description = "With --compare: transformers without torch.compile (faster to start)" };
        var graphs = new Option<bool>("--no-cuda-graphs") { Description = "Launch the decode step kernel by kernel instead of replaying a CUDA graph" };
        var profileStep = new Option<bool>("--profile-step") { Description = "Also time decode steps kernel by kernel on every GPU (a diagnostic): one at batch 1, and one at the largest --batch" };
        var ropeSwitch = new Option<bool>("--rope-switch-stall") { Description = "Also time an adaptive-YaRN switch at the switch position beside 7 decoding sequences under the batch scheduler, the recompute in chunks and in one step (needs a config with YaRN, e.g. --synthetic qwq-32b-yarn)" };
        var noProgrammatic = new Option<bool>("--no-programmatic-launch") { Description = "Launch kernels the ordinary way, without overlapping each with the one before it (sm_90+; for comparison)" };
        var noHopperAttention = new Option<bool>("--no-hopper-attention") { Description = "Prefill attention on the portable mma.sync kernel instead of the Hopper wgmma one, and no other sm_90a kernel either (the fp8 GEMV's warpgroup builds; compute capability 9.0; for comparison)" };
        var noHopperTma = new Option<bool>("--no-hopper-tma") { Description = "The Hopper prefill attention copying K and V with cp.async instead of TMA (compute capability 9.0; for comparison)" };
        var noPingPong = new Option<bool>("--no-hopper-ping-pong") { Description = "The Hopper prefill attention's plain TMA entry instead of its ping-pong one (a producer warp, the two warpgroups' products in turns; compute capability 9.0; for comparison)" };
        var gemm = TypedOptions.OneOf("--prefill-gemm", PrefillGemm.Cublas, "Library for the prefill products: Cublas, CublasLt, or CublasLtTuned (cuBLASLt with the algorithm that times fastest at the prefill chunk, chosen at load)");
        var fp8Prefill = TypedOptions.OneOf("--fp8-prefill", Fp8PrefillGemm.Auto,
            "fp8 weights' prefill products: Auto (Fp8 on sm_90, else Dequantize), Dequantize (bf16 copy, --prefill-gemm), Fp8 (cuBLASLt e4m3, per-token activation scales) or Fp8FastAccum");
        var fp8Copy = TypedOptions.OneOf("--fp8-prefill-copy", Fp8PrefillCopy.Auto,
            "fp8 weights' prefill on the FP8 GEMM: keep a row-major copy of the weights (keep), untile them every pass (untile), or auto (keep when the pool still holds the longest context and half its positions)");
        var command = new Command("bench", "Benchmark prefill, decode and time to first token at batch 1 against the bandwidth and GEMM floors")
        {
            synthetic, model, prefill, decode, batch, mixed, gemvRows, mmaRows, chunk, decodeBlocks, quantize, kvCache, steps, outDir, commit, compare, eager, graphs, noProgrammatic, noHopperAttention, noHopperTma, noPingPong, profileStep, ropeSwitch, switchMethod, gemm, fp8Prefill, fp8Copy, tensorParallel, allReduce,
        };
        command.SetAction(p =>
        {
            // --synthetic has a default, so only one the user typed conflicts with --model (it was silently ignored).
            if (p.GetValue(model) is not null && p.GetResult(synthetic) is { Implicit: false })
                throw new OptionException("give either --model or --synthetic, not both");
            var settings = new BenchSettings
            {
                PrefillLengths = ParseList(p.GetValue(prefill)!, "--prefill"),
                DecodeContexts = ParseList(p.GetValue(decode)!, "--decode"),
                DecodeSteps = p.GetValue(steps) is int s and > 0 and <= ModelConfig.MaxPositions ? s
                    : throw new OptionException($"--steps must be from 1 to {ModelConfig.MaxPositions}"),
                Batches = p.GetValue(batch) is string b ? ParseList(b, "--batch") : [],
                MixedBatches = p.GetValue(mixed) is string m ? ParseMixed(m) : [],
                ProfileStep = p.GetValue(profileStep),
                RopeSwitch = p.GetValue(ropeSwitch),
            };
            Run(host, p.GetValue(model), p.GetValue(synthetic)!, settings, p.GetValue(outDir),
                p.GetValue(commit) ?? GitCommit(), p.GetValue(compare), p.GetValue(eager), !p.GetValue(graphs), p.GetValue(gemm),
                p.GetValue(gemvRows), p.GetValue(mmaRows), p.GetValue(chunk), p.GetValue(decodeBlocks), p.GetValue(quantize), p.GetValue(tensorParallel), p.GetValue(kvCache), p.GetValue(allReduce),
                !p.GetValue(noProgrammatic), !p.GetValue(noHopperAttention), !p.GetValue(noHopperTma), !p.GetValue(noPingPong), p.GetValue(fp8Prefill), p.GetValue(fp8Copy), p.GetValue(switchMethod));
            return ExitCodes.Ok;
        });
        command.Subcommands.Add(CreateCompare(host));
        return command;
    }

    /// <summary>
    /// <c>qwq bench compare --before A.json [B.json …] --after C.json [D.json …]</c>: the figures of saved results matched
    /// by their conditions, as a Markdown table (several files on a side: repeated runs, averaged, their range shown).
    /// </summary>
    private static Command CreateCompare(CliHost host)
    {
        var before = new Option<string[]>("--before")
        {
            Description = "Results before the change: the .json files `qwq bench --out` wrote (several: repeated runs)",
            HelpName = "FILE", Required = true, AllowMultipleArgumentsPerToken = true, Arity = ArgumentArity.OneOrMore,
        };
        var after = new Option<string[]>("--after")
        {
            Description = "Results after the change, the same way",
            HelpName = "FILE", Required = true, AllowMultipleArgumentsPerToken = true, Arity = ArgumentArity.OneOrMore,
        };
        var command = new Command("compare", "Compare saved bench results before and after a change, figure by figure (matched by kind, batch, context or tokens, weights, tensor parallel and KV cache)")
        {
            before, after,
        };
        command.SetAction(p =>
        {
            var b = p.GetValue(before)!.Select(ResultComparison.Read).ToList();
            var a = p.GetValue(after)!.Select(ResultComparison.Read).ToList();
            host.Out.Write(ResultComparison.ToMarkdown(b, a));
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>The tokenizer's size where one is at hand (sampling never picks the embedding's padding rows).</summary>
    private static int? TokenizerVocab(string? dir) =>
        dir is not null && (File.Exists(Path.Combine(dir, "tokenizer.json")) || File.Exists(Path.Combine(dir, "tokenizer.json.gz")))
            ? Text.QwenTokenizer.Load(dir).VocabSize
            : null;

    internal static int[] ParseList(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var values = new int[parts.Length];
        string expected = $"{option} '{text}': expected positive integers up to {ModelConfig.MaxPositions} separated by commas, e.g. 512,2048";
        // At least one: the sequence is sized from the largest (an empty --prefill was an internal error there).
        if (parts.Length == 0) throw new OptionException(expected);
        for (int i = 0; i < parts.Length; i++)
            // Bounded like a model's positions, so the context sized from them (largest + steps + 8) cannot overflow.
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out values[i]) || values[i] < 1 || values[i] > ModelConfig.MaxPositions)
                throw new OptionException(expected);
        return values;
    }

    /// <summary>
    /// <c>--decode-mixed</c>: batches of per-row contexts, e.g. "32768+7x1024,16384+3x2048" → [32768, 1024 × 7] and
    /// [16384, 2048 × 3]. Each batch holds at most <see cref="Workspace.MaxSequences"/> rows (the largest decode step).
    /// </summary>
    internal static List<int[]> ParseMixed(string text)
    {
        const string Example = "e.g. 32768+7x1024 (one row at 32768 and seven at 1024), several separated by commas";
        var batches = new List<int[]>();
        foreach (string item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var rows = new List<int>();
            foreach (string term in item.Split('+', StringSplitOptions.TrimEntries))
            {
                string[] nc = term.Split('x', StringSplitOptions.TrimEntries);
                int count = 1, context = 0;
                bool ok = nc.Length is 1 or 2
                          && (nc.Length == 1 || Positive(nc[0], out count))
                          && Positive(nc[^1], out context) && context <= ModelConfig.MaxPositions
                          && rows.Count + (long)count <= Workspace.MaxSequences;
                if (!ok)
                    throw new OptionException($"--decode-mixed '{item}': '{term}' is not a context (1 to {ModelConfig.MaxPositions}) or NxC with N rows " +
                                              $"(a batch holds at most {Workspace.MaxSequences} rows); {Example}");
                rows.AddRange(Enumerable.Repeat(context, count));
            }
            batches.Add([.. rows]);
        }
        if (batches.Count == 0) throw new OptionException($"--decode-mixed '{text}': no batch given; {Example}");
        return batches;

        static bool Positive(string s, out int value) => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out value) && value >= 1;
    }

    private static void Run(CliHost host, string? modelDir, string preset, BenchSettings settings, string? outDir,
        string commit, bool compare, bool compareEager, bool cudaGraphs, PrefillGemm prefillGemm, int? gemvMaxRows, int? mmaMaxRows,
        int? prefillChunk, int? decodeBlocksPerSm, QuantizeMode quantize, int tensorParallel, KvCacheKind kvCache, AllReduceKind allReduce, bool programmaticLaunch, bool hopperAttention, bool hopperTma, bool hopperPingPong, Fp8PrefillGemm fp8Prefill, Fp8PrefillCopy fp8Copy,
        RopeSwitchMethod switchMethod)
    {
        if (modelDir is not null)
        {
            // As generate, serve and info find it: a Hugging Face id in the local cache, the same message for a missing directory.
            modelDir = ModelLocator.Resolve(modelDir, host.Environment);
            if (!File.Exists(Path.Combine(modelDir, "config.json")))
                throw new ConfigException($"{Path.Combine(modelDir, "config.json")} does not exist: the model directory needs the checkpoint's config.json");
        }
        // Made now, not when the results are written after the whole run (where a failure was an internal error).
        if (outDir is not null)
        {
            try { Directory.CreateDirectory(outDir); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new OptionException($"--out {outDir} cannot be made a directory ({e.Message}); give a directory the results can be written to");
            }
        }
        ModelConfig config = modelDir is null ? ModelPresets.Get(preset) : ModelConfig.Load(Path.Combine(modelDir, "config.json"));
        int need = Math.Max(settings.PrefillLengths.Max(), settings.DecodeContexts.Max() + settings.DecodeSteps) + 8;
        foreach (int[] rows in settings.MixedBatches) need = Math.Max(need, rows.Max() + settings.DecodeSteps + 8);
        // --rope-switch-stall grows a sequence past the adaptive switch (original_max_position_embeddings by default)
        if (settings.RopeSwitch && config.RopeScaling is { } yarn) need = Math.Max(need, yarn.OriginalMaxPositionEmbeddings + 16);
        // Past the model's positions (or the memory) the lengths that do not fit are named and skipped (ModelBenchmark.
        // Unmeasurable), so the sequence limit is then whatever the plan gives, not an error before anything is measured.
        int modelMax = MemoryPlan.ModelMaxPositions(config);
        var engine = new EngineOptions
        {
            MaxContext = need <= modelMax ? need : null,
            // The batches decode in one step each, so the chunk holds the largest of them.
            PrefillChunk = Math.Max(prefillChunk is int c ? c >= MemoryPlan.MinPrefillChunk ? c
                    : throw new OptionException($"--prefill-chunk must be at least {MemoryPlan.MinPrefillChunk}, got {c}") : new EngineOptions().PrefillChunk,
                settings.Batches.Concat(settings.MixedBatches.Select(m => m.Length)).DefaultIfEmpty(0).Max()),
            GemvMaxRows = gemvMaxRows is int g and >= 0 ? g : gemvMaxRows is null ? new EngineOptions().GemvMaxRows
                : throw new OptionException("--gemv-max-rows must be 0 or more"),
            TensorCoreGemvMaxRows = mmaMaxRows is int t and >= 0 ? t : mmaMaxRows is null ? new EngineOptions().TensorCoreGemvMaxRows
                : throw new OptionException("--tensor-core-gemv-max-rows must be 0 or more"), UseCudaGraphs = cudaGraphs, PrefillGemm = prefillGemm,
            SampleableVocab = TokenizerVocab(modelDir ?? Presets.PresetFiles.Extract(preset)),
            Quantize = quantize,
            KvCache = kvCache,
            TensorParallel = tensorParallel,
            AllReduce = allReduce,
            ProgrammaticLaunch = programmaticLaunch,
            HopperAttention = hopperAttention,
            HopperTma = hopperTma,
            HopperPingPong = hopperPingPong,
            Fp8Prefill = fp8Prefill,
            Fp8PrefillCopy = fp8Copy,
            RopeSwitch = switchMethod,
            DecodeBlocksPerSm = decodeBlocksPerSm,
        };
        if (decodeBlocksPerSm is int perSm) AttentionOps.CheckDecodeBlocksPerSm(perSm);
        TensorParallelSupport.EnsureSupported(config, engine, BackendKind.Cuda); // bench loads CudaBackend itself, not through BackendFactory
        host.Error.WriteLine($"loading {(modelDir ?? $"synthetic {preset}")} for sequences of up to {Math.Min(need, modelMax)} positions{(need > modelMax ? " (the model's maximum)" : "")}…");
        BenchReport report;
        var sw = Stopwatch.StartNew();
        using (var backend = CudaBackend.Load(config, modelDir, engine))
        {
            host.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"loaded in {sw.Elapsed.TotalSeconds:F1} s on {backend.DeviceDescription}"));
            foreach (string line in backend.DescribeKernelChoices()) host.Error.WriteLine($"  tuned: {line}");
            report = ModelBenchmark.Run(backend, settings, commit, line => host.Error.WriteLine(line));
        }

        // our figures are written first: a failing comparison must not lose them
        Write(host, report, null, outDir, commit, "");
        if (compare)
        {
            try
            {
                var comparison = RunTransformers(host, modelDir is null ? ModelPresets.QwQ32BConfigJson : File.ReadAllText(Path.Combine(modelDir, "config.json")),
                    settings with { DecodeContexts = settings.DecodeContexts.Take(1).ToArray() } /* each context recompiles: ~1.5 min */, compareEager);
                Write(host, report, comparison, outDir, commit, "-vs-transformers");
            }
            catch (QwqException e)
            {
                host.Error.WriteLine($"warning: the transformers comparison failed, our results stand: {e.Message}");
            }
        }
    }

    private static void Write(CliHost host, BenchReport report, ComparisonResult? comparison, string? outDir, string commit, string suffix)
    {
        string markdown = BenchOutput.ToMarkdown(report, comparison);
        host.Out.WriteLine(markdown);
        if (outDir is null) return;
        Directory.CreateDirectory(outDir);
        string gpu = new string(report.Gpu.Select(ch => char.IsLetterOrDigit(ch) ? ch : '-').ToArray()).Trim('-');
        // The weight kind is part of the name, so a bf16 and an fp8 run of one commit on one machine both stay.
        string weights = report.Figures.FirstOrDefault()?.Weights is { } w and not "bf16" ? $"-{w}" : "";
        // So is a quantized run's prefill detour, so an A/B of --fp8-prefill keeps both files.
        if (weights != "" && report.PrefillGemm is { } gemm)
            weights += gemm.StartsWith("dequantized", StringComparison.Ordinal) ? "-dequant-prefill" : gemm.Contains("fast", StringComparison.Ordinal) ? "-fastaccum" : "";
        string stem = Path.Combine(outDir, $"{report.Date}-{gpu}-{commit}{weights}{suffix}");
        File.WriteAllText(stem + ".json", BenchOutput.ToJson(report, comparison));
        File.WriteAllText(stem + ".md", markdown);
        host.Error.WriteLine($"wrote {stem}.json and {stem}.md");
    }

    private static ComparisonResult RunTransformers(CliHost host, string configJson, BenchSettings s, bool eager)
    {
        string script = FindScript();
        string dir = Directory.CreateTempSubdirectory("qwq-bench-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
            string result = Path.Combine(dir, "transformers.json");
            var psi = new ProcessStartInfo("python3")
            {
                ArgumentList = { script, "--config", dir, "--prefill", string.Join(',', s.PrefillLengths.Where(n => n <= 4096)),
                    "--decode", string.Join(',', s.DecodeContexts), "--steps", "32", "--out", result },
                RedirectStandardOutput = false,
                UseShellExecute = false,
            };
            if (eager) psi.ArgumentList.Add("--eager");
            host.Error.WriteLine($"running transformers: python3 {string.Join(' ', psi.ArgumentList)}");
            using var process = Process.Start(psi) ?? throw new QwqException("could not start python3 for --compare");
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new QwqException($"--compare: {script} exited with code {process.ExitCode}; python3 needs torch and transformers");
            using var doc = JsonDocument.Parse(File.ReadAllText(result));
            Dictionary<int, double> Read(string name) => doc.RootElement.GetProperty(name).EnumerateObject()
                .ToDictionary(e => int.Parse(e.Name, CultureInfo.InvariantCulture), e => e.Value.GetDouble());
            return new ComparisonResult(Read("prefill_ms"), Read("decode_ms"), doc.RootElement.GetProperty("mode").GetString()!);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string FindScript()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "bench", "compare_transformers.py");
            if (File.Exists(candidate)) return candidate;
        }
        string cwd = Path.Combine(Environment.CurrentDirectory, "bench", "compare_transformers.py");
        return File.Exists(cwd) ? cwd : throw new QwqException("--compare needs bench/compare_transformers.py: run qwq bench from the repository");
    }

    private static string GitCommit()
    {
        try
        {
            using var git = Process.Start(new ProcessStartInfo("git", "rev-parse --short HEAD") { RedirectStandardOutput = true, RedirectStandardError = true });
            string sha = git!.StandardOutput.ReadToEnd().Trim();
            git.WaitForExit();
            return git.ExitCode == 0 && sha.Length > 0 ? sha : "unknown";
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "unknown";
        }
    }
}

using System.Text;
using System.Text.Json;

namespace QwQ.Cuda.Benchmarking;

/// <summary>Writes a <see cref="BenchReport"/> as JSON and as a Markdown table, each figure beside its floor.</summary>
public static class BenchOutput
{
    /// <summary>How bench results are written, and read back (<see cref="ResultComparison"/>): snake_case names.</summary>
    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static string ToJson(BenchReport r, ComparisonResult? compare = null) =>
        JsonSerializer.Serialize(new { report = r, transformers = compare }, Json);

    public static string ToMarkdown(BenchReport r, ComparisonResult? compare = null)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# qwq bench — {r.Date}, {r.Gpu}, commit {r.Commit}");
        sb.AppendLine();
        sb.AppendLine($"Model: {r.Model}, weights {r.WeightBytes / 1e9:F1} GB ({r.Figures.FirstOrDefault()?.Weights ?? "bf16"} layers), KV cache up to {r.MaxContext} positions.  ");
        sb.AppendLine($"Measured ceilings: copy {r.Ceilings.CopyBytesPerSecond / 1e12:F2} TB/s (read + write), bf16 GEMM {r.Ceilings.GemmFlopsPerSecond / 1e12:F0} TFLOP/s.  ");
        sb.AppendLine(r.Figures.FirstOrDefault()?.ProgrammaticLaunch == true
            ? "Kernels launched with programmatic dependent launch (each overlaps the end of the one before it)."
            : "Kernels launched the ordinary way (no programmatic dependent launch).");
        if (r.Kernels is not null) sb.AppendLine($"Kernels: {r.Kernels}.  ");
        if (compare is not null)
            sb.AppendLine($"Compared with transformers ({compare.Mode}) on the same shapes, same GPU, same run.");
        sb.AppendLine();
        sb.AppendLine("| decode context | ms/token | tok/s | GB/s | floor ms | % of floor |" + (compare is null ? "" : " transformers ms | speed-up |"));
        sb.AppendLine("|---:|---:|---:|---:|---:|---:|" + (compare is null ? "" : "---:|---:|"));
        foreach (var d in r.Decode)
        {
            sb.Append($"| {d.Context} | {d.MsPerToken:F2} | {d.TokensPerSecond:F1} | {d.GBPerSecond:F0} | {d.FloorMs:F2} | {d.PercentOfFloor:F0}% |");
            if (compare?.DecodeMs.TryGetValue(d.Context, out double t) == true) sb.Append($" {t:F2} | {t / d.MsPerToken:F2}× |");
            else if (compare is not null) sb.Append(" – | – |");
            sb.AppendLine();
        }
        if (r.SampledDecode is { } sd)
            sb.AppendLine($"\nWith sampling ({sd.Sampling}) at {sd.Context}: {sd.MsPerToken:F2} ms/token, {sd.TokensPerSecond:F1} tok/s.");
        sb.AppendLine();
        sb.AppendLine("| prefill tokens | ms | tok/s | floor ms | % of floor |" + (compare is null ? "" : " transformers ms | speed-up |"));
        sb.AppendLine("|---:|---:|---:|---:|---:|" + (compare is null ? "" : "---:|---:|"));
        foreach (var p in r.Prefill)
        {
            sb.Append($"| {p.Tokens} | {p.Ms:F1} | {p.TokensPerSecond:F0} | {p.FloorMs:F1} | {p.PercentOfFloor:F0}% |");
            if (compare?.PrefillMs.TryGetValue(p.Tokens, out double t) == true) sb.Append($" {t:F1} | {t / p.Ms:F2}× |");
            else if (compare is not null) sb.Append(" – | – |");
            sb.AppendLine();
        }
        if (r.PrefillGemm is { } gemm) sb.AppendLine($"\nPrefill products (over 128 rows): {gemm}."
            + (r.Figures.FirstOrDefault(f => f.PrefillChunk is not null)?.PrefillChunk is int chunk ? $" At most {chunk} rows a step." : ""));
        sb.AppendLine();
        sb.AppendLine($"Time to first token, {r.Ttft.PromptTokens}-token prompt: {r.Ttft.Ms:F1} ms" +
            (r.Ttft.FloorMs is double tf ? $" (floor {tf:F1} ms: the weights read once, {100 * tf / r.Ttft.Ms:F0}%)." : "."));
        if (r.AllReduce is { Count: > 0 } ar)
        {
            sb.AppendLine();
            sb.AppendLine($"Tensor parallel over {r.TensorParallel} GPUs (weights and floors per GPU). One all-reduce of hidden-wide fp32 rows, in a CUDA graph:");
            sb.AppendLine();
            sb.AppendLine("| rows | one-shot µs | NCCL µs | 2 per layer, ms/token |");
            sb.AppendLine("|---:|---:|---:|---:|");
            foreach (var a in ar)
                sb.AppendLine($"| {a.Rows} | {(a.OneShotUs is double o ? o.ToString("F1", System.Globalization.CultureInfo.InvariantCulture) : "off")} | {a.NcclUs:F1} | {a.MsPerToken:F2} |");
        }
        if (r.RopeSwitch is { Count: > 0 } rs)
        {
            sb.AppendLine();
            sb.AppendLine($"Adaptive YaRN: a sequence at the switch ({rs[0].Context} positions) takes one more token while {rs[0].Decoding} others " +
                "decode under the batch scheduler; its cache turns to YaRN (recomputed in chunks of the prefill budget or in one step, or its keys re-rotated):");
            sb.AppendLine();
            sb.AppendLine("| method | recompute chunk | switch ms | others' longest wait ms | their median wait ms | median before ms | median after ms |");
            sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
            foreach (var x in rs)
                sb.AppendLine($"| {x.Method} | {(x.Method == "recompute" ? x.ChunkTokens.ToString(System.Globalization.CultureInfo.InvariantCulture) : "–")} | {x.SwitchMs:F1} | {x.LongestWaitMs:F1} | {x.MedianWaitMs:F1} | {x.DecodeWaitMs:F1} | {x.AfterWaitMs:F1} |");
            sb.AppendLine();
            sb.AppendLine($"The sequence alone: the step that crosses {rs[0].AloneSwitchStepMs:F2} ms, the next {rs[0].AloneStepMs:F2} ms " +
                $"(the switch itself: {rs[0].AloneSwitchStepMs - rs[0].AloneStepMs:F2} ms, {rs[0].Method}).");
        }
        foreach (var prof in new[] { r.PrefillProfile, r.Profile, r.BatchProfile })
        {
            if (prof is null) continue;
            sb.AppendLine();
            if (prof.PrefillTokens > 0)
            {
                sb.AppendLine($"One prefill of {prof.PrefillTokens} tokens kernel by kernel, cuBLAS products included (grid = m, n, k), " +
                    $"an event pair around each launch (times are right; the events serialise the passes). Measured prefill: {prof.GraphMsPerStep:F1} ms. By kernel:");
                sb.AppendLine();
                sb.AppendLine("| kernel | launches | total ms | mean µs |");
                sb.AppendLine("|---|---:|---:|---:|");
                foreach (var k in prof.ByKernel())
                    sb.AppendLine($"| {k.Kernel} | {k.Launches} | {k.TotalUs / 1e3:F2} | {k.MeanUs:F1} |");
            }
            else
                sb.AppendLine($"One decode step at {prof.Context} (batch {prof.Batch}) kernel by kernel, an event pair around each launch " +
                    $"(kernel times are right; the events serialise the step). Graph replay: {prof.GraphMsPerStep:F2} ms.");
            foreach (var g in prof.Gpus)
            {
                sb.AppendLine();
                sb.AppendLine($"GPU {g.Gpu}: {g.SpanUs / 1e3:F2} ms from the first kernel's start to the last one's end, " +
                    $"{g.KernelUs / 1e3:F2} ms inside the timed kernels.");
                sb.AppendLine();
                sb.AppendLine("| kernel (grid) | launches | total µs | mean µs |");
                sb.AppendLine("|---|---:|---:|---:|");
                foreach (var k in g.Kernels)
                    sb.AppendLine($"| {k.Kernel} | {k.Launches} | {k.TotalUs:F0} | {k.MeanUs:F1} |");
            }
        }
        if (r.Figures.Any(f => f.Batch > 1))
        {
            sb.AppendLine();
            sb.AppendLine("| batch | context | ms/step | tok/s (all rows) | floor ms | % of floor |");
            sb.AppendLine("|---:|---:|---:|---:|---:|---:|");
            foreach (var f in r.Figures.Where(f => f.Kind == "decode" && f.Batch > 1))
                sb.AppendLine($"| {f.Batch} | {f.Context} | {f.MsPerStep:F2} | {f.TokensPerSecond:F1} | {f.FloorMs:F2} | {f.PercentOfFloor:F0}% |");
        }
        return sb.ToString();
    }
}

/// <summary>transformers' timings on the same shapes (bench/compare_transformers.py), keyed by tokens/context.</summary>
public sealed record ComparisonResult(IReadOnlyDictionary<int, double> PrefillMs, IReadOnlyDictionary<int, double> DecodeMs, string Mode);

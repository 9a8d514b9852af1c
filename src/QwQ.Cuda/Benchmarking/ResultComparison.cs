using System.Globalization;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Benchmarking;

/// <summary>
/// What a figure was measured under: the conditions <c>qwq bench</c> writes beside each <c>tokens_per_second</c> (kind,
/// batch, context, contexts (a batch of mixed contexts) or tokens, weights, tensor parallel, KV cache), so that two runs'
/// figures can be matched by script.
/// </summary>
public sealed record FigureConditions(string Kind, int Batch, int? Context, int? Tokens, string Weights, int TensorParallel, string KvCache,
    string? Contexts = null)
{
    public static FigureConditions Of(BenchFigure f) => new(f.Kind, f.Batch, f.Context, f.Tokens, f.Weights, f.TensorParallel, f.KvCache, f.Contexts);

    public override string ToString()
    {
        var sb = new StringBuilder(Kind);
        if (Batch != 1) sb.Append(CultureInfo.InvariantCulture, $" batch {Batch}");
        if (Context is int c) sb.Append(CultureInfo.InvariantCulture, $" at {c}");
        if (Contexts is string mixed) sb.Append(CultureInfo.InvariantCulture, $" at {mixed}");
        if (Tokens is int t) sb.Append(CultureInfo.InvariantCulture, $" of {t} tokens");
        sb.Append(CultureInfo.InvariantCulture, $", {Weights}");
        if (TensorParallel != 1) sb.Append(CultureInfo.InvariantCulture, $", TP{TensorParallel}");
        if (KvCache != "bf16") sb.Append(CultureInfo.InvariantCulture, $", {KvCache} KV");
        return sb.ToString();
    }
}

/// <summary>
/// One figure on both sides of a comparison: the tokens per second of each run that has it (a side may hold several
/// runs of the same build, e.g. the two rounds of an A/B, and one run may hold a figure twice: `--batch 1,8` measures
/// batch 1 again through the batched path), empty where a side lacks it.
/// </summary>
public sealed record FigureChange(FigureConditions Conditions, IReadOnlyList<double> Before, IReadOnlyList<double> After)
{
    /// <summary>Mean after over mean before, minus one; null where a side lacks the figure.</summary>
    public double? Change => Before.Count > 0 && After.Count > 0 ? After.Average() / Before.Average() - 1 : null;
}

/// <summary>
/// One saved result: where it came from (the GPU and commit it records) and its figures; <see cref="Kernels"/> which
/// kernels ran (<c>PtxLibrary.KernelsIdentity</c>), null in files written before bench recorded it.
/// </summary>
public sealed record ResultFile(string Path, string Gpu, string Commit, IReadOnlyList<BenchFigure> Figures, string? Kernels = null);

/// <summary>
/// <c>qwq bench compare</c>: the figures of <c>qwq bench --out</c> results (their JSON) matched by their conditions
/// across two sets of runs, before and after a change, as a Markdown table.
/// </summary>
public static class ResultComparison
{
    /// <summary>
    /// One result file: its GPU, commit and figures; a missing, malformed or figure-less file is a
    /// <see cref="QwqException"/> naming it.
    /// </summary>
    public static ResultFile Read(string path)
    {
        if (!File.Exists(path))
            throw new QwqException($"{path}: no such file (give the .json that `qwq bench --out DIR` wrote)");
        if (path.EndsWith(".md", StringComparison.OrdinalIgnoreCase))
            throw new QwqException($"{path}: a Markdown table; give the .json beside it");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new QwqException($"{path}: not valid JSON ({e.Message})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("report", out var report) || report.ValueKind != JsonValueKind.Object
                || !report.TryGetProperty("figures", out var figures) || figures.ValueKind != JsonValueKind.Array)
                throw new QwqException($"{path}: no report.figures in it: not a `qwq bench --out` result, or one written before " +
                                       "bench recorded each figure with its conditions");
            try
            {
                var list = figures.Deserialize<List<BenchFigure>>(BenchOutput.Json) ?? [];
                foreach (var f in list)
                    if (f.Kind is null || f.Weights is null || f.KvCache is null)
                        throw new QwqException($"{path}: a figure without kind, weights or kv_cache: not a `qwq bench --out` result");
                static string Text(JsonElement report, string name) =>
                    report.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : "?";
                string? kernels = report.TryGetProperty("kernels", out var k) && k.ValueKind == JsonValueKind.String ? k.GetString() : null;
                return new ResultFile(path, Text(report, "gpu"), Text(report, "commit"), list, kernels);
            }
            catch (JsonException e)
            {
                throw new QwqException($"{path}: a figure does not read as one `qwq bench` writes ({e.Message})");
            }
        }
    }

    /// <summary>
    /// Every figure of either side by its conditions, in the order they first appear (before's runs first): the tokens
    /// per second of each run holding it.
    /// </summary>
    public static IReadOnlyList<FigureChange> Compare(IReadOnlyList<IReadOnlyList<BenchFigure>> before, IReadOnlyList<IReadOnlyList<BenchFigure>> after)
    {
        var order = new List<FigureConditions>();
        var b = new Dictionary<FigureConditions, List<double>>();
        var a = new Dictionary<FigureConditions, List<double>>();
        void Add(IReadOnlyList<IReadOnlyList<BenchFigure>> runs, Dictionary<FigureConditions, List<double>> side)
        {
            foreach (var run in runs)
                foreach (var f in run)
                {
                    var key = FigureConditions.Of(f);
                    if (!b.ContainsKey(key) && !a.ContainsKey(key)) order.Add(key);
                    if (!side.TryGetValue(key, out var values)) side[key] = values = [];
                    values.Add(f.TokensPerSecond);
                }
        }
        Add(before, b);
        Add(after, a);
        return order.Select(k => new FigureChange(k, b.GetValueOrDefault(k) ?? [], a.GetValueOrDefault(k) ?? [])).ToList();
    }

    /// <summary>
    /// The comparison of two sets of files as a Markdown table: mean tokens per second on each side (with the range
    /// over several runs) and the change; the files listed with their GPU, commit and kernels, a warning where the GPUs
    /// differ, and a note where every file records its kernels and both sides ran the same ones.
    /// </summary>
    public static string ToMarkdown(IReadOnlyList<ResultFile> before, IReadOnlyList<ResultFile> after)
    {
        string md = ToMarkdown(Compare(before.Select(f => f.Figures).ToList(), after.Select(f => f.Figures).ToList()),
            before.Select(Describe).ToList(), after.Select(Describe).ToList(),
            before.Concat(after).Select(f => f.Gpu).Distinct().ToList());
        return SameKernels(before, after) is string k
            ? md + $"\nNote: both sides ran the same kernels ({k}): a change to the kernels alone cannot show in this comparison.\n"
            : md;
    }

    /// <summary>The kernels both sides ran, when every file records them and they are one and the same; else null.</summary>
    internal static string? SameKernels(IReadOnlyList<ResultFile> before, IReadOnlyList<ResultFile> after)
    {
        var files = before.Concat(after).ToList();
        if (before.Count == 0 || after.Count == 0 || files.Any(f => f.Kernels is null)) return null;
        // the hash alone: the same PTX from a directory and embedded is the same kernels
        static string Hash(string kernels) => kernels.LastIndexOf(", ptx ", StringComparison.Ordinal) is var i and >= 0 ? kernels[(i + 2)..] : kernels;
        var hashes = files.Select(f => Hash(f.Kernels!)).Distinct().ToList();
        return hashes.Count == 1 ? hashes[0] : null;
    }

    private static string Describe(ResultFile f) =>
        $"{System.IO.Path.GetFileName(f.Path)} ({f.Gpu}, {f.Commit}{(f.Kernels is null ? "" : ", " + f.Kernels)})";

    /// <summary>
    /// The comparison as a Markdown table under the two sides' labels: mean tokens per second on each side (with the
    /// range over several runs) and the change; with more than one GPU named, a warning.
    /// </summary>
    public static string ToMarkdown(IReadOnlyList<FigureChange> changes, IReadOnlyList<string> before, IReadOnlyList<string> after,
        IReadOnlyList<string>? gpus = null)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(inv, $"Before: {string.Join(", ", before)}  ");
        sb.AppendLine(inv, $"After: {string.Join(", ", after)}");
        if (gpus is { Count: > 1 })
            sb.AppendLine(inv, $"\nWarning: the files come from different GPUs ({string.Join(", ", gpus)}); memory-bound figures do not compare across them.");
        sb.AppendLine();
        sb.AppendLine("| figure | before tok/s | after tok/s | change |");
        sb.AppendLine("|---|---:|---:|---:|");
        static string Side(IReadOnlyList<double> v) =>
            v.Count == 0 ? "–"
            : v.Count == 1 ? v[0].ToString("F1", CultureInfo.InvariantCulture)
            : string.Create(CultureInfo.InvariantCulture, $"{v.Average():F1} ({v.Min():F1}–{v.Max():F1} over {v.Count})");
        foreach (var c in changes)
            sb.AppendLine(inv, $"| {c.Conditions} | {Side(c.Before)} | {Side(c.After)} | {(c.Change is double d ? d.ToString("+0.0%;-0.0%;0.0%", inv) : "–")} |");
        if (!changes.Any(c => c.Change is not null))
        {
            sb.AppendLine();
            sb.AppendLine("No figure appears on both sides (their conditions differ: kind, batch, context or tokens, weights, tensor parallel, KV cache).");
        }
        return sb.ToString();
    }
}

using QwQ.Cuda.Benchmarking;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Tests.Cli;

namespace QwQ.Cuda.Tests.Benchmarking;

/// <summary>
/// <c>qwq bench compare</c>: saved results' figures matched by their conditions (kind, batch, context or tokens,
/// weights, tensor parallel, KV cache) across runs before and after a change.
/// </summary>
public class ResultComparisonTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp() => Directory.CreateDirectory(_dir = Path.Combine(Path.GetTempPath(), "qwq-compare-" + Guid.NewGuid().ToString("N")));

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static BenchFigure Decode(int batch, double tokPerS, string weights = "int4-awq", string kv = "bf16", int tp = 1) =>
        new("decode", batch, 1024, null, weights, tp, kv, tokPerS, batch * 1e3 / tokPerS, 4.4, 50);

    private string Save(string name, params BenchFigure[] figures) => SaveFrom("NVIDIA H200", name, figures);

    private string SaveFrom(string gpu, string name, params BenchFigure[] figures) => SaveWith(gpu, null, name, figures);

    private string SaveWith(string gpu, string? kernels, string name, params BenchFigure[] figures)
    {
        var report = new BenchReport("2026-11-28", gpu, "abc1234", "64L h5120 40/8 heads", 19_700_000_000, 1096,
            new DeviceCeilings(4.1e12, 7.8e14), [], [], null, new TtftResult(64, 37), figures, Kernels: kernels);
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, BenchOutput.ToJson(report));
        return path;
    }

    [Test]
    public void ReadsBackTheFiguresBenchWrites()
    {
        var figures = new[] { Decode(1, 107.5), Decode(8, 768.5) with { ProgrammaticLaunch = true },
            new BenchFigure("prefill", 1, null, 2048, "bf16", 1, "bf16", 9275, 220.8, 169.3, 77, PrefillGemm: "bf16 cuBLAS", PrefillAttention: "wgmma sm_90a") };
        Assert.That(ResultComparison.Read(Save("a.json", figures)).Figures, Is.EqualTo(figures));
    }

    [Test]
    public void MatchesFiguresByTheirConditionsAndAveragesRepeatedRuns()
    {
        string[] before = [Save("b1.json", Decode(1, 100), Decode(8, 700)), Save("b2.json", Decode(1, 110), Decode(8, 720))];
        string[] after = [Save("a1.json", Decode(1, 115.5), Decode(8, 710), Decode(1, 130, weights: "fp8")), Save("a2.json", Decode(1, 115.5))];
        var changes = ResultComparison.Compare(before.Select(f => ResultComparison.Read(f).Figures).ToList(), after.Select(f => ResultComparison.Read(f).Figures).ToList());

        Assert.That(changes.Select(c => c.Conditions.ToString()),
            Is.EqualTo(new[] { "decode at 1024, int4-awq", "decode batch 8 at 1024, int4-awq", "decode at 1024, fp8" }));
        Assert.That(changes[0].Before, Is.EqualTo(new[] { 100.0, 110.0 }));
        Assert.That(changes[0].After, Is.EqualTo(new[] { 115.5, 115.5 }));
        Assert.That(changes[0].Change, Is.EqualTo(0.1).Within(1e-12), "mean 115.5 over mean 105");
        Assert.That(changes[1].Change, Is.EqualTo(0.0).Within(1e-12), "710 over 710");
        Assert.That(changes[2].Before, Is.Empty, "other weights: another figure");
        Assert.That(changes[2].Change, Is.Null);

        string md = ResultComparison.ToMarkdown(before.Select(ResultComparison.Read).ToList(), after.Select(ResultComparison.Read).ToList());
        Assert.That(md, Does.Contain("| decode at 1024, int4-awq | 105.0 (100.0–110.0 over 2) | 115.5 (115.5–115.5 over 2) | +10.0% |"));
        Assert.That(md, Does.Contain("| decode at 1024, fp8 | – | 130.0 | – |"));
        Assert.That(md, Does.Contain("Before: b1.json (NVIDIA H200, abc1234), b2.json (NVIDIA H200, abc1234)"));
        Assert.That(md, Does.Not.Contain("Warning"), "one GPU");
    }

    [Test]
    public void TheKvCacheAndTensorParallelTellFiguresApart()
    {
        var changes = ResultComparison.Compare([[Decode(1, 100)]], [[Decode(1, 120, kv: "fp8"), Decode(1, 150, tp: 2)]]);
        Assert.That(changes, Has.Count.EqualTo(3));
        Assert.That(changes.All(c => c.Change is null), Is.True);
        Assert.That(changes.Select(c => c.Conditions.ToString()), Does.Contain("decode at 1024, int4-awq, fp8 KV").And.Contain("decode at 1024, int4-awq, TP2"));
        Assert.That(ResultComparison.ToMarkdown(changes, ["b.json"], ["a.json"]), Does.Contain("No figure appears on both sides"));
    }

    [Test]
    public void ResultsFromDifferentGpusCompareWithAWarning()
    {
        var before = ResultComparison.Read(SaveFrom("NVIDIA H100 80GB HBM3", "h100.json", Decode(1, 99.3)));
        var after = ResultComparison.Read(SaveFrom("NVIDIA H200", "h200.json", Decode(1, 114.8)));
        Assert.That(before.Gpu, Is.EqualTo("NVIDIA H100 80GB HBM3"));
        Assert.That(after.Commit, Is.EqualTo("abc1234"));
        string md = ResultComparison.ToMarkdown([before], [after]);
        Assert.That(md, Does.Contain("Warning: the files come from different GPUs (NVIDIA H100 80GB HBM3, NVIDIA H200)"));
        Assert.That(md, Does.Contain("| decode at 1024, int4-awq | 99.3 | 114.8 | +15.6% |"));
    }

    [Test]
    public void TheKernelsEachFileRanAreListedAndTheSameOnBothSidesIsNoted()
    {
        // session 16's broken A/B: the base arm inherited the PTX directory, so both arms ran the new kernels
        const string swapped = "QWQ_PTX_DIR=/tmp/kernels/ptx, ptx 0123456789ab";
        var before = new[] { ResultComparison.Read(SaveWith("NVIDIA H200", swapped, "b.json", Decode(1, 100))) };
        var after = new[] { ResultComparison.Read(SaveWith("NVIDIA H200", swapped, "a.json", Decode(1, 100.2))) };
        Assert.That(before[0].Kernels, Is.EqualTo(swapped), "read back from report.kernels");
        string md = ResultComparison.ToMarkdown(before, after);
        Assert.That(md, Does.Contain("b.json (NVIDIA H200, abc1234, QWQ_PTX_DIR=/tmp/kernels/ptx, ptx 0123456789ab)"));
        Assert.That(md, Does.Contain("Note: both sides ran the same kernels (ptx 0123456789ab)"));

        // the same PTX embedded in one arm and from a directory in the other is still the same kernels
        var embedded = new[] { ResultComparison.Read(SaveWith("NVIDIA H200", "embedded, ptx 0123456789ab", "e.json", Decode(1, 100))) };
        Assert.That(ResultComparison.SameKernels(embedded, after), Is.EqualTo("ptx 0123456789ab"));

        // a real kernel A/B: no note
        var main = new[] { ResultComparison.Read(SaveWith("NVIDIA H200", "embedded, ptx ba9876543210", "m.json", Decode(1, 100))) };
        Assert.That(ResultComparison.ToMarkdown(main, after), Does.Not.Contain("Note:"));
        // a file that does not record its kernels (written before bench did): nothing can be said, no note
        var old = new[] { ResultComparison.Read(SaveFrom("NVIDIA H200", "old.json", Decode(1, 100))) };
        Assert.That(old[0].Kernels, Is.Null);
        Assert.That(ResultComparison.SameKernels(old, after), Is.Null);
        Assert.That(ResultComparison.ToMarkdown(old, after), Does.Contain("old.json (NVIDIA H200, abc1234)").And.Not.Contain("Note:"));
    }

    [Test]
    public void AFileThatIsNotABenchResultIsOneErrorNamingIt()
    {
        string missing = Path.Combine(_dir, "missing.json");
        string md = Path.Combine(_dir, "r.md");
        string broken = Path.Combine(_dir, "broken.json");
        string old = Path.Combine(_dir, "old.json");
        File.WriteAllText(md, "# qwq bench");
        File.WriteAllText(broken, "{\"report\": {\"figures\": [");
        File.WriteAllText(old, "{\"report\": {\"decode\": []}}");
        Assert.That(() => ResultComparison.Read(missing), Throws.InstanceOf<QwqException>().With.Message.Contains(missing).And.Message.Contains("no such file"));
        Assert.That(() => ResultComparison.Read(md), Throws.InstanceOf<QwqException>().With.Message.Contains("give the .json beside it"));
        Assert.That(() => ResultComparison.Read(broken), Throws.InstanceOf<QwqException>().With.Message.Contains(broken).And.Message.Contains("not valid JSON"));
        Assert.That(() => ResultComparison.Read(old), Throws.InstanceOf<QwqException>().With.Message.Contains("no report.figures"));
    }

    [Test]
    public async Task TheCommandPrintsTheTable()
    {
        string b = Save("before.json", Decode(1, 100)), a = Save("after.json", Decode(1, 105));
        var r = await CliTests.Qwq("bench", "compare", "--before", b, "--after", a);
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("| decode at 1024, int4-awq | 100.0 | 105.0 | +5.0% |"));
    }

    [Test]
    public async Task AMissingOptionNamesTheWholeCommandsHelp()
    {
        var r = await CliTests.Qwq("bench", "compare", "--after", Save("after.json", Decode(1, 105)));
        Assert.That(r.ExitCode, Is.Not.Zero);
        Assert.That(r.Err, Does.Contain("--before").And.Contain("Run 'qwq bench compare --help' for usage."));
    }

    [Test]
    public async Task AMissingFileIsOneCleanError()
    {
        string a = Save("after.json", Decode(1, 105));
        var r = await CliTests.Qwq("bench", "compare", "--before", Path.Combine(_dir, "nope.json"), "--after", a);
        Assert.That(r.ExitCode, Is.Not.Zero);
        Assert.That(r.Err, Does.Contain("nope.json: no such file").And.Not.Contain("   at "));
        Assert.That(r.Out, Is.Empty);
    }

    [Test]
    public void ABatchOfMixedContextsIsItsOwnFigure()
    {
        Assert.That(BenchFigure.MixedContexts([32768, 1024, 1024, 1024]), Is.EqualTo("32768+3x1024"));
        Assert.That(BenchFigure.MixedContexts([1024, 32768, 1024]), Is.EqualTo("1024+32768+1024"), "in the order given");
        var mixed = new BenchFigure("decode", 8, null, null, "bf16", 1, "bf16", 395, 20.2, 18.0, 89, Contexts: "32768+7x1024");
        string before = Save("b.json", Decode(8, 700, weights: "bf16"), mixed);
        string after = Save("a.json", Decode(8, 705, weights: "bf16"), mixed with { TokensPerSecond = 400 });
        Assert.That(ResultComparison.Read(before).Figures[1], Is.EqualTo(mixed), "read back with its contexts");
        var changes = ResultComparison.Compare([ResultComparison.Read(before).Figures], [ResultComparison.Read(after).Figures]);
        Assert.That(changes.Select(c => c.Conditions.ToString()),
            Is.EqualTo(new[] { "decode batch 8 at 1024, bf16", "decode batch 8 at 32768+7x1024, bf16" }));
        Assert.That(changes[1].Before, Is.EqualTo(new[] { 395.0 }));
        Assert.That(changes[1].After, Is.EqualTo(new[] { 400.0 }));
    }
}

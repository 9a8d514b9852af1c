using System.CommandLine;
using System.Text.Json;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Evaluation;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Generation;
using static QwQ.Cuda.Tests.Cli.CliTests;

namespace QwQ.Cuda.Tests.Cli;

/// <summary><c>qwq eval</c> on the tiny-chat fixture (CPU), and the llama.cpp-style conventions.</summary>
public class EvalCliTests
{
    private static string TinyChat => TestModels.GoldenModelDir("tiny-chat");
    private static string Examples => Path.Combine(TestModels.FixturesDir, "eval-examples");
    private TestModels.TempDir _tmp = null!;

    [SetUp] public void MakeDir() => _tmp = new TestModels.TempDir();
    [TearDown] public void RemoveDir() => _tmp.Dispose();

    private string TwoProblems()
    {
        string path = _tmp.Combine("two.jsonl");
        File.WriteAllLines(path, File.ReadLines(Path.Combine(Examples, "math.jsonl")).Take(2));
        return path;
    }

    private static string[] Eval(string data, string outPath, string samples = "2", string kind = "math", params string[] more) =>
        ["eval", "--model", TinyChat, "--backend", "cpu", "--data", data, "--kind", kind, "--samples", samples, "--max-tokens", "6",
            "--seed", "40", "--out", outPath, .. more];

    [Test]
    public async Task EvalWritesEverySampleTheSummaryAndATable()
    {
        string results = _tmp.Combine("out", "results.jsonl");
        var r = await Qwq(Eval(TwoProblems(), results));
        Assert.That(r.ExitCode, Is.Zero, r.Err);

        var samples = EvalResultsFile.Read(results);
        Assert.That(samples.Select(s => (s.Id, s.Sample, s.Seed)), Is.EquivalentTo(new[] // samples run together: file order is completion order
            { ("math-01", 0, 40UL), ("math-01", 1, 41UL), ("math-02", 0, 40UL), ("math-02", 1, 41UL) }));
        foreach (var s in samples)
        {
            Assert.That(s.TotalTokens, Is.InRange(1, 6));
            Assert.That(s.ReasoningTokens + s.AnswerTokens, Is.LessThanOrEqualTo(s.TotalTokens));
            Assert.That(s.FinishReason, Is.AnyOf("max_tokens", "end_of_sequence"));
            Assert.That(s.Expected, Is.EqualTo(s.Id == "math-01" ? "4" : "91"));
            Assert.That(s.Text, Is.Not.Null);
        }

        using var summary = JsonDocument.Parse(File.ReadAllText(_tmp.Combine("out", "results.summary.json")));
        var overall = summary.RootElement.GetProperty("overall");
        Assert.That(overall.GetProperty("samples").GetInt32(), Is.EqualTo(4));
        Assert.That(overall.GetProperty("pass_at_1").GetDouble(), Is.InRange(0.0, 1.0));
        Assert.That(overall.TryGetProperty("maj_at_2", out _), Is.True);
        Assert.That(summary.RootElement.GetProperty("sampling").GetProperty("top_k").GetInt32(), Is.EqualTo(40), "QwQ's recommended sampling by default");
        Assert.That(summary.RootElement.GetProperty("sampling").GetProperty("temperature").GetDouble(), Is.EqualTo(0.6).Within(1e-6));
        Assert.That(summary.RootElement.GetProperty("problems").GetArrayLength(), Is.EqualTo(2));
        Assert.That(r.Out, Does.Contain("pass@1").And.Contain("maj@2").And.Contain("overall").And.Contain("math-02"));
    }

    [Test]
    public async Task ARunIsNotOverwrittenAndResumeAddsOnlyWhatIsMissing()
    {
        string data = TwoProblems();
        string results = _tmp.Combine("r.jsonl");
        Assert.That((await Qwq(Eval(data, results, samples: "1"))).ExitCode, Is.Zero);
        Assert.That(EvalResultsFile.Read(results), Has.Count.EqualTo(2));

        var again = await Qwq(Eval(data, results));
        Assert.That(again.ExitCode, Is.EqualTo(1));
        Assert.That(again.Err, Does.Contain("--resume").And.Contain("r.jsonl"));

        var resumed = await Qwq(Eval(data, results, more: "--resume"));
        Assert.That(resumed.ExitCode, Is.Zero, resumed.Err);
        var samples = EvalResultsFile.Read(results);
        Assert.That(samples.Select(s => (s.Id, s.Sample)), Is.EquivalentTo(new[] { ("math-01", 0), ("math-01", 1), ("math-02", 0), ("math-02", 1) }));
    }

    // A second `qwq eval` on the --out that a running one writes exited 0, its lines interleaved with the first's. Now it
    // fails at once naming --out; and a run killed with kill -9 leaves no lock behind: --resume continues it.
    [Test]
    public async Task ASecondRunOnTheSameOutFailsAtOnceAndAKilledRunResumes()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("kills a child process with SIGKILL");
        string data = TwoProblems();
        string results = _tmp.Combine("r.jsonl");
        // 200,000 samples: the tiny model writes its first lines within a second and would run for many minutes.
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet", [Path.Combine(AppContext.BaseDirectory, "qwq.dll"), .. Eval(data, results, samples: "100000"), "--no-progress"])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using (var first = System.Diagnostics.Process.Start(psi)!)
        {
            var firstErr = first.StandardError.ReadToEndAsync();
            _ = first.StandardOutput.ReadToEndAsync();
            try
            {
                var deadline = DateTime.UtcNow.AddSeconds(60);
                while (!(File.Exists(results) && new FileInfo(results).Length > 0) && !first.HasExited && DateTime.UtcNow < deadline)
                    await Task.Delay(50);
                Assert.That(first.HasExited, Is.False, "the first run is still writing");
                Assert.That(new FileInfo(results).Length, Is.GreaterThan(0), "the first run wrote a sample within 60 s");

                var second = await Qwq(Eval(data, results, more: "--resume"));
                Assert.That(second.ExitCode, Is.EqualTo(1), second.Err);
                Assert.That(second.Err.Trim(), Is.EqualTo($"error: Another run is writing --out {results}: wait for it to end (then --resume), or choose another --out."));
                Assert.That(first.HasExited, Is.False, "refused while the first run was still running");
            }
            finally
            {
                first.Kill(); // SIGKILL: no finally blocks, no Dispose in the child
                first.WaitForExit();
            }
            Assert.That(await firstErr, Does.Not.Contain("error"));
        }

        var resumed = await Qwq(Eval(data, results, more: "--resume"));
        Assert.That(resumed.ExitCode, Is.Zero, resumed.Err);
        Assert.That(EvalResultsFile.Read(results).Select(s => (s.Id, s.Sample)), Is.SupersetOf(new[] { ("math-01", 0), ("math-01", 1), ("math-02", 0), ("math-02", 1) }));
    }

    [Test]
    public async Task ChoiceSetsRunToo()
    {
        string results = _tmp.Combine("c.jsonl");
        var r = await Qwq("eval", "--model", TinyChat, "--backend", "cpu", "--data", Path.Combine(Examples, "choice.jsonl"), "--kind", "choice",
            "--samples", "1", "--max-tokens", "2", "--out", results);
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(EvalResultsFile.Read(results), Has.Count.EqualTo(File.ReadLines(Path.Combine(Examples, "choice.jsonl")).Count()));
    }

    [Test]
    public async Task EvalUsageErrorsComeBeforeTheModelLoads()
    {
        var wrongKind = await Qwq(Eval(TwoProblems(), _tmp.Combine("r.jsonl"), kind: "choice"));
        Assert.That(wrongKind.ExitCode, Is.EqualTo(1));
        Assert.That(wrongKind.Err, Does.Contain("line 1").And.Contain("--kind math"));
        var noSamples = await Qwq(Eval(TwoProblems(), _tmp.Combine("r.jsonl"), samples: "0"));
        Assert.That(noSamples.ExitCode, Is.EqualTo(2));
        Assert.That(noSamples.Err, Does.Contain("--samples 0"));
        var badKind = await Qwq(Eval(TwoProblems(), _tmp.Combine("r.jsonl"), kind: "essay"));
        Assert.That(badKind.ExitCode, Is.EqualTo(2));
    }

    // --data DIR said "The problems file 'DIR' does not exist", which it does.
    [Test]
    public async Task DataThatIsADirectoryIsNamedAsOne()
    {
        string dir = _tmp.Combine("problems");
        Directory.CreateDirectory(dir);
        var r = await Qwq(Eval(dir, _tmp.Combine("r.jsonl")));
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Err);
        Assert.That(r.Err.Trim(), Is.EqualTo($"error: --data {dir} is a directory; pass a problems .jsonl file (one JSON object per line, see docs/EVAL.md)."));
        Assert.That(File.Exists(_tmp.Combine("r.jsonl")), Is.False, "nothing written");
    }

    // The results file is opened (and held) before the model loads; a run that then fails leaves none behind.
    [Test]
    public async Task AFailedLoadLeavesNoEmptyResultsFile()
    {
        string results = _tmp.Combine("r.jsonl");
        var r = await Qwq(["eval", "--model", _tmp.Combine("no-model"), "--backend", "cpu", "--data", TwoProblems(), "--kind", "math", "--out", results]);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.Err);
        Assert.That(File.Exists(results), Is.False);
    }

    // --kind was System.CommandLine's "Argument 'essay' not recognized. Must be one of:" with the names on tab-indented
    // lines and no option named, and it refused "MATH"; the other choice options say what they expect in one line, any case.
    [Test]
    public async Task KindNamesItselfWhenWrongAndTakesAnyCase()
    {
        var bad = await Qwq(Eval(TwoProblems(), _tmp.Combine("r.jsonl"), kind: "essay"));
        Assert.That(bad.ExitCode, Is.EqualTo(2), bad.Err);
        Assert.That(bad.Err, Does.StartWith("error: --kind expects one of math, choice, got 'essay'\n").And.Not.Contain("not recognized"));

        var upper = await Qwq(Eval(TwoProblems(), _tmp.Combine("r.jsonl"), samples: "1", kind: "MATH"));
        Assert.That(upper.ExitCode, Is.Zero, upper.Err);
        var choice = await Qwq(Eval(Path.Combine(Examples, "choice.jsonl"), _tmp.Combine("c.jsonl"), samples: "1", kind: "Choice"));
        Assert.That(choice.ExitCode, Is.Zero, choice.Err);
        using var summary = JsonDocument.Parse(File.ReadAllText(_tmp.Combine("c.summary.json")));
        Assert.That(summary.RootElement.GetProperty("kind").GetString(), Is.EqualTo("choice"), "Choice is the choice kind, not math");
    }

    // ---- llama.cpp conventions -----------------------------------------------------------------

    [Test]
    public async Task BareQwqShowsHelp()
    {
        var r = await Qwq();
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("generate").And.Contain("eval").And.Contain("tokenize"));
        Assert.That(r.Err, Is.Empty);
    }

    [Test]
    public void LlamaCppAliasesBindToTheSameOptions()
    {
        var sampling = new SamplingCliOptions();
        var source = new ModelSourceOptions();
        var cmd = new Command("x");
        sampling.AddTo(cmd);
        source.AddTo(cmd);
        foreach (var args in new[] { new[] { "--temp", "0.3", "-s", "7", "-c", "2048" }, ["--temperature", "0.3", "--seed", "7", "--ctx-size", "2048"] })
        {
            var p = cmd.Parse([.. args, "--synthetic", "qwq-32b"]);
            Assert.That(p.Errors, Is.Empty, string.Join(" ", args));
            var s = sampling.Bind(p, SamplingOptions.FromGenerationConfig()).Sampling!;
            Assert.That((s.Temperature, s.Seed, source.Bind(p).Engine.MaxContext), Is.EqualTo((0.3f, (ulong?)7, (int?)2048)));
        }
    }

    [Test]
    public async Task DashTMeansOnlyTokenizeText()
    {
        var gen = await Qwq("generate", "--synthetic", "qwq-32b", "-t", "0.5", "--prompt", "x");
        Assert.That(gen.ExitCode, Is.EqualTo(2), "-t is no longer temperature (llama.cpp users mean threads by it)");
        Assert.That(gen.Err, Does.Contain("-t"));
        var tok = await Qwq("tokenize", "--model", TestModels.QwqDir, "-t", "Hello");
        Assert.That((tok.ExitCode, tok.Out), Is.EqualTo((0, "[9707]\n")));
    }

    [Test]
    public async Task GenerateReadsThePromptFromAFile()
    {
        string file = _tmp.Combine("prompt.txt");
        File.WriteAllText(file, "What is 2 + 2?");
        string[] common = ["generate", "--model", TinyChat, "--backend", "cpu", "--temp", "0", "--max-tokens", "4", "--json"];
        var fromFile = await Qwq([.. common, "-f", file]);
        var inline = await Qwq([.. common, "--prompt", "What is 2 + 2?"]);
        var other = await Qwq([.. common, "--prompt", "Something else entirely, and longer."]);
        Assert.That(fromFile.ExitCode, Is.Zero, fromFile.Err);
        string Usage(string output) => output.Split('\n', StringSplitOptions.RemoveEmptyEntries)[^1];
        Assert.That(Usage(fromFile.Out), Does.Contain("prompt_tokens"));
        // The same prompt tokens (the file's text went through the template exactly as --prompt's) and the same output.
        Assert.That(PromptTokens(fromFile.Out), Is.EqualTo(PromptTokens(inline.Out)));
        Assert.That(PromptTokens(other.Out), Is.Not.EqualTo(PromptTokens(inline.Out)), "the comparison can tell prompts apart");

        var both = await Qwq([.. common, "-f", file, "--prompt", "x"]);
        Assert.That((both.ExitCode, both.Err.Contains("not both")), Is.EqualTo((2, true)));
        var missing = await Qwq([.. common, "--file", _tmp.Combine("nope.txt")]);
        Assert.That((missing.ExitCode, missing.Err.Contains("nope.txt")), Is.EqualTo((1, true)));
    }

    // A directory passed as -f was "does not exist"; an empty file or an empty stdin said "pass --prompt with some text",
    // naming neither the file nor stdin the user gave.
    [TestCase("dir", 1, "is a directory")]
    [TestCase("empty", 2, "is empty")]
    [TestCase("stdin", 2, "standard input is empty")]
    public async Task GeneratesPromptSourceIsNamedWhenItHoldsNoPrompt(string source, int exitCode, string message)
    {
        string file = _tmp.Combine("prompt.txt");
        if (source == "dir") Directory.CreateDirectory(file);
        else File.WriteAllText(file, " \n");
        string[] args = ["generate", "--model", TinyChat, "--backend", "cpu", "--max-tokens", "4", .. source == "stdin" ? new[] { "--prompt", "-" } : ["-f", file]];
        var r = await QwqWithInput(" \n", args);
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.Err);
        Assert.That(r.Err, Does.Contain(message));
        if (source != "stdin") Assert.That(r.Err, Does.Contain(file));
        Assert.That(r.Err, Does.Not.Contain("   at "));
    }

    private static int PromptTokens(string jsonLines)
    {
        foreach (var line in jsonLines.Split('\n', StringSplitOptions.RemoveEmptyEntries).Reverse())
        {
            using var doc = JsonDocument.Parse(line);
            if (FindPromptTokens(doc.RootElement) is int n) return n;
        }
        throw new AssertionException("no prompt_tokens in the output: " + jsonLines);
    }

    private static int? FindPromptTokens(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) return null;
        foreach (var p in e.EnumerateObject())
        {
            if (p.Name == "prompt_tokens") return p.Value.GetInt32();
            if (FindPromptTokens(p.Value) is int n) return n;
        }
        return null;
    }

    private string OneUserMessage()
    {
        string path = _tmp.Combine("m.json");
        File.WriteAllText(path, "[{\"role\": \"user\", \"content\": \"Hi\"}]");
        return path;
    }

    [Test]
    public async Task TokenizeAndRenderTakeSyntheticPresets()
    {
        var synthetic = await Qwq("tokenize", "--synthetic", "qwq-32b", "--text", "Hello world");
        var dir = await Qwq("tokenize", "--model", TestModels.QwqDir, "--text", "Hello world");
        Assert.That(synthetic.ExitCode, Is.Zero, synthetic.Err);
        Assert.That(synthetic.Out, Is.EqualTo(dir.Out).And.EqualTo("[9707,1879]\n"));

        string messages = OneUserMessage();
        var render = await Qwq("render", "--synthetic", "qwq-32b", "--messages", messages);
        Assert.That(render.ExitCode, Is.Zero, render.Err);
        Assert.That(render.Out, Is.EqualTo("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"));

        var unknown = await Qwq("tokenize", "--synthetic", "gpt-9", "--text", "x");
        Assert.That((unknown.ExitCode, unknown.Err.Contains("qwq-32b")), Is.EqualTo((1, true)), unknown.Err);
        var neither = await Qwq("tokenize", "--text", "x");
        Assert.That((neither.ExitCode, neither.Err.Contains("--synthetic")), Is.EqualTo((2, true)), neither.Err);
    }

    [Test]
    public async Task TokenizeAndRenderTakeHuggingFaceIds()
    {
        // A Hugging Face cache holding only the tokenizer files of "Qwen/QwQ-32B".
        string snapshot = _tmp.Combine("hub", "models--Qwen--QwQ-32B", "snapshots", "abc123");
        Directory.CreateDirectory(snapshot);
        foreach (var f in Directory.GetFiles(TestModels.QwqDir)) File.Copy(f, Path.Combine(snapshot, Path.GetFileName(f)));
        Directory.CreateDirectory(_tmp.Combine("hub", "models--Qwen--QwQ-32B", "refs"));
        File.WriteAllText(_tmp.Combine("hub", "models--Qwen--QwQ-32B", "refs", "main"), "abc123");
        string hub = _tmp.Combine("hub");
        string? Env(string name) => name == "HF_HUB_CACHE" ? hub : null;

        async Task<Result> Run(params string[] args)
        {
            var o = new StringWriter();
            var e = new StringWriter();
            int code = await Program.RunAsync(args, new CliHost(o, e, environment: Env), CancellationToken.None);
            return new Result(code, o.ToString(), e.ToString());
        }

        var tok = await Run("tokenize", "--model", "Qwen/QwQ-32B", "--text", "Hello world");
        Assert.That((tok.ExitCode, tok.Out), Is.EqualTo((0, "[9707,1879]\n")), tok.Err);
        string messages = OneUserMessage();
        var render = await Run("render", "--model", "Qwen/QwQ-32B", "--messages", messages);
        Assert.That(render.ExitCode, Is.Zero, render.Err);
        Assert.That(render.Out, Does.EndWith("<|im_start|>assistant\n<think>\n"));
        var missing = await Run("tokenize", "--model", "Qwen/Other", "--text", "x");
        Assert.That((missing.ExitCode, missing.Err.Contains("Hugging Face cache")), Is.EqualTo((1, true)), missing.Err);
    }
}

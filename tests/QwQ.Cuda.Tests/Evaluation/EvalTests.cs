using QwQ.Cuda.Errors;
using QwQ.Cuda.Evaluation;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Evaluation;

[TestFixture]
public class EvalProblemsTests
{
    private static TestModels.TempDir _tmp = null!;

    [SetUp] public void MakeDir() => _tmp = new TestModels.TempDir();
    [TearDown] public void RemoveDir() => _tmp.Dispose();

    private static string Write(params string[] lines)
    {
        string path = _tmp.Combine("p.jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    [Test]
    public void MathPromptEndsWithTheModelCardInstruction()
    {
        var p = EvalProblems.Load(Write("{\"id\": \"m1\", \"problem\": \"What is 6 times 7?\", \"answer\": 42}", ""), AnswerKind.Math);
        Assert.That(p, Has.Count.EqualTo(1));
        Assert.That(p[0], Is.EqualTo(new EvalProblem("m1",
            "What is 6 times 7?\nPlease reason step by step, and put your final answer within \\boxed{}.", "42", AnswerKind.Math)));
    }

    [Test]
    public void ChoicesAreListedUnderTheQuestionThenTheInstruction()
    {
        var p = EvalProblems.Load(Write(
            "{\"id\": 7, \"question\": \"Which is a prime?\", \"choices\": {\"A\": \"4\", \"B\": \"9\", \"C\": \"11\"}, \"answer\": \"C\"}",
            "{\"question\": \"Pick one.\\nA. x\\nB. y\", \"answer\": \"b\"}",
            "{\"id\": \"arr\", \"question\": \"Q?\", \"choices\": [\"yes\", \"no\"], \"answer\": \"A\"}"), AnswerKind.Choice);
        const string instruction = "Please show your choice in the `answer` field with only the choice letter, e.g.,`\"answer\": \"C\"`.";
        Assert.That(p[0].Id, Is.EqualTo("7"));
        Assert.That(p[0].Prompt, Is.EqualTo("Which is a prime?\n\nA. 4\nB. 9\nC. 11\n" + instruction));
        Assert.That(p[1].Id, Is.EqualTo("2"), "no id: the line number");
        Assert.That(p[1].Prompt, Is.EqualTo("Pick one.\nA. x\nB. y\n" + instruction));
        Assert.That(p[2].Prompt, Is.EqualTo("Q?\n\nA. yes\nB. no\n" + instruction));
    }

    [TestCase(AnswerKind.Math, "{\"id\": 1, \"question\": \"Q\", \"answer\": \"A\"}", "line 1", "--kind choice")]
    [TestCase(AnswerKind.Choice, "{\"id\": 1, \"problem\": \"Q\", \"answer\": \"3\"}", "line 1", "--kind math")]
    [TestCase(AnswerKind.Math, "{\"id\": 1, \"problem\": \"Q\"}", "line 1", "\"answer\"")]
    [TestCase(AnswerKind.Choice, "{\"id\": 1, \"question\": \"Q\", \"answer\": \"42\"}", "line 1", "one letter")]
    [TestCase(AnswerKind.Math, "{\"id\": 1, \"problem\": \"Q\", \"answer\": 1}\n{\"id\": 1, \"problem\": \"R\", \"answer\": 2}", "line 2", "used twice")]
    [TestCase(AnswerKind.Math, "{\"id\": 1, \"problem\": \"Q\", \"answer\": \" \"}", "line 1", "\"answer\" is empty")]
    [TestCase(AnswerKind.Math, "{\"id\": 1, \"problem\": \"\", \"answer\": \"3\"}", "line 1", "\"problem\" is empty")]
    [TestCase(AnswerKind.Choice, "{\"id\": 1, \"question\": \"\", \"choices\": [\"x\", \"y\"], \"answer\": \"A\"}", "line 1", "\"question\" is empty")]
    [TestCase(AnswerKind.Math, "{\"id\": \"\", \"problem\": \"Q\", \"answer\": \"3\"}", "line 1", "\"id\" is empty")]
    [TestCase(AnswerKind.Choice, "{\"id\": 1, \"question\": \"Q\", \"choices\": [\"x\", \"y\"], \"answer\": \"C\"}", "line 1", "A, B")]
    [TestCase(AnswerKind.Choice, "{\"id\": 1, \"question\": \"Q\", \"choices\": {\"A\": \"x\", \"B\": \"y\"}, \"answer\": \"(c)\"}", "line 1", "A, B")]
    [TestCase(AnswerKind.Math, "not json", "line 1", "not a JSON object")]
    [TestCase(AnswerKind.Math, "", "p.jsonl", "no problems")]
    public void BadLinesNameTheLineAndTheFix(AnswerKind kind, string content, string where, string fix)
    {
        var e = Assert.Throws<QwqException>(() => EvalProblems.Load(Write(content), kind))!;
        Assert.That(e.Message, Does.Contain(where).And.Contain(fix));
    }

    [Test]
    public void MissingFileIsOneClearError() =>
        Assert.That(() => EvalProblems.Load(_tmp.Combine("nope.jsonl"), AnswerKind.Math),
            Throws.InstanceOf<QwqException>().With.Message.Contain("nope.jsonl").And.Message.Contain("does not exist"));

    [Test]
    public void ShippedExamplesLoadAndTheirAnswersAreWellFormed()
    {
        string dir = Path.Combine(TestModels.FixturesDir, "eval-examples"); // bench/eval/examples, copied by the test project
        var math = EvalProblems.Load(Path.Combine(dir, "math.jsonl"), AnswerKind.Math);
        var choice = EvalProblems.Load(Path.Combine(dir, "choice.jsonl"), AnswerKind.Choice);
        Assert.That(math.Count + choice.Count, Is.GreaterThanOrEqualTo(12));
        // Each reference answer, written boxed as the model would, is found and scores as right.
        Assert.That(math, Has.All.Matches<EvalProblem>(p =>
            AnswerExtractor.IsCorrect(AnswerExtractor.Extract($"so \\boxed{{{p.Expected}}}.", AnswerKind.Math), p.Expected, AnswerKind.Math)));
        Assert.That(choice, Has.All.Matches<EvalProblem>(p => AnswerExtractor.ChoiceLetter(p.Expected) is not null && p.Prompt.Contains($"\n{p.Expected.ToUpperInvariant()}. ")));
    }
}

[TestFixture]
public class EvalScorerTests
{
    private static EvalSample S(string id, int k, string? answer, bool truncated = false, int reasoning = 10, int answerTokens = 5, double seconds = 1) =>
        new(id, k, (ulong)k, "text", answer, "?", false, reasoning, answerTokens, reasoning + answerTokens + 1,
            truncated ? "max_tokens" : "end_of_sequence", seconds);

    private static readonly EvalProblem P1 = new("p1", "q", "\\frac{1}{2}", AnswerKind.Math);
    private static readonly EvalProblem P2 = new("p2", "q", "7", AnswerKind.Math);
    private static readonly EvalProblem P3 = new("p3", "q", "B", AnswerKind.Choice);

    [Test]
    public void PassAt1AndMajorityByHand()
    {
        // p1: 2 of 4 right (0.5 and 1/2 both equal \frac{1}{2}); votes: 0.5×2 (as one group), 3×2 → tie, first seen (0.5) wins → right.
        // p2: 1 of 4 right; votes 8×2, 7×1, none×1 → 8 → wrong.
        // p3: 3 of 4 right (b, B, (B)); majority B → right.
        var samples = new[]
        {
            S("p1", 0, "0.5"), S("p1", 1, "3"), S("p1", 2, "1/2"), S("p1", 3, "3"),
            S("p2", 0, "8"), S("p2", 1, "7"), S("p2", 2, null, truncated: true), S("p2", 3, "8"),
            S("p3", 0, "b"), S("p3", 1, "B"), S("p3", 2, "A"), S("p3", 3, "(B)"),
            S("other", 0, "1"), // not in the set: ignored
        };
        var score = EvalScorer.Score([P1, P2, P3], samples);
        Assert.That(score.PerProblem.Select(p => p.PassAt1), Is.EqualTo(new[] { 0.5, 0.25, 0.75 }));
        Assert.That(score.PerProblem.Select(p => p.MajorityAnswer), Is.EqualTo(new[] { "0.5", "8", "b" }));
        Assert.That(score.PerProblem.Select(p => p.MajorityCorrect), Is.EqualTo(new[] { true, false, true }));
        Assert.That(score.PassAt1, Is.EqualTo((0.5 + 0.25 + 0.75) / 3).Within(1e-12));
        Assert.That(score.MajorityAtN, Is.EqualTo(2.0 / 3).Within(1e-12));
        Assert.That(score.Samples, Is.EqualTo(12));
        Assert.That(score.SamplesPerProblem, Is.EqualTo(4));
        Assert.That(score.TruncatedShare, Is.EqualTo(1.0 / 12).Within(1e-12));
        Assert.That(score.PerProblem[1].TruncatedShare, Is.EqualTo(0.25));
        Assert.That(score.GeneratedTokens, Is.EqualTo(12 * 16));
        Assert.That(score.TokensPerSecond, Is.EqualTo(16.0));
    }

    [Test]
    public void CorrectnessIsRecomputedFromTheAnswerNotTakenFromTheFile()
    {
        var score = EvalScorer.Score([P2], [S("p2", 0, "7.0") with { Correct = false }]);
        Assert.That(score.PassAt1, Is.EqualTo(1.0));
    }

    [Test]
    public void TokenMeansAndProblemsWithoutSamples()
    {
        var score = EvalScorer.Score([P1, P2], [S("p1", 0, "1", reasoning: 100, answerTokens: 10), S("p1", 1, "1", reasoning: 200, answerTokens: 30)]);
        Assert.That(score.Problems, Is.EqualTo(1), "p2 has no samples yet");
        Assert.That(score.MeanReasoningTokens, Is.EqualTo(150));
        Assert.That(score.MeanAnswerTokens, Is.EqualTo(20));
        Assert.That(score.PerProblem[0].MajorityAnswer, Is.EqualTo("1"));
        Assert.That(EvalScorer.Score([P1], []).PassAt1, Is.Zero);
    }

    [Test]
    public void MajorityIgnoresMissingAnswers()
    {
        Assert.That(EvalScorer.Majority([null, null, "4"], AnswerKind.Math), Is.EqualTo("4"));
        Assert.That(EvalScorer.Majority([null, null], AnswerKind.Math), Is.Null);
        Assert.That(EvalScorer.Majority(["2", "\\frac{4}{2}", "3", "3", "2.0"], AnswerKind.Math), Is.EqualTo("2"));
    }
}

[TestFixture]
public class EvalResultsFileTests
{
    private static TestModels.TempDir _tmp = null!;

    [SetUp] public void MakeDir() => _tmp = new TestModels.TempDir();
    [TearDown] public void RemoveDir() => _tmp.Dispose();

    private static EvalSample Sample(string id, int k) =>
        new(id, k, 100 + (ulong)k, "<think>\"x\"\n</think> \\boxed{1} 東京", "1", "1", true, 3, 4, 8, "end_of_sequence", 0.25);

    [Test]
    public void LinesRoundTripAndAreFlushedAsWritten()
    {
        string path = _tmp.Combine("sub", "r.jsonl");
        using (var file = EvalResultsFile.Open(path, resume: false))
        {
            file.Append(Sample("a", 0));
            // Each sample is on disk as soon as it is appended (the run holds the file, so its length tells).
            Assert.That(new FileInfo(path).Length, Is.EqualTo(EvalResultsFile.Serialize(Sample("a", 0)).Length));
            file.Append(Sample("a", 1));
        }
        Assert.That(EvalResultsFile.Read(path), Is.EqualTo(new[] { Sample("a", 0), Sample("a", 1) }));
        Assert.That(File.ReadAllLines(path)[0], Does.StartWith("{\"id\":\"a\",\"sample\":0,\"seed\":100,\"answer\":\"1\""));
    }

    [Test]
    public void AnExistingFileIsNotOverwrittenWithoutResume()
    {
        string path = _tmp.Combine("r.jsonl");
        using (var f = EvalResultsFile.Open(path, resume: false)) f.Append(Sample("a", 0));
        Assert.That(() => EvalResultsFile.Open(path, resume: false),
            Throws.InstanceOf<QwqException>().With.Message.Contain("--resume").And.Message.Contain("r.jsonl"));
        Assert.That(EvalResultsFile.Read(path), Has.Count.EqualTo(1));
    }

    // Two runs on one --out at once interleaved their lines: on Unix the shared lock that FileShare.Read takes did not
    // stop a second writer. The second is refused at once, naming --out, and the file is free again when the first ends.
    [Test]
    public void ASecondRunOnTheSameFileIsRefusedWhileTheFirstWrites()
    {
        string path = _tmp.Combine("r.jsonl");
        using (var first = EvalResultsFile.Open(path, resume: false))
        {
            first.Append(Sample("a", 0));
            foreach (bool resume in new[] { true, false })
                Assert.That(() => EvalResultsFile.Open(path, resume),
                    Throws.InstanceOf<QwqException>().With.Message.Contain("Another run is writing --out " + path), $"resume: {resume}");
            if (!OperatingSystem.IsWindows()) // there readers may share the file; on Unix the lock keeps .NET readers out
                Assert.That(() => EvalResultsFile.Read(path), Throws.InstanceOf<QwqException>().With.Message.Contain("being written by a run"));
        }
        using (var second = EvalResultsFile.Open(path, resume: true)) second.Append(Sample("a", 1));
        Assert.That(EvalResultsFile.Read(path).Select(s => s.Sample), Is.EqualTo(new[] { 0, 1 }));
    }

    [Test]
    public void ResumeDropsATornLastLineAndKeepsTheRest()
    {
        string path = _tmp.Combine("r.jsonl");
        using (var f = EvalResultsFile.Open(path, resume: false)) { f.Append(Sample("a", 0)); f.Append(Sample("a", 1)); }
        File.AppendAllText(path, "{\"id\":\"a\",\"sample\":2,\"se"); // the process died mid-write
        using (var f = EvalResultsFile.Open(path, resume: true))
        {
            Assert.That(f.Existing.Select(s => s.Sample), Is.EqualTo(new[] { 0, 1 }));
            f.Append(Sample("a", 2));
        }
        Assert.That(EvalResultsFile.Read(path).Select(s => s.Sample), Is.EqualTo(new[] { 0, 1, 2 }));
    }

    [Test]
    public void ACorruptLineInTheMiddleIsAnErrorNamingIt()
    {
        string path = _tmp.Combine("r.jsonl");
        File.WriteAllText(path, "{\"id\": 1}\n");
        Assert.That(() => EvalResultsFile.Open(path, resume: true),
            Throws.InstanceOf<QwqException>().With.Message.Contain("line 1"));
    }

    [Test]
    public void AnOutPathThatCannotBeWrittenIsOneClearError()
    {
        // A directory, a path under a file: messages naming --out, not internal errors (exit 3).
        string dir = _tmp.Combine("d");
        Directory.CreateDirectory(dir);
        Assert.That(() => EvalResultsFile.Open(dir, resume: false),
            Throws.InstanceOf<QwqException>().With.Message.Contain("--out").And.Message.Contain("directory"));
        string file = _tmp.Combine("f.jsonl");
        File.WriteAllText(file, "");
        Assert.That(() => EvalResultsFile.Open(Path.Combine(file, "r.jsonl"), resume: false),
            Throws.InstanceOf<QwqException>().With.Message.Contain("--out").And.Message.Contain(Path.Combine(file, "r.jsonl")));
    }

    [Test]
    public void SummarySitsBesideTheResults() =>
        Assert.That(EvalResultsFile.SummaryPath(Path.Combine("out", "results.jsonl")), Is.EqualTo(Path.Combine("out", "results.summary.json")));
}

/// <summary>A generator that answers from a script: (problem id, sample) → text, with counts derived from it.</summary>
internal sealed class ScriptedEvalGenerator(Func<EvalRequest, string> answer) : IEvalGenerator
{
    public List<EvalRequest> Seen { get; } = [];
    public int? CancelAfter { get; init; }
    public CancellationTokenSource? Cancel { get; init; }

    public Task GenerateAsync(IReadOnlyList<EvalRequest> requests, Action<EvalRequest, EvalGeneration> onFinished, CancellationToken ct)
    {
        foreach (var r in requests)
        {
            ct.ThrowIfCancellationRequested();
            Seen.Add(r);
            string text = "thinking...</think>" + answer(r);
            onFinished(r, new EvalGeneration(text, answer(r), 3, 2, 6, FinishReason.EndOfSequence, TimeSpan.FromSeconds(0.5)));
            if (Seen.Count == CancelAfter) Cancel!.Cancel();
        }
        return Task.CompletedTask;
    }
}

[TestFixture]
public class EvalRunnerTests
{
    private static TestModels.TempDir _tmp = null!;

    [SetUp] public void MakeDir() => _tmp = new TestModels.TempDir();
    [TearDown] public void RemoveDir() => _tmp.Dispose();

    private static readonly EvalProblem[] Problems =
    [
        new("m1", "q1", "42", AnswerKind.Math),
        new("m2", "q2", "0.5", AnswerKind.Math),
    ];

    // m1: right on even samples; m2: always \frac{1}{2} (right).
    private static string Answer(EvalRequest r) => r.Problem.Id == "m1" ? (r.Sample % 2 == 0 ? "\\boxed{42}" : "\\boxed{41}") : "$\\boxed{\\frac{1}{2}}$";

    [Test]
    public async Task RunsEverySampleWithSeedsBasePlusKAndScoresThem()
    {
        var gen = new ScriptedEvalGenerator(Answer);
        var progress = new List<EvalProgress>();
        string path = _tmp.Combine("r.jsonl");
        EvalScore score;
        using (var file = EvalResultsFile.Open(path, resume: false))
            (score, _) = await new EvalRunner(gen, progress.Add).RunAsync(Problems, new EvalRunOptions(3, 1000), file);

        Assert.That(gen.Seen.Select(r => (r.Problem.Id, r.Sample, r.Seed)), Is.EqualTo(new[]
        {
            ("m1", 0, 1000UL), ("m1", 1, 1001UL), ("m1", 2, 1002UL), ("m2", 0, 1000UL), ("m2", 1, 1001UL), ("m2", 2, 1002UL),
        }));
        var lines = EvalResultsFile.Read(path);
        Assert.That(lines.Select(s => (s.Id, s.Sample, s.Answer, s.Correct)), Is.EqualTo(new[]
        {
            ("m1", 0, "42", true), ("m1", 1, "41", false), ("m1", 2, "42", true),
            ("m2", 0, "\\frac{1}{2}", true), ("m2", 1, "\\frac{1}{2}", true), ("m2", 2, "\\frac{1}{2}", true),
        }));
        Assert.That(lines[0].Text, Is.EqualTo("thinking...</think>\\boxed{42}"));
        Assert.That((lines[0].ReasoningTokens, lines[0].AnswerTokens, lines[0].TotalTokens, lines[0].FinishReason), Is.EqualTo((3, 2, 6, "end_of_sequence")));
        Assert.That(score.PassAt1, Is.EqualTo((2.0 / 3 + 1) / 2).Within(1e-12));
        Assert.That(score.MajorityAtN, Is.EqualTo(1.0));
        Assert.That(progress[^1], Is.EqualTo(progress[^1] with { ProblemsDone = 2, ProblemsTotal = 2, SamplesDone = 6, SamplesTotal = 6, SamplesThisRun = 6, TokensThisRun = 36 }));
    }

    [Test]
    public async Task AnInterruptedRunKeepsFinishedSamplesAndResumeDoesOnlyTheRest()
    {
        string path = _tmp.Combine("r.jsonl");
        using var cts = new CancellationTokenSource();
        var first = new ScriptedEvalGenerator(Answer) { CancelAfter = 4, Cancel = cts };
        using (var file = EvalResultsFile.Open(path, resume: false))
            Assert.That(async () => await new EvalRunner(first).RunAsync(Problems, new EvalRunOptions(3, 7), file, cts.Token),
                Throws.InstanceOf<OperationCanceledException>());
        Assert.That(EvalResultsFile.Read(path), Has.Count.EqualTo(4), "every sample finished before the interruption is on disk");

        var second = new ScriptedEvalGenerator(Answer);
        var progress = new List<EvalProgress>();
        EvalScore score;
        using (var file = EvalResultsFile.Open(path, resume: true))
            (score, _) = await new EvalRunner(second, progress.Add).RunAsync(Problems, new EvalRunOptions(3, 7), file);

        Assert.That(second.Seen.Select(r => (r.Problem.Id, r.Sample, r.Seed)), Is.EqualTo(new[] { ("m2", 1, 8UL), ("m2", 2, 9UL) }));
        Assert.That(progress[0].SamplesDone, Is.EqualTo(4), "resumed samples count as done");
        Assert.That(progress[0].ProblemsDone, Is.EqualTo(1));
        Assert.That((progress[^1].SamplesDone, progress[^1].SamplesThisRun), Is.EqualTo((6, 2)));
        var lines = EvalResultsFile.Read(path);
        Assert.That(lines.Select(s => (s.Id, s.Sample)), Is.Unique);
        Assert.That(lines, Has.Count.EqualTo(6));
        Assert.That(score.Samples, Is.EqualTo(6));

        // A third resume has nothing left to do and scores the file alone.
        var third = new ScriptedEvalGenerator(Answer);
        using (var file = EvalResultsFile.Open(path, resume: true))
            (score, _) = await new EvalRunner(third).RunAsync(Problems, new EvalRunOptions(3, 7), file);
        Assert.That(third.Seen, Is.Empty);
        Assert.That(score.PassAt1, Is.EqualTo((2.0 / 3 + 1) / 2).Within(1e-12));
    }

    [Test]
    public async Task ResumingWithFewerSamplesScoresOnlyThoseSamples()
    {
        string path = _tmp.Combine("r.jsonl");
        using (var file = EvalResultsFile.Open(path, resume: false))
            await new EvalRunner(new ScriptedEvalGenerator(Answer)).RunAsync(Problems, new EvalRunOptions(3, 0), file);

        // m1 is right on samples 0 and 2: over 2 samples its pass@1 is 1/2 and maj@2 is a tie that 42 (seen first) wins.
        EvalScore score;
        using (var file = EvalResultsFile.Open(path, resume: true))
            (score, _) = await new EvalRunner(new ScriptedEvalGenerator(Answer)).RunAsync(Problems, new EvalRunOptions(2, 0), file);
        Assert.That((score.Samples, score.SamplesPerProblem), Is.EqualTo((4, 2)), "maj@2 of samples 0 and 1, not maj@3 of the whole file");
        Assert.That(score.PerProblem[0].PassAt1, Is.EqualTo(0.5));
        Assert.That(EvalResultsFile.Read(path), Has.Count.EqualTo(6), "the file keeps sample 2");
    }

    [Test]
    public async Task ResumingAFileOfOtherOptionsOrProblemsIsAnError()
    {
        string path = _tmp.Combine("r.jsonl");
        using (var file = EvalResultsFile.Open(path, resume: false))
            await new EvalRunner(new ScriptedEvalGenerator(Answer)).RunAsync(Problems, new EvalRunOptions(1, 7), file);

        async Task<QwqException> Resume(EvalProblem[] problems, ulong seed)
        {
            var gen = new ScriptedEvalGenerator(Answer);
            using var file = EvalResultsFile.Open(path, resume: true);
            var e = Assert.ThrowsAsync<QwqException>(async () => await new EvalRunner(gen).RunAsync(problems, new EvalRunOptions(2, seed), file))!;
            Assert.That(gen.Seen, Is.Empty, "nothing is generated into a file that does not match");
            return e;
        }

        Assert.That((await Resume(Problems, 0)).Message, Does.Contain("--seed 7").And.Contain("r.jsonl"));
        Assert.That((await Resume([Problems[0], Problems[1] with { Expected = "0.25" }], 7)).Message,
            Does.Contain("m2").And.Contain("0.25").And.Contain("0.5"));
        Assert.That((await Resume([new EvalProblem("c1", "q", "B", AnswerKind.Choice)], 7)).Message,
            Does.Contain("none").And.Contain("--data"));
        Assert.That(EvalResultsFile.Read(path), Has.Count.EqualTo(2));
    }

    [Test]
    public void CancelledGenerationsAreNotWritten()
    {
        var p = Problems[0];
        string path = _tmp.Combine("r.jsonl");
        var gen = new CancellingGenerator();
        using (var file = EvalResultsFile.Open(path, resume: false))
            Assert.That(async () => await new EvalRunner(gen).RunAsync([p], new EvalRunOptions(2, 0), file, gen.Token),
                Throws.InstanceOf<OperationCanceledException>());
        Assert.That(EvalResultsFile.Read(path).Select(s => s.Sample), Is.EqualTo(new[] { 0 }));
    }

    /// <summary>Finishes sample 0, then reports sample 1 as cancelled (what a session does on Ctrl+C).</summary>
    private sealed class CancellingGenerator : IEvalGenerator
    {
        private readonly CancellationTokenSource _cts = new();
        public CancellationToken Token => _cts.Token;
        public Task GenerateAsync(IReadOnlyList<EvalRequest> requests, Action<EvalRequest, EvalGeneration> onFinished, CancellationToken ct)
        {
            onFinished(requests[0], new EvalGeneration("\\boxed{42}", null, 1, 0, 1, FinishReason.EndOfSequence, TimeSpan.Zero));
            _cts.Cancel();
            onFinished(requests[1], new EvalGeneration("\\boxed{4", null, 1, 0, 1, FinishReason.Cancelled, TimeSpan.Zero));
            return Task.CompletedTask;
        }
    }

    [Test]
    public void TruncatedSampleWithoutAnAnswerPartIsSearchedWhole()
    {
        var r = new EvalRequest(Problems[0], 0, 0);
        var s = EvalRunner.ToSample(r, new EvalGeneration("so \\boxed{42} maybe, but", null, 9, 0, 9, FinishReason.MaxTokens, TimeSpan.FromSeconds(1)));
        Assert.That((s.Answer, s.Correct, s.Truncated, s.FinishReason), Is.EqualTo(("42", true, true, "max_tokens")));
        var after = EvalRunner.ToSample(r, new EvalGeneration("\\boxed{42}</think>The answer is \\boxed{41}", "The answer is \\boxed{41}", 3, 5, 9, FinishReason.EndOfSequence, TimeSpan.Zero));
        Assert.That((after.Answer, after.Correct), Is.EqualTo(("41", false)), "the answer part wins over the reasoning");
    }

    [Test]
    public void SamplesMustBePositive() =>
        Assert.That(() => new EvalRunOptions(0, 0).Validate(), Throws.InstanceOf<OptionException>().With.Message.Contain("--samples"));
}

[TestFixture]
public class BatchEvalGeneratorTests
{
    [Test]
    public async Task SamplesOfAProblemPrefillItsPromptOnce()
    {
        var backend = new CountingBackend(TestModels.Backend(validVocab: TestModels.Tokenizer.VocabSize));
        using var model = TestModels.ChatModel(backend: backend);
        // Long enough to fill two KV blocks: the samples share full blocks only.
        string question = string.Concat(Enumerable.Repeat("A train leaves at noon and travels at a steady speed. ", 12)) + "What is 1 + 1?";
        var problem = new EvalProblem("p", EvalPrompts.Build(question, AnswerKind.Math), "2", AnswerKind.Math);
        var requests = Enumerable.Range(0, 3).Select(k => new EvalRequest(problem, k, 5 + (ulong)k)).ToList();
        var got = new List<(EvalRequest, EvalGeneration)>();
        var gen = new BatchEvalGenerator(model, new GenerationOptions { MaxNewTokens = 3 });
        await gen.GenerateAsync(requests, (r, g) => got.Add((r, g)), CancellationToken.None);

        Assert.That(got.Select(g => g.Item1.Sample).Order(), Is.EqualTo(new[] { 0, 1, 2 }), "every sample once, in completion order");
        Assert.That(got.Select(g => g.Item2.TotalTokens), Has.All.InRange(1, 3));
        Assert.That(got.Select(g => g.Item2.ReasoningTokens + g.Item2.AnswerTokens + (g.Item2.Answer is null ? 0 : 1)),
            Is.EqualTo(got.Select(g => g.Item2.TotalTokens)));
        int prompt = model.Tokenizer.Encode(model.Template.Apply([ChatMessage.User(problem.Prompt)], null, addGenerationPrompt: true)).Length;
        int appended = backend.Sequences.Sum(s => s.Appended);
        // The later samples attach the full prompt blocks the first one filled, computing only the partial last block.
        int shared = prompt / model.Backend.KvPool.BlockSize * model.Backend.KvPool.BlockSize;
        Assert.That(shared, Is.GreaterThan(0), "the prompt must fill at least one block for this test to mean anything");
        Assert.That(appended, Is.LessThanOrEqualTo(3 * prompt - 2 * shared + 3 * 3), $"prompt {prompt} tokens ({shared} in full blocks), appended {appended}");
    }

    [Test]
    public void TokensAreSplitAtTheEndOfReasoning()
    {
        const int end = 99;
        var result = new GenerationResult
        {
            FinishReason = FinishReason.EndOfSequence, Usage = new GenerationUsage(), Text = "ab</think>cd", Answer = "cd",
            TokenIds = [1, 2, end, 3, 4, 5],
        };
        var g = BatchEvalGenerator.FromResult(result, end, TimeSpan.FromSeconds(2));
        Assert.That((g.ReasoningTokens, g.AnswerTokens, g.TotalTokens, g.Answer), Is.EqualTo((2, 3, 6, "cd")));
        var cut = BatchEvalGenerator.FromResult(result with { TokenIds = [1, 2, 3], Answer = "", FinishReason = FinishReason.MaxTokens }, end, TimeSpan.Zero);
        Assert.That((cut.ReasoningTokens, cut.AnswerTokens, cut.TotalTokens, cut.Answer), Is.EqualTo((3, 0, 3, (string?)null)));
    }
}

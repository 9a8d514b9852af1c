using System.CommandLine;
using System.Globalization;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Evaluation;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;
using Spectre.Console;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq eval</c>: samples every problem of a JSONL set N times with the model card's benchmark prompts, appends
/// each sample to a results file as it finishes, and prints pass@1 / maj@N (format: docs/EVAL.md).
/// </summary>
internal static class EvalCommand
{
    private sealed record Options(string Data, AnswerKind Kind, int Samples, string Out, bool Resume, bool Progress);

    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions();
        var sampling = new SamplingCliOptions();
        var data = new Option<string>("--data") { Description = "Problems, one JSON object per line (see docs/EVAL.md)", HelpName = "FILE", Required = true };
        var kind = new Option<string?>("--kind") { Description = "math: answer in \\boxed{}; choice: a letter in an \"answer\" field", Required = true };
        TypedOptions.AcceptOnly(kind, "math", "choice");
        var samples = TypedOptions.Integer("--samples", 1, "Samples per problem (sample k uses seed = --seed + k)");
        var output = new Option<string>("--out", "-o") { Description = "Results file (JSON lines, one per sample); the summary goes beside it as NAME.summary.json", HelpName = "FILE", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue an interrupted run: keep the samples already in --out, generate the rest" };
        var noProgress = new Option<bool>("--no-progress") { Description = "No progress bar" };

        var command = new Command("eval", "Score the model on a problem set: pass@1 and maj@N over sampled answers (QwQ's benchmark prompts)");
        source.AddTo(command);
        command.Add(data);
        command.Add(kind);
        command.Add(samples);
        command.Add(output);
        command.Add(resume);
        sampling.AddTo(command);
        command.Add(noProgress);
        command.SetAction((p, ct) => RunAsync(host, p, source, sampling, new Options(
            p.GetValue(data)!, p.GetValue(kind) == "choice" ? AnswerKind.Choice : AnswerKind.Math, p.GetValue(samples),
            p.GetValue(output)!, p.GetValue(resume), !p.GetValue(noProgress)), ct));
        return command;
    }

    private static async Task<int> RunAsync(CliHost host, ParseResult p, ModelSourceOptions source, SamplingCliOptions sampling, Options o, CancellationToken ct)
    {
        // Everything that can be checked without the model is checked before a possibly long load.
        var runOptions = new EvalRunOptions(o.Samples, sampling.Bind(p, Sampling.SamplingOptions.FromGenerationConfig()).Sampling?.Seed ?? 0);
        runOptions.Validate();
        var problems = EvalProblems.Load(o.Data, o.Kind);
        var (model, synthetic) = source.Source(p);
        var modelOptions = source.Bind(p);
        using var results = EvalResultsFile.Open(o.Out, o.Resume);
        EvalRunner.CheckResumable(problems, runOptions, results);

        var token = host.BeginOperation(ct);
        try
        {
            using var qwq = await LoadProgressView.LoadAsync(host, model, modelOptions, o.Progress, token);
            GenerateCommand.ReportWarnings(host, qwq, json: false);
            var options = sampling.Bind(p, qwq.GenerationDefaults);
            runOptions = runOptions with { BaseSeed = options.Sampling?.Seed ?? 0 };
            var generator = new BatchEvalGenerator(qwq, options);
            var (score, run) = await RunWithProgressAsync(host, o.Progress, generator, problems, runOptions, results, token);

            WriteTable(host, score);
            host.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"this run: {run.SamplesThisRun} samples, {run.TokensThisRun} tokens in {run.Elapsed.TotalSeconds:F1} s ({run.TokensPerSecond:F1} tok/s, samples generated together)"));
            string summary = EvalResultsFile.SummaryPath(o.Out);
            EvalSummary.Write(summary, score, new EvalRunInfo(model ?? $"synthetic:{synthetic}", o.Data, o.Kind, o.Samples, runOptions.BaseSeed, options, run));
            host.Error.WriteLine(host.Dim($"results: {o.Out}   summary: {summary}"));
            return ExitCodes.Ok;
        }
        finally
        {
            host.EndOperation();
        }
    }

    private static async Task<(EvalScore, EvalProgress)> RunWithProgressAsync(CliHost host, bool showProgress, IEvalGenerator generator,
        IReadOnlyList<EvalProblem> problems, EvalRunOptions options, EvalResultsFile results, CancellationToken ct)
    {
        if (!showProgress || !host.Terminal)
            return await new EvalRunner(generator).RunAsync(problems, options, results, ct);

        (EvalScore, EvalProgress) outcome = default;
        await Console(host, host.Error).Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask("eval", maxValue: Math.Max(1, problems.Count * options.Samples));
                outcome = await new EvalRunner(generator, e =>
                {
                    task.Value = e.SamplesDone;
                    task.Description = string.Create(CultureInfo.InvariantCulture,
                        $"problems {e.ProblemsDone}/{e.ProblemsTotal}  samples {e.SamplesDone}/{e.SamplesTotal}  {e.TokensPerSecond:F1} tok/s");
                }).RunAsync(problems, options, results, ct);
            });
        return outcome;
    }

    private static IAnsiConsole Console(CliHost host, TextWriter writer) => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(writer),
        Ansi = host.Colors ? AnsiSupport.Detect : AnsiSupport.No,
        ColorSystem = host.Colors ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
    });

    /// <summary>One row per problem, then the overall row, on standard output.</summary>
    internal static void WriteTable(CliHost host, EvalScore score)
    {
        string n = score.SamplesPerProblem.ToString(CultureInfo.InvariantCulture);
        var table = new Table().Border(TableBorder.Simple);
        table.AddColumn(new TableColumn("problem").NoWrap());
        table.AddColumn(new TableColumn("n").RightAligned());
        table.AddColumn(new TableColumn("pass@1").RightAligned());
        table.AddColumn(new TableColumn($"maj@{n}").RightAligned());
        table.AddColumn("majority");
        table.AddColumn(new TableColumn("think tok").RightAligned().NoWrap());
        table.AddColumn(new TableColumn("answer tok").RightAligned().NoWrap());
        table.AddColumn(new TableColumn("truncated").RightAligned());
        foreach (var p in score.PerProblem)
            table.AddRow(Markup.Escape(p.Id), Num(p.Samples), Pct(p.PassAt1), p.MajorityCorrect ? "1" : "0",
                Markup.Escape(Shorten(p.MajorityAnswer ?? "-")), Num(p.MeanReasoningTokens), Num(p.MeanAnswerTokens), Pct(p.TruncatedShare));
        table.AddEmptyRow();
        table.AddRow("[bold]overall[/]", Num(score.Samples), $"[bold]{Pct(score.PassAt1)}[/]", $"[bold]{Pct(score.MajorityAtN)}[/]", "",
            Num(score.MeanReasoningTokens), Num(score.MeanAnswerTokens), Pct(score.TruncatedShare));
        var console = Console(host, host.Out);
        // Redirected output has no width; Spectre would assume 80 columns and wrap ids. A file has room.
        if (!host.Terminal) console.Profile.Width = 160;
        console.Write(table);
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{score.Problems} problems, {score.Samples} samples, {score.GeneratedTokens} tokens, {score.Seconds:F1} s of per-sample time summed"));
    }

    private static string Num(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);
    private static string Pct(double v) => (100 * v).ToString("0.0", CultureInfo.InvariantCulture) + "%";
    private static string Shorten(string s) => s.Length <= 24 ? s : s[..23] + "…";
}

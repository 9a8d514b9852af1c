using System.Diagnostics;
using QwQ.Cuda.Generation;
using Spectre.Console;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Batch;

/// <summary>What a batch run has done so far.</summary>
internal sealed record BatchTotals(int Done, int Total, int Failed, long GeneratedTokens, TimeSpan Elapsed)
{
    public double TokensPerSecond => Elapsed > TimeSpan.Zero ? GeneratedTokens / Elapsed.TotalSeconds : 0;
}

/// <summary>Runs prompts through <see cref="QwqModel.GenerateBatchAsync"/>, appending each result as it finishes, under a progress bar.</summary>
internal static class BatchRun
{
    public static async Task<BatchTotals> RunAsync(CliHost host, QwqModel model, IReadOnlyList<BatchPrompt> prompts, BatchOutput output,
        bool showProgress, CancellationToken ct)
    {
        if (!showProgress || !host.Terminal) return await WriteAllAsync(model, prompts, output, null, ct);

        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(host.Error),
            Ansi = host.Colors ? AnsiSupport.Detect : AnsiSupport.No,
        });
        BatchTotals totals = null!;
        await console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask(Describe(new BatchTotals(0, prompts.Count, 0, 0, TimeSpan.Zero)), maxValue: Math.Max(1, prompts.Count));
                totals = await WriteAllAsync(model, prompts, output, t =>
                {
                    task.Value = t.Done;
                    task.Description = Describe(t);
                }, ct);
            });
        return totals;
    }

    /// <summary>The loop itself: every result is on disk before the next is awaited.</summary>
    internal static async Task<BatchTotals> WriteAllAsync(QwqModel model, IReadOnlyList<BatchPrompt> prompts, BatchOutput output,
        Action<BatchTotals>? onResult, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        var totals = new BatchTotals(0, prompts.Count, 0, 0, TimeSpan.Zero);
        await foreach (var r in model.GenerateBatchAsync(prompts, ct))
        {
            output.Write(r);
            totals = totals with
            {
                Done = totals.Done + 1,
                Failed = totals.Failed + (r.Error is null ? 0 : 1),
                GeneratedTokens = totals.GeneratedTokens + (r.Result?.Usage.GeneratedTokens ?? 0),
                Elapsed = Stopwatch.GetElapsedTime(start),
            };
            onResult?.Invoke(totals);
        }
        return totals with { Elapsed = Stopwatch.GetElapsedTime(start) };
    }

    private static string Describe(BatchTotals t) => Invariant($"{t.Done}/{t.Total} prompts, {t.TokensPerSecond:N0} tok/s");
}

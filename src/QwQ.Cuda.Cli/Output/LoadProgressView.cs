using QwQ.Cuda.Engine;
using Spectre.Console;

namespace QwQ.Cuda.Cli.Output;

/// <summary>Loads the model under a Spectre progress bar on stderr (a terminal only; otherwise silently).</summary>
internal static class LoadProgressView
{
    public static async Task<QwqModel> LoadAsync(CliHost host, string? model, QwqModelOptions options, bool showProgress, CancellationToken ct)
    {
        if (!showProgress || !host.Terminal)
            return await QwqModel.LoadAsync(model, options, null, ct);

        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(host.Error),
            Ansi = host.Colors ? AnsiSupport.Detect : AnsiSupport.No,
        });
        QwqModel? loaded = null;
        await console.Progress()
            .AutoClear(true)
            .HideCompleted(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask("Loading", maxValue: 1);
                var progress = new SyncProgress(p =>
                {
                    task.Description = p.Tensor is null ? p.Stage : $"{p.Stage} {Shorten(p.Tensor)}";
                    task.MaxValue = Math.Max(1, p.BytesTotal);
                    task.Value = p.BytesDone;
                });
                loaded = await QwqModel.LoadAsync(model, options, progress, ct);
                task.Value = task.MaxValue;
            });
        return loaded!;
    }

    private static string Shorten(string tensor) => Markup.Escape(tensor.Length <= 40 ? tensor : "…" + tensor[^39..]);

    /// <summary>Reports on the loading thread (Progress&lt;T&gt; would post out of order to the thread pool).</summary>
    private sealed class SyncProgress(Action<LoadProgress> report) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => report(value);
    }
}

using System.CommandLine;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq chat</c>: a multi-turn REPL. The conversation is kept as the chat template wants it (earlier answers
/// without their reasoning), and the session reuses its KV cache for the part of the prompt that did not change.
/// Commands: /reset (new conversation), /exit (or end of input). Ctrl+C stops the current answer; the question and
/// the answer so far stay in the conversation, and the REPL says so.
/// </summary>
internal static class ChatCommand
{
    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions();
        var sampling = new SamplingCliOptions();
        var output = new OutputCliOptions();
        var system = new Option<string?>("--system") { Description = "A system message for the conversation", HelpName = "TEXT" };

        var command = new Command("chat", "Chat with the model (multi-turn; /reset starts over, /exit quits)");
        source.AddTo(command);
        command.Add(system);
        sampling.AddTo(command);
        output.AddTo(command);
        command.SetAction((p, ct) => RunAsync(host, p, source, sampling, output, system, ct));
        return command;
    }

    private static async Task<int> RunAsync(CliHost host, ParseResult p, ModelSourceOptions source, SamplingCliOptions sampling,
        OutputCliOptions output, Option<string?> systemOption, CancellationToken ct)
    {
        var (model, _) = source.Source(p);
        var modelOptions = source.Bind(p);
        sampling.Bind(p, Sampling.SamplingOptions.FromGenerationConfig());
        bool json = p.GetValue(output.Json);
        bool hideReasoning = p.GetValue(output.HideReasoning);

        QwqModel qwq;
        try
        {
            qwq = await LoadProgressView.LoadAsync(host, model, modelOptions, !p.GetValue(output.NoProgress) && !json, host.BeginOperation(ct));
        }
        finally
        {
            host.EndOperation();
        }

        using (qwq)
        {
            GenerateCommand.ReportWarnings(host, qwq, json);
            var options = sampling.Bind(p, qwq.GenerationDefaults);
            using var session = qwq.CreateSession();
            session.SystemPrompt = p.GetValue(systemOption);
            if (!json)
                host.Error.WriteLine(host.Dim(Invariant($"{qwq.Backend.DeviceDescription} · context {session.Capacity:N0} tokens · /reset starts over, /exit quits")));

            while (!ct.IsCancellationRequested)
            {
                host.Out.Flush();
                // Only for someone typing, and on stderr as Python's REPL does: stdout (`> answers.txt`) holds the answers alone.
                if (!json && host.InteractiveInput)
                {
                    host.Error.Write(host.Bold("> "));
                    host.Error.Flush();
                }
                string? line = await host.In.ReadLineAsync(ct);
                if (line is null) break;
                line = line.Trim();
                if (line.Length == 0) continue;
                if (line is "/exit" or "/quit") break;
                if (line == "/reset")
                {
                    session.Reset();
                    if (!json) host.Error.WriteLine(host.Dim("(new conversation)"));
                    continue;
                }

                var writer = new UpdateWriter(host, qwq.Backend, json, hideReasoning);
                var token = host.BeginOperation(ct);
                try
                {
                    FinishReason? finish = null;
                    await foreach (var update in session.StreamAsync(line, options, token))
                    {
                        writer.Write(update);
                        if (update.Result is { } r) finish = r.FinishReason;
                    }
                    if (finish == FinishReason.Cancelled && !json)
                        host.Error.WriteLine(host.Dim("(stopped: your message and the answer so far stay in the conversation; /reset starts over)"));
                }
                catch (OptionException e)
                {
                    // E.g. the conversation outgrew the context: say so and keep the REPL (the turn was not added).
                    host.Error.WriteLine(host.Red("error: ") + e.Message + " (/reset starts a new conversation)");
                }
                finally
                {
                    host.EndOperation();
                }
            }
            return ExitCodes.Ok;
        }
    }
}

using System.CommandLine;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;

namespace QwQ.Cuda.Cli.Commands;

/// <summary><c>qwq generate</c>: one prompt through the chat template, streamed, then a stats line.</summary>
internal static class GenerateCommand
{
    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions();
        var sampling = new SamplingCliOptions();
        var output = new OutputCliOptions();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "The user message ('-' reads it from standard input)", HelpName = "TEXT" };
        var file = new Option<string?>("--file", "-f") { Description = "Read the user message from this file (as llama.cpp's -f)", HelpName = "FILE" };
        var system = new Option<string?>("--system") { Description = "A system message placed before the prompt", HelpName = "TEXT" };

        var command = new Command("generate", "Generate an answer to one prompt (the chat template is applied; output is streamed)");
        source.AddTo(command);
        command.Add(prompt);
        command.Add(file);
        command.Add(system);
        sampling.AddTo(command);
        output.AddTo(command);
        command.SetAction((p, ct) => RunAsync(host, p, source, sampling, output, prompt, file, system, ct));
        return command;
    }

    private static async Task<int> RunAsync(CliHost host, ParseResult p, ModelSourceOptions source, SamplingCliOptions sampling,
        OutputCliOptions output, Option<string?> promptOption, Option<string?> fileOption, Option<string?> systemOption, CancellationToken ct)
    {
        // Everything that can be checked without the model is checked before a possibly long load.
        string text = (p.GetValue(promptOption), p.GetValue(fileOption)) switch
        {
            (not null, not null) => throw new OptionException("give either --prompt or --file, not both"),
            (null, null) => throw new OptionException("no prompt: pass --prompt \"...\", --file FILE, or --prompt - to read standard input"),
            (null, string path) => File.Exists(path)
                ? await File.ReadAllTextAsync(path, ct)
                : throw new QwqException($"The prompt file '{path}' does not exist."),
            ("-", null) => await host.In.ReadToEndAsync(ct),
            (string s, null) => s,
        };
        if (string.IsNullOrWhiteSpace(text))
            throw new OptionException("the prompt is empty: pass --prompt with some text");
        var (model, _) = source.Source(p);
        var modelOptions = source.Bind(p);
        sampling.Bind(p, Sampling.SamplingOptions.FromGenerationConfig());
        bool json = p.GetValue(output.Json);

        var token = host.BeginOperation(ct);
        try
        {
            using var qwq = await LoadProgressView.LoadAsync(host, model, modelOptions, !p.GetValue(output.NoProgress) && !json, token);
            ReportWarnings(host, qwq, json);
            var options = sampling.Bind(p, qwq.GenerationDefaults);
            using var session = qwq.CreateSession();
            session.SystemPrompt = p.GetValue(systemOption);
            var writer = new UpdateWriter(host, qwq.Config, json, p.GetValue(output.HideReasoning));
            FinishReason? finish = null;
            await foreach (var update in session.StreamAsync(text, options, token))
            {
                writer.Write(update);
                if (update.Result is { } r) finish = r.FinishReason;
            }
            return finish == FinishReason.Cancelled ? ExitCodes.Cancelled : ExitCodes.Ok;
        }
        finally
        {
            host.EndOperation();
        }
    }

    internal static void ReportWarnings(CliHost host, QwqModel model, bool json)
    {
        if (json) return;
        foreach (var warning in model.Warnings)
            host.Error.WriteLine(host.Dim("warning: " + warning));
    }
}

using System.CommandLine;
using QwQ.Cuda.Cli.Batch;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Evaluation;
using QwQ.Cuda.Generation;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq generate</c>: one prompt through the chat template, streamed, then a stats line; or, with --input, every
/// prompt of a JSONL file through one model load, each result appended to --output as it finishes.
/// </summary>
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
        var batch = new BatchOptions();

        var command = new Command("generate", "Generate an answer to one prompt (the chat template is applied; output is streamed)");
        source.AddTo(command);
        command.Add(prompt);
        command.Add(file);
        command.Add(system);
        batch.AddTo(command);
        sampling.AddTo(command);
        output.AddTo(command);
        command.SetAction((p, ct) => p.GetValue(batch.Input) is not null || p.GetValue(batch.Output) is not null
            ? RunBatchAsync(host, p, source, sampling, output, batch, prompt, file, system, ct)
            : RunAsync(host, p, source, sampling, output, prompt, file, system, ct));
        return command;
    }

    private static async Task<int> RunAsync(CliHost host, ParseResult p, ModelSourceOptions source, SamplingCliOptions sampling,
        OutputCliOptions output, Option<string?> promptOption, Option<string?> fileOption, Option<string?> systemOption, CancellationToken ct)
    {
        // Everything that can be checked without the model is checked before a possibly long load.
        string? file = p.GetValue(fileOption), prompt = p.GetValue(promptOption);
        string text = (prompt, file) switch
        {
            (not null, not null) => throw new OptionException("give either --prompt or --file, not both"),
            (null, null) => throw new OptionException("no prompt: pass --prompt \"...\", --file FILE, or --prompt - to read standard input"),
            (null, string path) => Directory.Exists(path)
                ? throw new QwqException($"The prompt file '{path}' is a directory; pass a text file holding the prompt.")
                : File.Exists(path)
                ? await File.ReadAllTextAsync(path, ct)
                : throw new QwqException($"The prompt file '{path}' does not exist."),
            ("-", null) => await host.In.ReadToEndAsync(ct),
            (string s, null) => s,
        };
        // The message names where the prompt came from: the user may not know the file or the pipe was empty.
        if (string.IsNullOrWhiteSpace(text))
            throw new OptionException(file is not null ? $"the prompt file '{file}' is empty: write the prompt in it, or pass --prompt \"...\""
                : prompt == "-" ? "standard input is empty: pipe the prompt in (echo \"...\" | qwq generate --prompt - ...), or pass --prompt \"...\""
                : "the prompt is empty: pass --prompt with some text");
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
            var writer = new UpdateWriter(host, qwq.Backend, json, p.GetValue(output.HideReasoning));
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

    private sealed class BatchOptions
    {
        public readonly Option<string?> Input = new("--input", "-i")
        {
            Description = "JSONL of prompts, one per line: {\"id\": \"..\", \"prompt\": \"..\"} or {\"id\": \"..\", \"messages\": [{\"role\": \"user\", \"content\": \"..\"}]}, " +
                "optionally with max_tokens, temperature, top_p, top_k, seed",
            HelpName = "FILE",
        };
        public readonly Option<string?> Output = new("--output", "-o")
        {
            Description = "JSONL results (id, text, reasoning, answer, prompt_tokens, completion_tokens, finish_reason, seconds), appended as each finishes",
            HelpName = "FILE",
        };
        public readonly Option<bool> Resume = new("--resume") { Description = "Skip the ids already in --output and append the rest" };

        public void AddTo(Command command)
        {
            command.Add(Input);
            command.Add(Output);
            command.Add(Resume);
        }
    }

    private static async Task<int> RunBatchAsync(CliHost host, ParseResult p, ModelSourceOptions source, SamplingCliOptions sampling,
        OutputCliOptions output, BatchOptions batch, Option<string?> promptOption, Option<string?> fileOption, Option<string?> systemOption,
        CancellationToken ct)
    {
        string input = p.GetValue(batch.Input) ?? throw new OptionException("--output needs --input FILE (the prompts, one JSON object per line)");
        string path = p.GetValue(batch.Output) ?? throw new OptionException("--input needs --output FILE (where the results go, one JSON object per line)");
        if (p.GetValue(promptOption) is not null || p.GetValue(fileOption) is not null)
            throw new OptionException("give either --prompt/--file or --input, not both");
        if (!File.Exists(input)) throw new OptionException($"--input {input} does not exist");
        bool resume = p.GetValue(batch.Resume);

        // The whole input is checked before a possibly long load: a typo on line 900 should not cost a model load.
        List<InputLine> lines;
        using (var reader = new StreamReader(input)) lines = BatchJsonl.ReadInput(reader, input);
        var (model, _) = source.Source(p);
        var modelOptions = source.Bind(p);
        sampling.Bind(p, Sampling.SamplingOptions.FromGenerationConfig());
        // So is --output, opened as eval opens --out: held by this run alone until it ends (or refused naming it).
        using var outputFile = ResultsFileStream.Open(path, "--output");
        if (!resume && outputFile.Length > 0)
            throw new OptionException($"--output {path} already has results: pass --resume to skip their ids and append, or choose another file");
        bool repaired = false;
        var done = resume ? BatchJsonl.ReadDoneIdsAndRepair(outputFile, path, out repaired) : [];
        var todo = lines.Where(l => !done.Contains(l.Id)).ToList();
        bool json = p.GetValue(output.Json), progress = !p.GetValue(output.NoProgress) && !json;
        if (resume && !json)
        {
            if (repaired) host.Error.WriteLine(host.Dim($"warning: {path} ended in an incomplete line (an interrupted write); it was removed"));
            host.Error.WriteLine(host.Dim($"resuming: {lines.Count - todo.Count} of {lines.Count} prompts already in {path}"));
        }
        if (todo.Count == 0) return ExitCodes.Ok;

        var token = host.BeginOperation(ct);
        try
        {
            using var qwq = await LoadProgressView.LoadAsync(host, model, modelOptions, progress, token);
            ReportWarnings(host, qwq, json);
            var options = sampling.Bind(p, qwq.GenerationDefaults);
            string? system = p.GetValue(systemOption);
            using var writer = new BatchOutput(outputFile);
            var totals = await BatchRun.RunAsync(host, qwq, [.. todo.Select(l => l.ToPrompt(options, system))], writer, progress, token);
            if (!json)
                host.Error.WriteLine(host.Dim(Invariant(
                    $"{totals.Done} results appended to {path}; {totals.GeneratedTokens} tokens in {totals.Elapsed.TotalSeconds:F1} s ({totals.TokensPerSecond:F1} tok/s)")));
            if (totals.Failed > 0)
                throw new QwqException($"{totals.Failed} of {totals.Done} prompts failed; their lines in {path} say why (\"error\"). Remove those lines and run again with --resume to retry them");
            return ExitCodes.Ok;
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

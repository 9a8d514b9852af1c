using System.CommandLine;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Server;
using static System.FormattableString;

namespace QwQ.Cuda.Cli.Commands;

/// <summary><c>qwq serve</c>: the OpenAI-compatible HTTP server (<see cref="QwqServer"/>) until Ctrl+C.</summary>
internal static class ServeCommand
{
    /// <summary>Read when --api-key is not given, so the key need not appear in the process list.</summary>
    public const string ApiKeyVariable = "QWQ_API_KEY";

    public static Command Create(CliHost host)
    {
        var source = new ModelSourceOptions();
        var defaults = new ServerOptions();
        var hostOption = new Option<string>("--host")
        {
            Description = "IP address to listen on (0.0.0.0: every interface)",
            DefaultValueFactory = _ => defaults.Host,
            HelpName = "IP",
        };
        var port = TypedOptions.Integer("--port", defaults.Port, "TCP port (0: any free one)");
        var apiKey = new Option<string?>("--api-key")
        {
            Description = $"Require 'Authorization: Bearer KEY' on /v1/* (default: ${ApiKeyVariable}; unset: no key)",
            HelpName = "KEY",
        };
        var maxQueue = TypedOptions.Integer("--max-queue", defaults.MaxQueue,
            "Generation requests admitted at once, running or waiting; more are answered 429 with Retry-After");
        var name = new Option<string?>("--served-model-name")
        {
            Description = "The model id /v1/models lists (default: the --model or --synthetic value)",
            HelpName = "NAME",
        };
        var noProgress = new Option<bool>("--no-progress") { Description = "No progress bar while loading" };

        var command = new Command("serve", "Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics)");
        source.AddTo(command);
        command.Add(hostOption);
        command.Add(port);
        command.Add(apiKey);
        command.Add(maxQueue);
        command.Add(name);
        command.Add(noProgress);
        command.SetAction(async (p, ct) =>
        {
            var (model, synthetic) = source.Source(p);
            var options = new ServerOptions
            {
                Host = p.GetValue(hostOption)!,
                Port = p.GetValue(port),
                ApiKey = p.GetValue(apiKey) ?? NullIfEmpty(host.Environment(ApiKeyVariable)),
                MaxQueue = p.GetValue(maxQueue),
                ModelName = p.GetValue(name) ?? model ?? synthetic!,
            };
            options.Validate(); // before a possibly long load
            var modelOptions = source.Bind(p);

            var token = host.BeginOperation(ct);
            try
            {
                using var qwq = await LoadProgressView.LoadAsync(host, model, modelOptions, !p.GetValue(noProgress), token);
                GenerateCommand.ReportWarnings(host, qwq, json: false);
                await using var server = await QwqServer.StartAsync(qwq, options with { MaxContext = modelOptions.Engine.MaxContext }, token);
                host.Out.WriteLine(Invariant($"serving {options.ModelName} at {server.BaseAddress} (OpenAI API under /v1; {qwq.Backend.DeviceDescription}); Ctrl+C stops"));
                host.Out.Flush();
                await server.WaitForShutdownAsync(token);
                return ExitCodes.Ok;
            }
            finally
            {
                host.EndOperation();
            }
        });
        return command;
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;
}

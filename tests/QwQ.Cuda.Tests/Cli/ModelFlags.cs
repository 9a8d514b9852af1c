using System.CommandLine;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>The model-source flags (what every command that loads a model takes) on a bare command, for binding tests.</summary>
internal sealed class ModelFlags
{
    public ModelSourceOptions Options { get; } = new();
    public Command Command { get; } = new("x");

    public ModelFlags() => Options.AddTo(Command);

    public ParseResult Parse(params string[] args) => Command.Parse(args);

    /// <summary>The engine options <c>--synthetic qwq-32b</c> and <paramref name="args"/> bind to; they must parse.</summary>
    public static EngineOptions Engine(params string[] args)
    {
        var flags = new ModelFlags();
        var p = flags.Parse(["--synthetic", "qwq-32b", .. args]);
        Assert.That(p.Errors, Is.Empty, string.Join("; ", p.Errors.Select(e => e.Message)));
        return flags.Options.Bind(p).Engine;
    }

    /// <summary>The parse errors of <c>--synthetic qwq-32b</c> and <paramref name="args"/>.</summary>
    public static IEnumerable<string> Errors(params string[] args) =>
        new ModelFlags().Parse(["--synthetic", "qwq-32b", .. args]).Errors.Select(e => e.Message);
}

using System.CommandLine;
using QwQ.Cuda.Cli.Commands;

namespace QwQ.Cuda.Cli;

/// <summary>Builds the <c>qwq</c> command tree.</summary>
internal static class CliApp
{
    public static RootCommand CreateRootCommand(CliHost host)
    {
        var root = new RootCommand("qwq — run QwQ-32B on an NVIDIA GPU (CUDA), or small Qwen2 models on the CPU reference");
        root.Add(new Option<bool>("--verbose") { Description = "Show stack traces on errors", Recursive = true });
        root.Add(GenerateCommand.Create(host));
        root.Add(ChatCommand.Create(host));
        root.Add(InfoCommand.Create(host));
        root.Add(TokenizeCommand.Create(host.Environment));
        root.Add(RenderCommand.Create(host.Environment));
        root.Add(EvalCommand.Create(host));
        root.Add(BenchCommand.Create(host));
        root.Add(ServeCommand.Create(host));
        // Bare `qwq` shows what it can do rather than an error about a missing command.
        root.SetAction(p => new System.CommandLine.Help.HelpAction().Invoke(p));
        return root;
    }
}

using System.CommandLine;
using System.Reflection;
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
        root.Add(TokenizeCommand.Create());
        root.Add(RenderCommand.Create());
        // LEAD: BenchCommand is registered through AddOptional so the build never depends on it; once
        // Commands/BenchCommand.cs exists this line may become `root.Add(BenchCommand.Create());`.
        AddOptional(root, "QwQ.Cuda.Cli.Commands.BenchCommand");
        return root;
    }

    /// <summary>Adds <c>{type}.Create()</c> when that command exists in this assembly (other engineers' commands).</summary>
    private static void AddOptional(RootCommand root, string typeName)
    {
        var create = typeof(CliApp).Assembly.GetType(typeName)?.GetMethod("Create", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static, Type.EmptyTypes);
        if (create?.Invoke(null, null) is Command command) root.Add(command);
    }
}

using System.CommandLine;
using System.Globalization;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Cli;

/// <summary>Exit codes of <c>qwq</c>.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>An error the user can act on (missing file, bad config, no GPU, out of memory).</summary>
    public const int Error = 1;
    /// <summary>Bad command line or option value.</summary>
    public const int Usage = 2;
    /// <summary>A bug: an exception that is not a <see cref="QwqException"/>.</summary>
    public const int Internal = 3;
    /// <summary>Interrupted (Ctrl+C), as shells report SIGINT.</summary>
    public const int Cancelled = 130;
    /// <summary>Standard output's reader went away (<c>| head</c>), as shells report a process ended by SIGPIPE.</summary>
    public const int BrokenPipe = 141;
}

public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        Console.OutputEncoding = System.Text.Encoding.UTF8;
        bool terminal = !Console.IsOutputRedirected && !Console.IsErrorRedirected;
        var host = new CliHost(StandardOutput.Open(), Console.Error, Console.In, terminal, interactiveInput: !Console.IsInputRedirected);
        using var process = new CancellationTokenSource();
        // Ctrl+C cancels the running load or generation (the chat REPL then continues); with nothing running it exits.
        Console.CancelKeyPress += (_, e) =>
        {
            if (host.CancelOperation()) e.Cancel = true;
            else if (!process.IsCancellationRequested) { e.Cancel = true; process.Cancel(); }
        };
        return await RunAsync(args, host, process.Token);
    }

    /// <summary>The whole CLI with captured writers (tests).</summary>
    internal static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, TextReader? stdin = null, CancellationToken cancellationToken = default) =>
        RunAsync(args, new CliHost(stdout, stderr, stdin), cancellationToken);

    internal static async Task<int> RunAsync(string[] args, CliHost host, CancellationToken cancellationToken)
    {
        host.Verbose = args.Contains("--verbose");
        // Numbers are read and written the same under every locale: scripts parse the output, and messages quote
        // values as the user typed them (0.5, not 0,5). CurrentCulture flows with the async context, so this holds
        // for the work this call starts (loading, generation threads) and ends with it; the caller's is untouched.
        CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
        try
        {
            RootCommand root = CliApp.CreateRootCommand(host);
            ParseResult parsed = root.Parse(args);
            if (parsed.Errors.Count > 0 && !IsHelpRequest(parsed))
            {
                // One message: the first problem (later ones are usually consequences of it).
                host.Error.WriteLine(host.Red("error: ") + parsed.Errors[0].Message);
                host.Error.WriteLine($"Run '{CommandPath(parsed.CommandResult)} --help' for usage.");
                return ExitCodes.Usage;
            }
            var config = new InvocationConfiguration
            {
                Output = host.Out,
                Error = host.Error,
                EnableDefaultExceptionHandler = false,
                ProcessTerminationTimeout = null, // Program.Main handles Ctrl+C itself
            };
            int code = await parsed.InvokeAsync(config, cancellationToken);
            host.Out.Flush(); // inside the try: a stdout that fails only now is reported like any other failed write
            return code;
        }
        catch (Exception e)
        {
            return Report(Unwrap(e), host);
        }
        finally
        {
            host.Error.Flush();
        }
    }

    /// <summary>The one place errors become messages and exit codes.</summary>
    internal static int Report(Exception e, CliHost host)
    {
        // A partly written line of streamed output should not swallow the message (unless stdout is what failed).
        try { host.Out.Flush(); }
        catch (OutputClosedException) { }
        switch (e)
        {
            case OutputClosedException { BrokenPipe: true }:
                // `qwq generate ... | head`: the reader has what it wanted; stop quietly, as a program ended by SIGPIPE does.
                return ExitCodes.BrokenPipe;
            case OperationCanceledException:
                host.Error.WriteLine("cancelled");
                return ExitCodes.Cancelled;
            case OptionException:
                host.Error.WriteLine(host.Red("error: ") + e.Message);
                if (host.Verbose) host.Error.WriteLine(e);
                return ExitCodes.Usage;
            case QwqException:
                host.Error.WriteLine(host.Red("error: ") + e.Message);
                if (host.Verbose) host.Error.WriteLine(e);
                return ExitCodes.Error;
            default:
                host.Error.WriteLine(host.Red("internal error: ") + $"{e.GetType().Name}: {e.Message}");
                host.Error.WriteLine(host.Verbose ? e.ToString() : "Run again with --verbose for the stack trace, and please report it.");
                return ExitCodes.Internal;
        }
    }

    private static Exception Unwrap(Exception e)
    {
        while (true)
        {
            switch (e)
            {
                case AggregateException { InnerExceptions.Count: 1 } a: e = a.InnerExceptions[0]; continue;
                case System.Reflection.TargetInvocationException { InnerException: { } inner }: e = inner; continue;
                case TypeInitializationException { InnerException: QwqException inner }: e = inner; continue;
                default: return e;
            }
        }
    }

    /// <summary>The command as typed, from the root: "qwq", "qwq generate", "qwq bench compare".</summary>
    private static string CommandPath(System.CommandLine.Parsing.CommandResult result)
    {
        var names = new List<string>();
        for (var r = result; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            names.Add(r.Command is RootCommand ? "qwq" : r.Command.Name);
        names.Reverse();
        return string.Join(' ', names);
    }

    private static bool IsHelpRequest(ParseResult parsed) =>
        parsed.Action is System.CommandLine.Help.HelpAction;
}

using QwQ.Cuda.Cli.Output;

namespace QwQ.Cuda.Cli;

/// <summary>
/// What a command writes to and reads from, so the whole CLI runs under tests with captured writers.
/// Colors and the progress bar are on only for a real terminal.
/// </summary>
internal sealed class CliHost
{
    private CancellationTokenSource _operation = new();

    public CliHost(TextWriter stdout, TextWriter stderr, TextReader? stdin = null, bool terminal = false, Func<string, string?>? environment = null,
        bool interactiveInput = false)
    {
        InteractiveInput = interactiveInput;
        // Every write to stdout goes through StandardOutput, so a closed or full stdout stops the command cleanly.
        Out = stdout as StandardOutput ?? new StandardOutput(stdout);
        Error = stderr;
        In = stdin ?? TextReader.Null;
        Environment = environment ?? System.Environment.GetEnvironmentVariable;
        Terminal = terminal;
        Colors = terminal && string.IsNullOrEmpty(Environment("NO_COLOR"));
    }

    public TextWriter Out { get; }
    public TextWriter Error { get; }
    public TextReader In { get; }
    public Func<string, string?> Environment { get; }

    /// <summary>stdout and stderr are an interactive terminal (not redirected).</summary>
    public bool Terminal { get; }

    /// <summary>Standard input is a terminal: someone types there, so a REPL prompts them (not when it reads a pipe or file).</summary>
    public bool InteractiveInput { get; }

    /// <summary>Write ANSI styles (terminal, and NO_COLOR unset).</summary>
    public bool Colors { get; }

    /// <summary>Set once parsing has seen --verbose: errors then carry stack traces.</summary>
    public bool Verbose { get; set; }

    /// <summary>True while a cancellable operation (load, generation) runs; Ctrl+C cancels it instead of exiting.</summary>
    public bool OperationRunning { get; private set; }

    /// <summary>The token of the current operation; Ctrl+C (see <see cref="CancelOperation"/>) fires it.</summary>
    public CancellationToken BeginOperation(CancellationToken outer)
    {
        var next = CancellationTokenSource.CreateLinkedTokenSource(outer);
        Interlocked.Exchange(ref _operation, next).Dispose();
        OperationRunning = true;
        return next.Token;
    }

    public void EndOperation() => OperationRunning = false;

    /// <summary>Cancels the running operation; returns false when none was running (the caller may then exit).</summary>
    public bool CancelOperation()
    {
        if (!OperationRunning) return false;
        try { Volatile.Read(ref _operation).Cancel(); } catch (ObjectDisposedException) { }
        return true;
    }

    public string Dim(string text) => Colors ? $"\u001b[2m{text}\u001b[22m" : text;
    public string Bold(string text) => Colors ? $"\u001b[1m{text}\u001b[22m" : text;
    public string Red(string text) => Colors ? $"\u001b[31m{text}\u001b[39m" : text;
    public string DimStart => Colors ? "\u001b[2m" : "";
    public string DimEnd => Colors ? "\u001b[22m" : "";
}

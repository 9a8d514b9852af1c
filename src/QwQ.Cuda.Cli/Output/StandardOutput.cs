using System.Text;
using Microsoft.Win32.SafeHandles;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Cli.Output;

/// <summary>Standard output could not be written (the reader went away, the disk is full): the command stops.</summary>
internal sealed class OutputClosedException(string message, bool brokenPipe, Exception inner) : QwqException(message, inner)
{
    /// <summary>The reader closed its end (<c>qwq generate ... | head</c>): expected, so reported quietly.</summary>
    public bool BrokenPipe { get; } = brokenPipe;
}

/// <summary>
/// Standard output for the CLI. The first failed write throws <see cref="OutputClosedException"/>, which stops the
/// command (a generation is cancelled as the stream is left); later writes and flushes do nothing, so reporting and
/// cleanup never fail on the same broken stream.
/// </summary>
internal sealed class StandardOutput(TextWriter inner) : TextWriter
{
    private const int EPipe = 32;                          // Linux and macOS errno, which .NET reports as the HResult
    private const int WindowsBrokenPipe = unchecked((int)0x8007006D);
    private const int WindowsNoData = unchecked((int)0x800700E8);
    private bool _failed;

    /// <summary>
    /// The process's stdout. .NET's console stream pretends writes to a closed pipe succeeded (it ignores EPIPE), so
    /// <c>qwq generate ... | head -c 10</c> generated to the end; a pipe is written through a plain FileStream instead,
    /// which reports it. Other targets keep the console stream: a FileStream on a shared file (<c>&gt; log 2&gt;&amp;1</c>)
    /// would write at its own offset, over stderr's lines.
    /// </summary>
    public static TextWriter Open()
    {
        if (OperatingSystem.IsWindows() || !Console.IsOutputRedirected) return Console.Out;
        var stream = new FileStream(new SafeFileHandle(1, ownsHandle: false), FileAccess.Write, bufferSize: 0);
        if (stream.CanSeek)
        {
            stream.Dispose();
            return Console.Out;
        }
        return new StreamWriter(stream, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false)) { AutoFlush = true };
    }

    public override Encoding Encoding => inner.Encoding;

    public override IFormatProvider FormatProvider => inner.FormatProvider;

    [System.Diagnostics.CodeAnalysis.AllowNull]
    public override string NewLine { get => inner.NewLine; set => inner.NewLine = value; }

    public override void Write(char value) => Guard(() => inner.Write(value));
    public override void Write(string? value) => Guard(() => inner.Write(value));
    public override void Write(char[] buffer, int index, int count) => Guard(() => inner.Write(buffer, index, count));
    public override void Write(ReadOnlySpan<char> buffer)
    {
        if (_failed) return;
        try { inner.Write(buffer); }
        catch (IOException e) { throw Failed(e); }
    }
    public override void WriteLine(string? value) => Guard(() => inner.WriteLine(value));
    public override void Flush() => Guard(inner.Flush);

    private void Guard(Action write)
    {
        if (_failed) return;
        try { write(); }
        catch (IOException e) { throw Failed(e); }
    }

    private OutputClosedException Failed(IOException e)
    {
        _failed = true;
        bool pipe = e.HResult is EPipe or WindowsBrokenPipe or WindowsNoData;
        return new OutputClosedException($"cannot write to standard output: {e.Message}", pipe, e);
    }
}

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Evaluation;

/// <summary>Opens a results file that one run appends to as it goes (<c>qwq eval --out</c>, <c>qwq generate --output</c>).</summary>
internal static class ResultsFileStream
{
    /// <summary>
    /// Opens <paramref name="path"/> for reading and writing, creating it and its folder, held by this run alone: a second
    /// run on the same file would interleave its lines with this one's. On Unix .NET enforces FileShare.None between .NET
    /// processes with an exclusive flock, which the OS drops when the process ends (kill -9 included), so an interrupted
    /// run never leaves a lock behind; FileShare.Read took a shared flock that a second writer shared. Windows already
    /// refuses a second writer under FileShare.Read, and there it keeps the file readable by other programs.
    /// Every failure is a <see cref="QwqException"/> naming <paramref name="option"/>, so it is found before a model loads.
    /// </summary>
    public static FileStream Open(string path, string option)
    {
        if (Directory.Exists(path))
            throw new QwqException($"{option} {path} is a directory; name the results file (for example {Path.Combine(path, "results.jsonl")}).");
        try
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, OperatingSystem.IsWindows() ? FileShare.Read : FileShare.None);
        }
        catch (IOException e) when (HeldByAnother(e))
        {
            throw new QwqException($"Another run is writing {option} {path}: wait for it to end (then --resume), or choose another {option}.", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // An unwritable place (/sys, no permission) or a path under a file.
            throw new QwqException($"{option} {path} cannot be written: {e.Message}", e);
        }
    }

    /// <summary>
    /// The file is held by another handle: .NET reports flock's EWOULDBLOCK as the HResult on Unix (11 on Linux, 35 on
    /// macOS), a sharing violation on Windows.
    /// </summary>
    public static bool HeldByAnother(IOException e) =>
        e.HResult == (OperatingSystem.IsWindows() ? unchecked((int)0x80070020) : OperatingSystem.IsLinux() ? 11 : 35);
}

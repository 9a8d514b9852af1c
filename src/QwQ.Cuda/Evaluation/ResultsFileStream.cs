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
    /// A file this call creates and nothing is written to (the model then failed to load, the run was cancelled at once)
    /// is removed when the stream is disposed, so a failed run leaves no empty results file behind.
    /// </summary>
    public static FileStream Open(string path, string option)
    {
        if (Directory.Exists(path))
            throw new QwqException($"{option} {path} is a directory; name the results file (for example {Path.Combine(path, "results.jsonl")}).");
        try
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            bool existed = File.Exists(path);
            return new RunFile(path, OperatingSystem.IsWindows() ? FileShare.Read : FileShare.None, created: !existed);
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

    /// <summary>The run's handle: removes the file at dispose if this run created it and wrote nothing.</summary>
    private sealed class RunFile(string path, FileShare share, bool created)
        : FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, share)
    {
        private bool _created = created;

        protected override void Dispose(bool disposing)
        {
            bool remove = disposing && _created && Length == 0;
            _created = false; // once: a StreamWriter over it disposes it too
            string? file = remove ? Name : null; // the full path the base opened (the constructor's path is the base's alone)
            // On Unix removed while the lock is held, so no other run can have opened it in between; Windows cannot
            // delete a file open without FileShare.Delete, so there it goes after the close.
            if (remove && !OperatingSystem.IsWindows()) TryDelete(file!);
            base.Dispose(disposing);
            if (remove && OperatingSystem.IsWindows()) TryDelete(file!);
        }

        private static void TryDelete(string path)
        {
            try { File.Delete(path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // an empty file left is harmless
        }
    }

    /// <summary>
    /// The file is held by another handle: .NET reports flock's EWOULDBLOCK as the HResult on Unix (11 on Linux, 35 on
    /// macOS), a sharing violation on Windows.
    /// </summary>
    public static bool HeldByAnother(IOException e) =>
        e.HResult == (OperatingSystem.IsWindows() ? unchecked((int)0x80070020) : OperatingSystem.IsLinux() ? 11 : 35);
}

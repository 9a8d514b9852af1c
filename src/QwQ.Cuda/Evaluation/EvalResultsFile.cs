using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Evaluation;

/// <summary>One finished sample: a line of the results file.</summary>
/// <param name="ReasoningTokens">Tokens before <c>&lt;/think&gt;</c> (all of them when the model never closed its reasoning).</param>
/// <param name="AnswerTokens">Tokens after <c>&lt;/think&gt;</c>, the end-of-sequence token included.</param>
/// <param name="TotalTokens">Every generated token (reasoning + <c>&lt;/think&gt;</c> + answer).</param>
/// <param name="FinishReason">As <see cref="Generation.FinishReason"/>, in snake case (end_of_sequence, max_tokens, ...).</param>
/// <param name="Seconds">Wall time of this sample's generation (prompt prefill included when it was not cached).</param>
public sealed record EvalSample(
    string Id, int Sample, ulong Seed, string Text, string? Answer, string Expected, bool Correct,
    int ReasoningTokens, int AnswerTokens, int TotalTokens, string FinishReason, double Seconds)
{
    /// <summary>The sample stopped at the token or context limit, not because the model finished.</summary>
    public bool Truncated => FinishReason is "max_tokens" or "max_context";
}

/// <summary>
/// The results file: JSON lines, one <see cref="EvalSample"/> per line, appended and flushed as each sample
/// finishes, so an interrupted run loses only the samples still running.
/// </summary>
public sealed class EvalResultsFile : IDisposable
{
    private readonly FileStream _stream;
    private readonly object _gate = new();

    private EvalResultsFile(FileStream stream, IReadOnlyList<EvalSample> existing)
    {
        _stream = stream;
        Existing = existing;
    }

    /// <summary>The samples already in the file when it was opened (with <c>resume</c>); empty otherwise.</summary>
    public IReadOnlyList<EvalSample> Existing { get; }

    public string Path => _stream.Name;

    /// <summary>
    /// Opens <paramref name="path"/> for appending. Without <paramref name="resume"/> an existing non-empty file is an
    /// error (a finished run is never overwritten by accident). With it, the finished samples are read back; a last
    /// line cut short by an interrupted write is removed so the file stays valid JSON lines.
    /// </summary>
    public static EvalResultsFile Open(string path, bool resume)
    {
        // Held before anything is read, so that a run another one is writing is refused as such, with or without --resume.
        var stream = ResultsFileStream.Open(path, "--out");
        try
        {
            bool exists = stream.Length > 0;
            if (exists && !resume)
                throw new QwqException($"The results file '{path}' already exists: pass --resume to continue that run, or choose another --out.");
            var existing = exists ? ReadAndRepair(stream, path) : [];
            stream.Seek(0, SeekOrigin.End);
            return new EvalResultsFile(stream, existing);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>Reads every sample in <paramref name="path"/> (scoring a finished run without generating).</summary>
    public static IReadOnlyList<EvalSample> Read(string path)
    {
        if (!File.Exists(path)) throw new QwqException($"The results file '{path}' does not exist.");
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        }
        catch (IOException e) when (ResultsFileStream.HeldByAnother(e))
        {
            // On Unix a run's exclusive lock keeps .NET readers out too (other programs, e.g. tail, are not stopped).
            throw new QwqException($"The results file '{path}' is being written by a run; read it when that run ends.", e);
        }
        using (stream) return ReadLines(stream, path, out _);
    }

    private static List<EvalSample> ReadAndRepair(FileStream stream, string path)
    {
        var samples = ReadLines(stream, path, out long validLength);
        if (validLength < stream.Length) stream.SetLength(validLength); // drop the torn last line
        return samples;
    }

    /// <summary>Parses complete lines; <paramref name="validLength"/> ends after the last complete one.</summary>
    private static List<EvalSample> ReadLines(Stream stream, string path, out long validLength)
    {
        stream.Seek(0, SeekOrigin.Begin);
        using var ms = new MemoryStream();
        stream.CopyTo(ms);
        byte[] bytes = ms.ToArray();
        var samples = new List<EvalSample>();
        var seen = new HashSet<(string, int)>();
        int start = 0, lineNo = 0;
        validLength = 0;
        while (start < bytes.Length)
        {
            int nl = Array.IndexOf(bytes, (byte)'\n', start);
            if (nl < 0) break; // a line without its newline was being written when the run stopped
            lineNo++;
            var line = bytes.AsSpan(start, nl - start);
            start = nl + 1;
            validLength = start;
            if (line.Trim((byte)' ').Trim((byte)'\r').IsEmpty) continue;
            EvalSample sample;
            try
            {
                sample = Parse(line);
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
            {
                throw new QwqException($"{path} line {lineNo} is not a result line ({e.Message}); fix or remove it, then run again.", e);
            }
            // The writer never repeats a pair; should a hand-edited file do so, the first one counts.
            if (seen.Add((sample.Id, sample.Sample))) samples.Add(sample);
        }
        return samples;
    }

    /// <summary>Appends <paramref name="sample"/> as one line and flushes it to disk. Safe from several threads.</summary>
    public void Append(EvalSample sample)
    {
        byte[] line = Serialize(sample);
        lock (_gate)
        {
            _stream.Write(line);
            _stream.Flush(flushToDisk: true);
        }
    }

    public void Dispose() => _stream.Dispose();

    internal static byte[] Serialize(EvalSample s)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("id", s.Id);
            w.WriteNumber("sample", s.Sample);
            w.WriteNumber("seed", s.Seed);
            w.WriteString("answer", s.Answer);
            w.WriteString("expected", s.Expected);
            w.WriteBoolean("correct", s.Correct);
            w.WriteNumber("reasoning_tokens", s.ReasoningTokens);
            w.WriteNumber("answer_tokens", s.AnswerTokens);
            w.WriteNumber("total_tokens", s.TotalTokens);
            w.WriteString("finish_reason", s.FinishReason);
            w.WriteNumber("seconds", Math.Round(s.Seconds, 3));
            w.WriteString("text", s.Text);
            w.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    internal static EvalSample Parse(ReadOnlySpan<byte> line)
    {
        var reader = new Utf8JsonReader(line);
        using var doc = JsonDocument.ParseValue(ref reader);
        var o = doc.RootElement;
        string? answer = o.GetProperty("answer").ValueKind == JsonValueKind.Null ? null : o.GetProperty("answer").GetString();
        return new EvalSample(
            o.GetProperty("id").GetString()!, o.GetProperty("sample").GetInt32(), o.GetProperty("seed").GetUInt64(),
            o.GetProperty("text").GetString()!, answer, o.GetProperty("expected").GetString()!, o.GetProperty("correct").GetBoolean(),
            o.GetProperty("reasoning_tokens").GetInt32(), o.GetProperty("answer_tokens").GetInt32(), o.GetProperty("total_tokens").GetInt32(),
            o.GetProperty("finish_reason").GetString()!, o.GetProperty("seconds").GetDouble());
    }

    /// <summary>The summary's path beside the results: <c>results.jsonl</c> → <c>results.summary.json</c>.</summary>
    public static string SummaryPath(string resultsPath)
    {
        string dir = System.IO.Path.GetDirectoryName(resultsPath) ?? "";
        return System.IO.Path.Combine(dir, System.IO.Path.GetFileNameWithoutExtension(resultsPath) + ".summary.json");
    }

    /// <summary>snake_case of an enum name (MaxTokens → max_tokens), as the results file writes finish reasons.</summary>
    public static string SnakeCase(string name)
    {
        var sb = new StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (char.IsUpper(name[i]) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(name[i]));
        }
        return sb.ToString();
    }
}

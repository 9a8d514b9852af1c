using System.Globalization;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Benchmarking;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;

namespace QwQ.Cuda.Cli.Output;

/// <summary>
/// Prints a generation's updates: as text (reasoning dimmed, or hidden; answer plain; a stats line at the end on
/// stderr), or as JSON lines (one object per update, then a "done" object) for scripts.
/// </summary>
internal sealed class UpdateWriter(CliHost host, long weightBytesPerToken, bool json, bool hideReasoning)
{
    /// <summary>A writer for <paramref name="backend"/>'s generations: its bandwidth figure counts the bytes that backend reads.</summary>
    public UpdateWriter(CliHost host, IModelBackend backend, bool json, bool hideReasoning)
        : this(host, DecodeWeightBytes(backend), json, hideReasoning) { }

    private readonly ArrayBufferWriterStream _buffer = new();

    // As --output, eval's files and the server write text: "<", accents and CJK as themselves, not \u escapes, so a
    // terminal watching the stream can read it (control characters are still escaped).
    private static readonly JsonWriterOptions ReadableJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    private GenerationUpdateKind? _last;
    private bool _atLineStart = true;

    public void Write(in GenerationUpdate update)
    {
        if (json) { WriteJson(update); return; }
        switch (update.Kind)
        {
            case GenerationUpdateKind.Reasoning:
                if (hideReasoning) return;
                if (_last is not GenerationUpdateKind.Reasoning) host.Out.Write(host.DimStart);
                WriteText(update.Text);
                break;
            case GenerationUpdateKind.Answer:
                EndReasoning();
                WriteText(update.Text);
                break;
            case GenerationUpdateKind.ToolCall:
                EndReasoning();
                if (!_atLineStart) host.Out.WriteLine();
                host.Out.WriteLine(host.Bold($"[tool call] {update.ToolCall!.Name}") + " " + update.ToolCall.ArgumentsJson);
                _atLineStart = true;
                break;
            case GenerationUpdateKind.Completed:
                EndReasoning();
                if (!_atLineStart) host.Out.WriteLine();
                host.Out.Flush();
                host.Error.WriteLine(host.Dim(StatsLine(update.Result!, weightBytesPerToken)));
                _atLineStart = true;
                break;
        }
        if (update.Kind != GenerationUpdateKind.Completed) _last = update.Kind;
        host.Out.Flush();
    }

    private void WriteText(string text)
    {
        host.Out.Write(text);
        if (text.Length > 0) _atLineStart = text[^1] == '\n';
    }

    private void EndReasoning()
    {
        if (_last is GenerationUpdateKind.Reasoning && !hideReasoning)
        {
            host.Out.Write(host.DimEnd);
            if (!_atLineStart) { host.Out.WriteLine(); _atLineStart = true; }
        }
        _last = null;
    }

    /// <summary>"prompt 25 tok · generated 312 tok · TTFT 85 ms · prefill 290 tok/s · decode 36.2 tok/s · 2370 GB/s · end of sequence".</summary>
    internal static string StatsLine(GenerationResult r, long weightBytesPerToken)
    {
        var u = r.Usage;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"prompt {u.PromptTokens} tok");
        if (u.CachedPromptTokens > 0) sb.Append(CultureInfo.InvariantCulture, $" ({u.CachedPromptTokens} cached)");
        sb.Append(CultureInfo.InvariantCulture, $" · generated {u.GeneratedTokens} tok");
        sb.Append(CultureInfo.InvariantCulture, $" · TTFT {u.TimeToFirstToken.TotalMilliseconds:F0} ms");
        sb.Append(CultureInfo.InvariantCulture, $" · prefill {u.PrefillTokensPerSecond:F1} tok/s");
        sb.Append(CultureInfo.InvariantCulture, $" · decode {u.DecodeTokensPerSecond:F1} tok/s");
        double gbps = GbPerSecond(u, weightBytesPerToken);
        sb.Append(" · ").Append(FormatGbPerSecond(gbps)).Append(" GB/s");
        sb.Append(" · ").Append(Describe(r.FinishReason));
        if (r.StopString is not null) sb.Append(" \"").Append(r.StopString).Append('"');
        return sb.ToString();
    }

    /// <summary>GB/s as the stats line prints it: whole numbers from 10, two decimals below (a small model's is under 1, not "0").</summary>
    internal static string FormatGbPerSecond(double gbps) => gbps.ToString(gbps >= 10 ? "F0" : "F2", CultureInfo.InvariantCulture);

    /// <summary>Weight bytes streamed per second while decoding (each token reads every weight once).</summary>
    internal static double GbPerSecond(GenerationUsage u, long weightBytesPerToken) => weightBytesPerToken * u.DecodeTokensPerSecond / 1e9;

    /// <summary>
    /// Weight bytes one decode token reads, over every GPU, as the weights are stored: fp8 and int4 read a half and
    /// under a third of bf16's (counting 2 bytes a parameter, the figure read twice and 3.5 times the bandwidth it had:
    /// fp8 QwQ-32B at 100 tok/s showed 6,550 GB/s on a 4.8 TB/s card). The GPU engine's count is the benchmark's
    /// (<see cref="ModelBenchmark.DecodeBytesPerToken"/>, one GPU's, times the GPUs); the CPU reference reads float32.
    /// Both leave out the embedding table (a token reads one row of it) unless it is also the lm_head.
    /// </summary>
    internal static long DecodeWeightBytes(IModelBackend backend)
    {
        if (backend is CudaBackend cuda) return (long)ModelBenchmark.DecodeBytesPerToken(cuda, context: 0) * cuda.TensorParallel;
        var c = backend.Config;
        long embedding = c.TieWordEmbeddings ? 0 : (long)c.VocabSize * c.HiddenSize;
        return (c.ParameterCount - embedding) * sizeof(float);
    }

    internal static string Describe(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence => "end of sequence",
        FinishReason.StopString => "stop string",
        FinishReason.MaxTokens => "max tokens reached",
        FinishReason.MaxContext => "context full",
        FinishReason.Cancelled => "cancelled",
        _ => reason.ToString(),
    };

    internal static string JsonName(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence => "end_of_sequence",
        FinishReason.StopString => "stop_string",
        FinishReason.MaxTokens => "max_tokens",
        FinishReason.MaxContext => "max_context",
        FinishReason.Cancelled => "cancelled",
        _ => reason.ToString(),
    };

    private void WriteJson(in GenerationUpdate update)
    {
        _buffer.Reset();
        using (var w = new Utf8JsonWriter(_buffer, ReadableJson))
        {
            w.WriteStartObject();
            switch (update.Kind)
            {
                case GenerationUpdateKind.Reasoning:
                    if (hideReasoning) return;
                    w.WriteString("type", "reasoning");
                    w.WriteString("text", update.Text);
                    break;
                case GenerationUpdateKind.Answer:
                    w.WriteString("type", "answer");
                    w.WriteString("text", update.Text);
                    break;
                case GenerationUpdateKind.ToolCall:
                    w.WriteString("type", "tool_call");
                    w.WriteString("name", update.ToolCall!.Name);
                    WriteRawOrString(w, "arguments", update.ToolCall.ArgumentsJson);
                    break;
                case GenerationUpdateKind.Completed:
                    WriteDone(w, update.Result!);
                    break;
            }
            w.WriteEndObject();
        }
        host.Out.WriteLine(_buffer.ToUtf8String());
        host.Out.Flush();
    }

    private void WriteDone(Utf8JsonWriter w, GenerationResult r)
    {
        var u = r.Usage;
        w.WriteString("type", "done");
        w.WriteString("finish_reason", JsonName(r.FinishReason));
        if (r.StopString is not null) w.WriteString("stop_string", r.StopString);
        if (!hideReasoning) w.WriteString("reasoning", r.Reasoning);
        w.WriteString("answer", r.Answer);
        w.WriteStartArray("tool_calls");
        foreach (var call in r.ToolCalls)
        {
            w.WriteStartObject();
            w.WriteString("name", call.Name);
            WriteRawOrString(w, "arguments", call.ArgumentsJson);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", u.PromptTokens);
        w.WriteNumber("cached_prompt_tokens", u.CachedPromptTokens);
        w.WriteNumber("generated_tokens", u.GeneratedTokens);
        w.WriteNumber("ttft_ms", Math.Round(u.TimeToFirstToken.TotalMilliseconds, 3));
        w.WriteNumber("prefill_ms", Math.Round(u.PrefillTime.TotalMilliseconds, 3));
        w.WriteNumber("decode_ms", Math.Round(u.DecodeTime.TotalMilliseconds, 3));
        w.WriteNumber("total_ms", Math.Round(u.TotalTime.TotalMilliseconds, 3));
        w.WriteNumber("prefill_tokens_per_second", Math.Round(u.PrefillTokensPerSecond, 3));
        w.WriteNumber("decode_tokens_per_second", Math.Round(u.DecodeTokensPerSecond, 3));
        w.WriteNumber("weight_gb_per_second", Math.Round(GbPerSecond(u, weightBytesPerToken), 3));
        w.WriteEndObject();
    }

    private static void WriteRawOrString(Utf8JsonWriter w, string name, string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            w.WritePropertyName(name);
            doc.RootElement.WriteTo(w);
        }
        catch (JsonException)
        {
            w.WriteString(name, json);
        }
    }

    /// <summary>A reusable byte buffer for Utf8JsonWriter (one per writer, so JSON lines allocate only their string).</summary>
    private sealed class ArrayBufferWriterStream : System.Buffers.IBufferWriter<byte>
    {
        private readonly System.Buffers.ArrayBufferWriter<byte> _inner = new(1024);
        public void Reset() => _inner.ResetWrittenCount();
        public void Advance(int count) => _inner.Advance(count);
        public Memory<byte> GetMemory(int sizeHint = 0) => _inner.GetMemory(sizeHint);
        public Span<byte> GetSpan(int sizeHint = 0) => _inner.GetSpan(sizeHint);
        public string ToUtf8String() => Encoding.UTF8.GetString(_inner.WrittenSpan);
    }
}

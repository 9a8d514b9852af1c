using System.Buffers;
using System.Text;

namespace QwQ.Cuda.Text;

/// <summary>
/// Turns generated ids into text incrementally. <see cref="Push"/> returns only text that is final: a UTF-8
/// character whose bytes are split across tokens is held back until it is complete, so emitted text never
/// contains a broken sequence and never changes. The concatenation of all <see cref="Push"/> results and
/// <see cref="Flush"/> equals <see cref="QwenTokenizer.Decode"/> of all the ids. Not thread-safe.
/// </summary>
public sealed class StreamingDetokenizer
{
    private readonly QwenTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    private readonly ArrayBufferWriter<byte> _pending = new(16);

    public StreamingDetokenizer(QwenTokenizer tokenizer, bool skipSpecialTokens = false)
    {
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _skipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>Number of bytes held back (an incomplete UTF-8 sequence).</summary>
    public int PendingByteCount => _pending.WrittenCount;

    /// <summary>Adds one id; returns the newly completed text (possibly empty).</summary>
    public string Push(int id)
    {
        if (_skipSpecialTokens && _tokenizer.IsSpecial(id)) return "";
        var bytes = _tokenizer.TokenBytes(id);
        if (bytes.IsEmpty) return "";
        _pending.Write(bytes);

        var span = _pending.WrittenSpan;
        int complete = CompletePrefixLength(span);
        if (complete == 0) return "";
        string text = Encoding.UTF8.GetString(span[..complete]);
        if (complete == span.Length)
        {
            _pending.ResetWrittenCount();
        }
        else
        {
            Span<byte> rest = stackalloc byte[4];
            int n = span.Length - complete; // at most 3: an incomplete UTF-8 sequence
            span[complete..].CopyTo(rest);
            _pending.ResetWrittenCount();
            _pending.Write(rest[..n]);
        }
        return text;
    }

    /// <summary>Emits whatever is held back (an incomplete sequence becomes U+FFFD) and resets.</summary>
    public string Flush()
    {
        if (_pending.WrittenCount == 0) return "";
        string text = Encoding.UTF8.GetString(_pending.WrittenSpan);
        _pending.ResetWrittenCount();
        return text;
    }

    /// <summary>Length of the prefix that can be decoded now: all but a trailing, still-valid incomplete sequence.
    /// Invalid bytes are decoded (to U+FFFD) right away, exactly as a whole-sequence decode would.</summary>
    internal static int CompletePrefixLength(ReadOnlySpan<byte> bytes)
    {
        int i = 0;
        while (i < bytes.Length)
        {
            var status = Rune.DecodeFromUtf8(bytes[i..], out _, out int consumed);
            if (status == OperationStatus.NeedMoreData) return i;
            i += consumed;
        }
        return i;
    }
}

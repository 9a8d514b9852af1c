using System.Buffers;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// JSON as strictly as the reference safetensors reader (Rust, serde_json) takes it, for safetensors headers and
/// the shard index: valid UTF-8, exactly one value, no unpaired surrogate escapes, no key twice in one object.
/// System.Text.Json alone accepts duplicate keys (the last silently wins), and reports bad UTF-8 or surrogates
/// only as an InvalidOperationException when a string is read; both must become a WeightsException naming the file.
/// </summary>
internal static class StrictJson
{
    /// <summary>Parses <paramref name="utf8"/>; <paramref name="what"/> ("header", "index") names it in errors.</summary>
    public static JsonDocument Parse(ReadOnlyMemory<byte> utf8, string file, string what)
    {
        if (!Utf8.IsValid(utf8.Span))
        {
            int at = FirstInvalidUtf8(utf8.Span);
            throw new WeightsException($"{file}: {what} is not valid UTF-8 (byte {at}, after \"{Context(utf8.Span, at)}\"): the file is corrupt");
        }
        try
        {
            // Parse (unlike ParseValue) rejects anything but whitespace after the value, as serde_json does.
            return JsonDocument.Parse(utf8);
        }
        catch (JsonException e)
        {
            throw new WeightsException($"{file}: {what} is not valid JSON (line {(e.LineNumber ?? 0) + 1}, byte {(e.BytePositionInLine ?? 0) + 1}: " +
                                       $"{e.Message.Split(" LineNumber:")[0]}): the file is corrupt");
        }
    }

    /// <summary>
    /// The properties of <paramref name="obj"/> with their decoded names; a key that appears twice or does not decode
    /// to valid Unicode is an error naming <paramref name="where"/> (e.g. "tensor 'x'" for an entry's fields).
    /// </summary>
    public static IEnumerable<(string Name, JsonElement Value)> Properties(JsonElement obj, string file, string where)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in obj.EnumerateObject())
        {
            string name;
            try { name = p.Name; }
            catch (InvalidOperationException)
            {
                throw new WeightsException($"{file}: {where}: key in {Shorten(p.ToString())} is not valid Unicode (an unpaired surrogate escape): the file is corrupt");
            }
            if (!seen.Add(name))
                throw new WeightsException($"{file}: {where}: key '{name}' appears twice; a reader would have to guess which one is meant");
            yield return (name, p.Value);
        }
    }

    /// <summary>The string value of <paramref name="e"/>, or null when it is not a string.</summary>
    public static string? String(JsonElement e, string file, string where)
    {
        if (e.ValueKind != JsonValueKind.String) return null;
        try { return e.GetString(); }
        catch (InvalidOperationException)
        {
            throw new WeightsException($"{file}: {where}: string {Shorten(e.GetRawText())} is not valid Unicode (an unpaired surrogate escape): the file is corrupt");
        }
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> s)
    {
        int i = 0;
        while (i < s.Length && Rune.DecodeFromUtf8(s[i..], out _, out int used) == OperationStatus.Done) i += used;
        return i;
    }

    /// <summary>Up to 60 characters before byte <paramref name="at"/>: where in the header the damage is (usually inside a tensor name).</summary>
    private static string Context(ReadOnlySpan<byte> s, int at)
    {
        int start = Math.Max(0, at - 60);
        return Encoding.UTF8.GetString(s[start..at]).TrimStart('\uFFFD');
    }

    private static string Shorten(string raw) => raw.Length <= 80 ? raw : raw[..77] + "...";
}

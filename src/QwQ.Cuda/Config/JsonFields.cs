using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Errors;
using static System.FormattableString;

namespace QwQ.Cuda.Config;

/// <summary>
/// Typed access to the fields of a JSON object read from a config file. Every failure is a
/// <see cref="ConfigException"/> that names the file and the field, because the user has to fix the file.
/// </summary>
internal readonly struct JsonFields(JsonElement obj, string source, string prefix = "")
{
    public string Source => source;

    /// <summary>Config files are a few KiB; a larger one is not a config, and reading it whole could exhaust memory.</summary>
    public const long MaxFileBytes = 4 << 20;

    /// <summary>The text of a config file (<paramref name="what"/> names it in errors); too large or unreadable files are a <see cref="ConfigException"/>.</summary>
    public static string ReadFile(string path, string what)
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            // Counted while reading, not from the length: a pipe or /dev/zero has none.
            var bytes = new MemoryStream();
            var chunk = new byte[16 << 10];
            for (int n; (n = stream.Read(chunk)) > 0;)
            {
                bytes.Write(chunk, 0, n);
                if (bytes.Length > MaxFileBytes)
                    throw new ConfigException(Invariant($"{path}: more than {MaxFileBytes} bytes is too large for a {what}; is it the right file?"));
            }
            bytes.Position = 0;
            using var reader = new StreamReader(bytes); // drops a UTF-8 byte order mark, as File.ReadAllText does
            return reader.ReadToEnd();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"{path}: cannot read {what}: {e.Message}");
        }
    }

    /// <summary>Parses <paramref name="json"/>; malformed JSON names the file and the (1-based) line.</summary>
    public static JsonDocument ParseDocument(string json, string source)
    {
        try
        {
            return JsonDocument.Parse(json, new JsonDocumentOptions
            {
                AllowTrailingCommas = true,
                CommentHandling = JsonCommentHandling.Skip,
                // The same key twice means a hand-edited or corrupt file; which value was meant is a guess, so refuse it.
                AllowDuplicateProperties = false,
            });
        }
        catch (JsonException e)
        {
            long line = (e.LineNumber ?? 0) + 1;
            long col = (e.BytePositionInLine ?? 0) + 1;
            throw new ConfigException($"{source}: malformed JSON at line {line}, column {col}: {FirstSentence(e.Message)}");
        }
    }

    public static JsonFields Root(JsonDocument doc, string source)
    {
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw new ConfigException($"{source}: expected a JSON object at the top level, got {Describe(doc.RootElement)}");
        return new JsonFields(doc.RootElement, source);
    }

    public string Name(string field) => $"'{prefix}{field}'";

    /// <summary>The field, or null when it is absent or JSON null (both mean "not given").</summary>
    public JsonElement? Find(string field)
    {
        if (obj.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null) return v;
        return null;
    }

    public bool Has(string field) => Find(field) is not null;

    /// <summary>The object's field names, in file order (for objects keyed by the file's own names, like config_groups).</summary>
    public IReadOnlyList<string> FieldNames() => obj.EnumerateObject().Select(p => p.Name).ToList();

    public JsonFields? Object(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.Object)
            throw Bad(field, "must be an object", v.Value);
        return new JsonFields(v.Value, source, $"{prefix}{field}.");
    }

    public int RequiredInt(string field, int min, int max) => OptionalInt(field, min, max) ?? throw Missing(field);

    /// <summary>
    /// An integer in [<paramref name="min"/>, <paramref name="max"/>], or null when absent. Another type, a fraction and a
    /// value out of range all give one message that states the range, so the user sees what to write.
    /// </summary>
    public int? OptionalInt(string field, int min, int max)
    {
        var v = Find(field);
        if (v is null) return null;
        if (TryInteger(v.Value, out long i) && i >= min && i <= max) return (int)i;
        throw Bad(field, $"must be {IntRange(min, max)}", v.Value);
    }

    public double RequiredDouble(string field, NumberRange range) => OptionalDouble(field, range) ?? throw Missing(field);

    /// <summary>A number in <paramref name="range"/> (always finite), or null when absent.</summary>
    public double? OptionalDouble(string field, NumberRange range)
    {
        var v = Find(field);
        if (v is null) return null;
        var e = v.Value;
        if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double d) && double.IsFinite(d) && range.Contains(d)) return d;
        throw Bad(field, $"must be {range}", e);
    }

    public bool? OptionalBool(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        return v.Value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Bad(field, "must be true or false", v.Value),
        };
    }

    public string RequiredString(string field) => OptionalString(field) ?? throw Missing(field);

    public string? OptionalString(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.String) throw Bad(field, "must be a string", v.Value);
        return v.Value.GetString()!;
    }

    /// <summary>A string or a list of strings (architectures), as a list.</summary>
    public IReadOnlyList<string>? OptionalStringList(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        if (v.Value.ValueKind == JsonValueKind.String) return [v.Value.GetString()!];
        if (v.Value.ValueKind != JsonValueKind.Array) throw Bad(field, "must be a list of strings", v.Value);
        var list = new List<string>();
        foreach (var item in v.Value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw Bad(field, "must be a list of strings", v.Value);
            list.Add(item.GetString()!);
        }
        return list;
    }

    /// <summary>An integer or a list of integers (eos_token_id), each in [<paramref name="min"/>, <paramref name="max"/>], as a list.</summary>
    public IReadOnlyList<int>? OptionalIntList(string field, int min, int max)
    {
        var v = Find(field);
        if (v is null) return null;
        string requirement = $"must be {IntRange(min, max)} or a list of them";
        if (v.Value.ValueKind == JsonValueKind.Number)
            return TryInteger(v.Value, out long one) && one >= min && one <= max ? [(int)one] : throw Bad(field, requirement, v.Value);
        if (v.Value.ValueKind != JsonValueKind.Array) throw Bad(field, requirement, v.Value);
        var list = new List<int>();
        foreach (var item in v.Value.EnumerateArray())
        {
            if (!TryInteger(item, out long i) || i < min || i > max) throw Bad(field, requirement, item);
            list.Add((int)i);
        }
        return list;
    }

    /// <summary>A JSON number with an integral value; 4096.0 counts (transformers writes some ints that way).</summary>
    private static bool TryInteger(JsonElement e, out long value)
    {
        value = 0;
        if (e.ValueKind != JsonValueKind.Number) return false;
        if (e.TryGetInt64(out value)) return true;
        // Beyond ±2^53 a double no longer tells integers apart; no bound we check comes near that.
        if (e.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < 9e15) { value = (long)d; return true; }
        return false;
    }

    private static string IntRange(int min, int max) => Invariant($"an integer from {min} to {max}");

    public ConfigException Missing(string field) =>
        new($"{source}: required field {Name(field)} is missing");

    public ConfigException Bad(string field, string requirement, JsonElement got) =>
        new($"{source}: {Name(field)} {requirement}, got {Describe(got)}");

    public ConfigException Invalid(string message) => new($"{source}: {message}");

    internal static string Describe(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => $"string {Quote(e.GetString() ?? "")}",
        JsonValueKind.Number => $"number {Truncate(e.GetRawText())}",
        JsonValueKind.True or JsonValueKind.False => $"boolean {e.GetRawText()}",
        JsonValueKind.Array => "a list",
        JsonValueKind.Object => "an object",
        _ => e.ValueKind.ToString().ToLowerInvariant(),
    };

    private static string Truncate(string s) => s.Length <= 60 ? s : s[..57] + "...";

    /// <summary>A string value from the file, quoted and shortened for a message (a crafted file may hold megabytes).</summary>
    internal static string Quote(string s) => $"\"{Truncate(s)}\"";

    private static string FirstSentence(string message)
    {
        int i = message.IndexOf(" Path:", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }

    internal static string Format(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>The values a number field may take; its text is what error messages say ("a number in (0, 1]").</summary>
internal readonly record struct NumberRange(double Min, double Max, bool MinExclusive = false)
{
    /// <summary>Greater than 0 (no upper bound but finiteness).</summary>
    public static NumberRange Positive => new(0, double.MaxValue, MinExclusive: true);

    /// <summary>0 or more.</summary>
    public static NumberRange NonNegative => new(0, double.MaxValue);

    /// <summary>Any finite number.</summary>
    public static NumberRange Finite => new(double.MinValue, double.MaxValue);

    public bool Contains(double d) => (MinExclusive ? d > Min : d >= Min) && d <= Max;

    public override string ToString()
    {
        string min = JsonFields.Format(Min), max = JsonFields.Format(Max);
        if (Min == double.MinValue) return "a finite number";
        if (Max == double.MaxValue) return MinExclusive ? $"a finite number greater than {min}" : $"a finite number of at least {min}";
        return $"a number in {(MinExclusive ? '(' : '[')}{min}, {max}]";
    }
}

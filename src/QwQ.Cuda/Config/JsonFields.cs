using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Config;

/// <summary>
/// Typed access to the fields of a JSON object read from a config file. Every failure is a
/// <see cref="ConfigException"/> that names the file and the field, because the user has to fix the file.
/// </summary>
internal readonly struct JsonFields(JsonElement obj, string source, string prefix = "")
{
    public string Source => source;

    /// <summary>Parses <paramref name="json"/>; malformed JSON names the file and the (1-based) line.</summary>
    public static JsonDocument ParseDocument(string json, string source)
    {
        try
        {
            return JsonDocument.Parse(json, new JsonDocumentOptions
            {
                AllowTrailingCommas = true,
                CommentHandling = JsonCommentHandling.Skip,
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

    public JsonFields? Object(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        if (v.Value.ValueKind != JsonValueKind.Object)
            throw Bad(field, "must be an object", v.Value);
        return new JsonFields(v.Value, source, $"{prefix}{field}.");
    }

    public int RequiredInt(string field) => OptionalInt(field) ?? throw Missing(field);

    public int? OptionalInt(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        var e = v.Value;
        if (e.ValueKind == JsonValueKind.Number)
        {
            if (e.TryGetInt32(out int i)) return i;
            // 4096.0 is an integer too; transformers writes some ints that way.
            if (e.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
        }
        throw Bad(field, "must be an integer", e);
    }

    public double RequiredDouble(string field) => OptionalDouble(field) ?? throw Missing(field);

    public double? OptionalDouble(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        var e = v.Value;
        if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double d) && double.IsFinite(d)) return d;
        throw Bad(field, "must be a finite number", e);
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

    /// <summary>An integer or a list of integers (eos_token_id), as a list.</summary>
    public IReadOnlyList<int>? OptionalIntList(string field)
    {
        var v = Find(field);
        if (v is null) return null;
        if (v.Value.ValueKind == JsonValueKind.Number) return [RequiredInt(field)];
        if (v.Value.ValueKind != JsonValueKind.Array) throw Bad(field, "must be an integer or a list of integers", v.Value);
        var list = new List<int>();
        foreach (var item in v.Value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int i))
                throw Bad(field, "must be an integer or a list of integers", v.Value);
            list.Add(i);
        }
        return list;
    }

    public ConfigException Missing(string field) =>
        new($"{source}: required field {Name(field)} is missing");

    public ConfigException Bad(string field, string requirement, JsonElement got) =>
        new($"{source}: {Name(field)} {requirement}, got {Describe(got)}");

    public ConfigException Invalid(string message) => new($"{source}: {message}");

    internal static string Describe(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => $"string \"{Truncate(e.GetString() ?? "")}\"",
        JsonValueKind.Number => $"number {e.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => $"boolean {e.GetRawText()}",
        JsonValueKind.Array => "a list",
        JsonValueKind.Object => "an object",
        _ => e.ValueKind.ToString().ToLowerInvariant(),
    };

    private static string Truncate(string s) => s.Length <= 60 ? s : s[..57] + "...";

    private static string FirstSentence(string message)
    {
        int i = message.IndexOf(" Path:", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }

    internal static string Format(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}

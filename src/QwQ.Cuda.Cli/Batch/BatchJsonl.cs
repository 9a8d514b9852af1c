using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Cli.Batch;

/// <summary>
/// One line of <c>qwq generate --input</c>: <c>{"id": "...", "prompt": "..."}</c> (a user message; the chat template
/// is applied, as with --prompt) or <c>{"id": "...", "messages": [{"role": "user", "content": "..."}, ...]}</c>, with
/// optional <c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>top_k</c>, <c>seed</c> over the command's options.
/// </summary>
internal sealed record InputLine(int Line, string Id, string? Prompt, IReadOnlyList<ChatMessage>? Messages,
    int? MaxTokens, double? Temperature, double? TopP, int? TopK, ulong? Seed)
{
    /// <summary>The prompt with this line's values over <paramref name="options"/> (the command line's, over the model's).</summary>
    public BatchPrompt ToPrompt(GenerationOptions options, string? system)
    {
        var s = options.Sampling!;
        var sampling = SamplingBinding.Apply(s, Temperature, TopP, TopK, null, null, null, null, Seed);
        IReadOnlyList<ChatMessage> messages = Messages ?? [.. system is null ? [] : new[] { ChatMessage.System(system) }, ChatMessage.User(Prompt!)];
        return new BatchPrompt { Id = Id, Messages = messages, Options = options with { Sampling = sampling, MaxNewTokens = MaxTokens ?? options.MaxNewTokens } };
    }
}

/// <summary>One line of <c>qwq generate --output</c>; <see cref="Error"/> instead of the text when the prompt was invalid.</summary>
internal sealed record ResultLine(string Id, string? Text, string? Reasoning, string? Answer, int? PromptTokens, int? CompletionTokens,
    string? FinishReason, double? Seconds, string? Error);

/// <summary>Reads the input and output JSONL of <c>qwq generate --input/--output</c>.</summary>
internal static class BatchJsonl
{
    private static readonly string[] Fields = ["id", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed"];

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // text stays readable (<think>, accents)
    };

    /// <summary>Every prompt line (blank lines skipped); throws <see cref="OptionException"/> naming the first bad line and field.</summary>
    public static List<InputLine> ReadInput(TextReader reader, string name)
    {
        var lines = new List<InputLine>();
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        int number = 0;
        for (string? text; (text = reader.ReadLine()) is not null;)
        {
            number++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            var line = ParseLine(text, $"{name} line {number}", number);
            if (!seen.TryAdd(line.Id, number))
                throw new OptionException($"{name} line {number}: id \"{line.Id}\" is already on line {seen[line.Id]}; ids must be unique");
            lines.Add(line);
        }
        if (lines.Count == 0) throw new OptionException($"{name} has no prompts: write one JSON object per line, e.g. {{\"id\": \"1\", \"prompt\": \"...\"}}");
        return lines;
    }

    private static InputLine ParseLine(string text, string where, int number)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(text);
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new OptionException($"{where} is not JSON: {e.Message.Split(" Path:")[0]}");
        }
        if (root.ValueKind != JsonValueKind.Object)
            throw new OptionException($"{where}: expected a JSON object such as {{\"id\": \"1\", \"prompt\": \"...\"}}");
        foreach (var p in root.EnumerateObject())
            if (Array.IndexOf(Fields, p.Name) < 0)
                throw new OptionException($"{where}: unknown field \"{p.Name}\" (known: {string.Join(", ", Fields)})");

        string id = root.TryGetProperty("id", out var idValue) && idValue.ValueKind == JsonValueKind.String && idValue.GetString()!.Length > 0
            ? idValue.GetString()!
            : throw new OptionException($"{where}: \"id\" must be a non-empty string");
        bool hasPrompt = root.TryGetProperty("prompt", out var prompt), hasMessages = root.TryGetProperty("messages", out var messages);
        if (hasPrompt == hasMessages)
            throw new OptionException($"{where}: give either \"prompt\" (a user message) or \"messages\", not {(hasPrompt ? "both" : "neither")}");
        if (hasPrompt && (prompt.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(prompt.GetString())))
            throw new OptionException($"{where}: \"prompt\" must be non-empty text");

        double? temperature = Number(root, "temperature", where, t => t >= 0, "0 (greedy) or positive");
        double? topP = Number(root, "top_p", where, p => p > 0 && p <= 1, "in (0, 1]");
        int? topK = (int?)Whole(root, "top_k", where, 0, int.MaxValue, "0 (off) or positive");
        int? maxTokens = (int?)Whole(root, "max_tokens", where, 1, int.MaxValue, "at least 1");
        ulong? seed = root.TryGetProperty("seed", out var s)
            ? s.ValueKind == JsonValueKind.Number && s.TryGetUInt64(out ulong v) ? v : throw new OptionException($"{where}: \"seed\" must be a whole number from 0 to {ulong.MaxValue}")
            : null;
        return new InputLine(number, id, hasPrompt ? prompt.GetString() : null, hasMessages ? Messages(messages, where) : null,
            maxTokens, temperature, topP, topK, seed);
    }

    private static List<ChatMessage> Messages(JsonElement messages, string where)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new OptionException($"{where}: \"messages\" must be a non-empty array of {{\"role\", \"content\"}} objects");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object
                || !m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String
                || !m.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                throw new OptionException($"{where}: \"messages\"[{i}] must be an object with string \"role\" and \"content\"");
            list.Add(new ChatMessage(role.GetString()!, content.GetString()));
            i++;
        }
        return list;
    }

    private static double? Number(JsonElement root, string field, string where, Func<double, bool> ok, string range)
    {
        if (!root.TryGetProperty(field, out var e)) return null;
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double v) || !double.IsFinite(v))
            throw new OptionException($"{where}: \"{field}\" must be a number");
        return ok(v) ? v : throw new OptionException($"{where}: \"{field}\" is {e.GetRawText()}; it must be {range}");
    }

    private static long? Whole(JsonElement root, string field, string where, long min, long max, string range)
    {
        if (!root.TryGetProperty(field, out var e)) return null;
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v))
            throw new OptionException($"{where}: \"{field}\" must be a whole number");
        return v >= min && v <= max ? v : throw new OptionException($"{where}: \"{field}\" is {v}; it must be {range}");
    }

    public static string Format(BatchResult r) => JsonSerializer.Serialize(r.Result is { } g
        ? new ResultLine(r.Id, g.Text, g.Reasoning, g.Answer, g.Usage.PromptTokens, g.Usage.GeneratedTokens,
            UpdateWriter.JsonName(g.FinishReason), Math.Round(g.Usage.TotalTime.TotalSeconds, 3), null)
        : new ResultLine(r.Id, null, null, null, null, null, null, null, r.Error), Json);

    /// <summary>
    /// The ids already in an output file (to skip on --resume). An incomplete last line (the process was killed
    /// while writing it) is cut off, so appending continues on a line of its own; any other line that is not a
    /// result is an error naming it. Read through the run's own handle on the file (<paramref name="path"/> names it).
    /// </summary>
    public static HashSet<string> ReadDoneIdsAndRepair(FileStream output, string path, out bool repaired)
    {
        repaired = false;
        var ids = new HashSet<string>(StringComparer.Ordinal);
        var buffer = new MemoryStream();
        output.Seek(0, SeekOrigin.Begin);
        output.CopyTo(buffer);
        byte[] bytes = buffer.ToArray();
        int end = bytes.Length;
        if (end > 0 && bytes[end - 1] != (byte)'\n')
        {
            end = Array.LastIndexOf(bytes, (byte)'\n') + 1; // the partial line was never flushed whole: it was not finished
            output.SetLength(end);
            repaired = true;
        }
        var lines = Encoding.UTF8.GetString(bytes, 0, end).Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            string? id = null;
            try
            {
                using var doc = JsonDocument.Parse(lines[i]);
                if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("id", out var e) && e.ValueKind == JsonValueKind.String)
                    id = e.GetString();
            }
            catch (JsonException) { }
            if (id is null)
                throw new OptionException($"{path} line {i + 1} is not a result line (a JSON object with a string \"id\"); fix or remove it, then run again with --resume");
            ids.Add(id);
        }
        return ids;
    }
}

/// <summary>The output file: each result appended as one line and flushed, so an interrupted run keeps every finished one.</summary>
internal sealed class BatchOutput(FileStream output) : IDisposable
{
    private readonly StreamWriter _writer = new(Append(output), new UTF8Encoding(false));

    private static FileStream Append(FileStream output)
    {
        output.Seek(0, SeekOrigin.End);
        return output;
    }

    public void Write(BatchResult result)
    {
        _writer.Write(BatchJsonl.Format(result));
        _writer.Write('\n');
        _writer.Flush();
    }

    public void Dispose() => _writer.Dispose();
}

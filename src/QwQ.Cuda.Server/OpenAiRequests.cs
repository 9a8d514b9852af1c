using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Chat;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Server;

/// <summary>Sampling and stopping fields shared by /v1/chat/completions and /v1/completions (OpenAI's, plus vLLM's extras).</summary>
internal abstract class SamplingRequest
{
    public string? Model { get; set; }
    public bool Stream { get; set; }
    public StreamOptionsRequest? StreamOptions { get; set; }
    public int? MaxTokens { get; set; }
    public int? MaxCompletionTokens { get; set; }
    public double? Temperature { get; set; }
    public double? TopP { get; set; }
    public double? PresencePenalty { get; set; }
    public double? FrequencyPenalty { get; set; }
    public long? Seed { get; set; }
    public JsonElement? Stop { get; set; }
    public int? N { get; set; }
    public Dictionary<string, double>? LogitBias { get; set; }
    // vLLM's extra sampling fields
    public int? TopK { get; set; }
    public double? MinP { get; set; }
    public double? RepetitionPenalty { get; set; }
    public bool? IgnoreEos { get; set; }

    /// <summary>The generation these fields ask for, over the model's defaults; 400 naming the first bad field.</summary>
    public GenerationOptions ToGenerationOptions(QwqModel model)
    {
        static ApiException Bad(string field, string rule, double value) =>
            ApiException.BadField(field, string.Create(CultureInfo.InvariantCulture, $"{field} = {value} {rule}"));
        RefuseUnsupported();
        if (N is int n && n != 1) throw Bad("n", "is not supported: this server returns one choice per request (n = 1)", n);
        int? max = MaxCompletionTokens ?? MaxTokens;
        string maxField = MaxCompletionTokens is null ? "max_tokens" : "max_completion_tokens";
        if (max is int m && m < 1) throw Bad(maxField, "must be at least 1", m);
        if (Temperature is double t && !(t >= 0 && double.IsFinite(t))) throw Bad("temperature", "must be 0 (greedy) or positive", t);
        if (TopP is double p && !(p > 0 && p <= 1)) throw Bad("top_p", "must be in (0, 1]", p);
        if (TopK is int k && k < -1) throw Bad("top_k", "must be -1 or 0 (off) or positive", k);
        if (MinP is double mp && !(mp >= 0 && mp <= 1)) throw Bad("min_p", "must be in [0, 1]", mp);
        if (PresencePenalty is double pp && !(pp >= -2 && pp <= 2)) throw Bad("presence_penalty", "must be in [-2, 2]", pp);
        if (FrequencyPenalty is double fp && !(fp >= -2 && fp <= 2)) throw Bad("frequency_penalty", "must be in [-2, 2]", fp);
        if (RepetitionPenalty is double rp && !(rp > 0 && double.IsFinite(rp))) throw Bad("repetition_penalty", "must be positive (1 = off)", rp);

        var defaults = model.GenerationDefaults;
        var sampling = defaults with
        {
            Temperature = Temperature is double tt ? (float)tt : defaults.Temperature,
            TopP = TopP is double tp ? (float)tp : defaults.TopP,
            TopK = TopK is int tk ? Math.Max(tk, 0) : defaults.TopK, // vLLM's -1 is our 0: off
            MinP = MinP is double mm ? (float)mm : defaults.MinP,
            PresencePenalty = PresencePenalty is double p2 ? (float)p2 : defaults.PresencePenalty,
            FrequencyPenalty = FrequencyPenalty is double f2 ? (float)f2 : defaults.FrequencyPenalty,
            RepetitionPenalty = RepetitionPenalty is double r2 ? (float)r2 : defaults.RepetitionPenalty,
            Seed = Seed is long s ? unchecked((ulong)s) : defaults.Seed,
            LogitBias = Bias(model),
        };
        return new GenerationOptions { Sampling = sampling, MaxNewTokens = max, StopStrings = StopStrings() };
    }

    /// <summary>
    /// 400 for a field this server cannot honour whose answer would otherwise be silently different from what the
    /// client asked for (no log probabilities, no JSON-constrained decoding, ...). Fields that change nothing a client
    /// reads (user, metadata, ...) are ignored, as vLLM ignores them.
    /// </summary>
    protected virtual void RefuseUnsupported() { }

    private Dictionary<int, float>? Bias(QwqModel model)
    {
        if (LogitBias is null && IgnoreEos != true) return null;
        var bias = new Dictionary<int, float>();
        foreach (var (key, value) in LogitBias ?? [])
        {
            if (!int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= model.Tokenizer.VocabSize)
                throw ApiException.BadField("logit_bias", $"logit_bias key '{key}' is not a token id (0 to {model.Tokenizer.VocabSize - 1})");
            if (!(value >= -100 && value <= 100))
                throw ApiException.BadField("logit_bias", string.Create(CultureInfo.InvariantCulture, $"logit_bias[{key}] = {value} must be in [-100, 100]"));
            bias[id] = (float)value;
        }
        // vLLM's ignore_eos: keep generating past the end of the answer (benchmarks, load tests).
        if (IgnoreEos == true)
            foreach (int eos in model.EosTokenIds) bias[eos] = float.NegativeInfinity;
        return bias;
    }

    private string[] StopStrings()
    {
        if (Stop is not { } stop || stop.ValueKind == JsonValueKind.Null) return [];
        string[] list = stop.ValueKind switch
        {
            JsonValueKind.String => [stop.GetString()!],
            JsonValueKind.Array when stop.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String) =>
                [.. stop.EnumerateArray().Select(e => e.GetString()!)],
            _ => throw ApiException.BadField("stop", "stop must be a string or an array of strings"),
        };
        if (list.Any(string.IsNullOrEmpty)) throw ApiException.BadField("stop", "stop strings must not be empty");
        return list;
    }

    /// <summary>Whether the stream ends with a usage chunk (OpenAI's <c>stream_options.include_usage</c>).</summary>
    public bool IncludeUsage => StreamOptions?.IncludeUsage == true;
}

internal sealed class StreamOptionsRequest
{
    public bool IncludeUsage { get; set; }
}

/// <summary>POST /v1/chat/completions.</summary>
internal sealed class ChatCompletionRequest : SamplingRequest
{
    public List<RequestMessage>? Messages { get; set; }
    public List<JsonElement>? Tools { get; set; }
    public JsonElement? ToolChoice { get; set; }
    public bool? ParallelToolCalls { get; set; }
    public bool? Logprobs { get; set; }
    public int? TopLogprobs { get; set; }
    public JsonElement? ResponseFormat { get; set; }

    protected override void RefuseUnsupported()
    {
        if (Logprobs == true) throw ApiException.BadField("logprobs", "logprobs is not supported: this server returns no token log probabilities");
        if (TopLogprobs is > 0) throw ApiException.BadField("top_logprobs", "top_logprobs is not supported: this server returns no token log probabilities");
        switch (ResponseFormat)
        {
            case null or { ValueKind: JsonValueKind.Null }: return;
            case { ValueKind: JsonValueKind.Object } f when f.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String:
                if (type.GetString() == "text") return;
                throw ApiException.BadField("response_format",
                    $"response_format type '{type.GetString()}' is not supported: this server does not constrain the output to JSON (only \"text\"; ask for JSON in the messages instead)");
            default:
                throw ApiException.BadField("response_format", "response_format must be {\"type\":\"text\"} (the only format this server supports)");
        }
    }

    /// <summary>The conversation for the chat template; 400 naming the message at fault.</summary>
    public List<ChatMessage> ToTemplateMessages()
    {
        if (Messages is not { Count: > 0 }) throw ApiException.BadField("messages", "messages must be a non-empty array");
        var list = new List<ChatMessage>(Messages.Count);
        for (int i = 0; i < Messages.Count; i++)
        {
            var m = Messages[i] ?? throw ApiException.BadField($"messages[{i}]", $"messages[{i}] is null");
            string text = m.ContentText($"messages[{i}].content");
            switch (m.Role)
            {
                case "system" or "developer": list.Add(ChatMessage.System(text)); break;
                case "user": list.Add(ChatMessage.User(text)); break;
                case "tool": list.Add(ChatMessage.Tool(text)); break;
                case "assistant":
                    var calls = m.ToolCalls?.Select((c, j) => new ToolCall(
                        c.Function?.Name ?? throw ApiException.BadField($"messages[{i}].tool_calls[{j}].function.name", "a tool call needs function.name"),
                        ArgumentsJson(c.Function.Arguments, $"messages[{i}].tool_calls[{j}].function.arguments"))).ToList();
                    list.Add(ChatMessage.Assistant(text, calls is { Count: > 0 } ? calls : null));
                    break;
                default:
                    throw ApiException.BadField($"messages[{i}].role", $"messages[{i}].role '{m.Role}' is not one of system, developer, user, assistant, tool");
            }
        }
        return list;
    }

    /// <summary>A tool call's arguments as the template renders them: JSON text (the chat template re-dumps it), "{}" when absent.</summary>
    private static string ArgumentsJson(string? arguments, string field)
    {
        if (string.IsNullOrWhiteSpace(arguments)) return "{}";
        try
        {
            using var _ = JsonDocument.Parse(arguments);
        }
        catch (JsonException)
        {
            // Checked here so the client hears which message is at fault (400), not a template error (500).
            throw ApiException.BadField(field, $"{field} is not valid JSON: give the arguments as the JSON text of an object, as the model's tool call returned them");
        }
        return arguments;
    }

    /// <summary>
    /// The tool definitions to render into the prompt, after tool_choice: "none" offers none, a named function offers
    /// only that one, "auto" and "required" offer all (QwQ cannot be forced to call; "required" is a request to the model,
    /// made by <see cref="RequiredToolInstruction"/>).
    /// </summary>
    public IReadOnlyList<JsonElement>? OfferedTools()
    {
        if (Tools is not { Count: > 0 })
        {
            if (ToolChoice is { ValueKind: JsonValueKind.Object })
                throw ApiException.BadField("tool_choice", "tool_choice names a function but no tools are given");
            if (ToolChoice is { ValueKind: JsonValueKind.String } required && required.GetString() == "required")
                throw ApiException.BadField("tool_choice", "tool_choice is \"required\" but no tools are given: add the functions or leave tool_choice out");
            return null;
        }
        var names = new List<string>();
        for (int i = 0; i < Tools.Count; i++)
        {
            var t = Tools[i];
            if (t.ValueKind != JsonValueKind.Object || !t.TryGetProperty("type", out var type) || type.GetString() != "function")
                throw ApiException.BadField($"tools[{i}].type", $"tools[{i}] must be {{\"type\":\"function\",\"function\":{{...}}}}");
            if (!t.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object ||
                !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || name.GetString()!.Length == 0)
                throw ApiException.BadField($"tools[{i}].function.name", $"tools[{i}].function.name must be a non-empty string");
            names.Add(name.GetString()!);
        }
        switch (ToolChoice)
        {
            case null or { ValueKind: JsonValueKind.Null }: return Tools;
            case { ValueKind: JsonValueKind.String } s when s.GetString() is "auto" or "required": return Tools;
            case { ValueKind: JsonValueKind.String } s when s.GetString() == "none": return null;
            case { ValueKind: JsonValueKind.Object } o when o.TryGetProperty("function", out var f) && f.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String:
                int at = names.IndexOf(n.GetString()!);
                return at >= 0 ? [Tools[at]] : throw ApiException.BadField("tool_choice", $"tool_choice names function '{n.GetString()}', which is not in tools");
            default:
                throw ApiException.BadField("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}");
        }
    }

    /// <summary>
    /// The system instruction that a call is required, for tool_choice "required" or a named function (null otherwise):
    /// the library's for ChatToolMode.RequireAny / RequireSpecific. Call after <see cref="OfferedTools"/> checked the choice.
    /// </summary>
    public string? RequiredToolInstruction() => ToolChoice switch
    {
        { ValueKind: JsonValueKind.String } s when s.GetString() == "required" => QwqChatClient.RequiredCallInstruction(null),
        { ValueKind: JsonValueKind.Object } o => QwqChatClient.RequiredCallInstruction(o.GetProperty("function").GetProperty("name").GetString()),
        _ => null,
    };
}

internal sealed class RequestMessage
{
    public string? Role { get; set; }
    public JsonElement? Content { get; set; }
    public List<RequestToolCall>? ToolCalls { get; set; }
    public string? ToolCallId { get; set; }

    /// <summary>A string, null, or an array of parts of which the text ones are joined (images are refused).</summary>
    public string ContentText(string field)
    {
        if (Content is not { } c || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw ApiException.BadField(field, $"{field} must be a string or an array of text parts");
        var text = new System.Text.StringBuilder();
        int j = 0;
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.GetString() != "text" ||
                !part.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                throw ApiException.BadField($"{field}[{j}]", $"{field}[{j}] must be {{\"type\":\"text\",\"text\":\"...\"}}: QwQ reads text only");
            text.Append(t.GetString());
            j++;
        }
        return text.ToString();
    }
}

internal sealed class RequestToolCall
{
    public string? Id { get; set; }
    public string? Type { get; set; }
    public RequestFunction? Function { get; set; }
}

internal sealed class RequestFunction
{
    public string? Name { get; set; }
    public string? Arguments { get; set; }
}

/// <summary>POST /v1/completions: a raw prompt, no chat template.</summary>
internal sealed class CompletionRequest : SamplingRequest
{
    public JsonElement? Prompt { get; set; }
    public bool? Echo { get; set; }
    public int? Logprobs { get; set; }
    public int? BestOf { get; set; }
    public string? Suffix { get; set; }

    protected override void RefuseUnsupported()
    {
        if (Echo == true) throw ApiException.BadField("echo", "echo is not supported: the text is the completion only, without the prompt");
        if (Logprobs is not null) throw ApiException.BadField("logprobs", "logprobs is not supported: this server returns no token log probabilities");
        if (BestOf is int b && b != 1)
            throw ApiException.BadField("best_of", string.Create(CultureInfo.InvariantCulture, $"best_of = {b} is not supported: this server generates one completion per request (best_of = 1)"));
        if (!string.IsNullOrEmpty(Suffix)) throw ApiException.BadField("suffix", "suffix is not supported: the server completes the prompt only (no insertion)");
    }

    /// <summary>The prompt's token ids: from text, or given as ids; either alone or as a one-element batch.</summary>
    public int[] PromptTokens(QwqModel model)
    {
        var prompt = Prompt;
        // OpenAI's batch form (an array of strings or of token-id arrays): clients such as LangChain's OpenAI LLM send
        // one prompt as ["text"]. One choice per request, so a batch of several is refused rather than cut to the first.
        if (prompt is { ValueKind: JsonValueKind.Array } batch && batch.GetArrayLength() > 0 &&
            batch.EnumerateArray().All(e => e.ValueKind is JsonValueKind.String or JsonValueKind.Array))
        {
            int count = batch.GetArrayLength();
            if (count > 1)
                throw ApiException.BadField("prompt", $"prompt is a batch of {count} prompts: this server takes one prompt per request; send one request per prompt");
            prompt = batch[0];
        }
        int[] ids = prompt switch
        {
            { ValueKind: JsonValueKind.String } s => model.Tokenizer.Encode(s.GetString()!),
            { ValueKind: JsonValueKind.Array } a when a.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number) =>
                [.. a.EnumerateArray().Select(e => e.TryGetInt32(out int id) && id >= 0 && id < model.Tokenizer.VocabSize ? id
                    : throw ApiException.BadField("prompt", $"prompt token {e.GetRawText()} is not an id from 0 to {model.Tokenizer.VocabSize - 1}"))],
            _ => throw ApiException.BadField("prompt", "prompt must be a string or an array of token ids (one prompt per request)"),
        };
        return ids.Length > 0 ? ids : throw ApiException.BadField("prompt", "prompt is empty");
    }
}

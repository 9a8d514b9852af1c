using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Text;

/// <summary>A chat message. <paramref name="Role"/> is "system", "user", "assistant" or "tool".</summary>
public sealed record ChatMessage(string Role, string? Content, IReadOnlyList<ToolCall>? ToolCalls = null)
{
    public static ChatMessage System(string content) => new("system", content);
    public static ChatMessage User(string content) => new("user", content);
    public static ChatMessage Assistant(string content, IReadOnlyList<ToolCall>? toolCalls = null) => new("assistant", content, toolCalls);
    public static ChatMessage Tool(string content) => new("tool", content);
}

/// <summary>A function call: its name and the JSON text of its arguments object.</summary>
public sealed record ToolCall(string Name, string ArgumentsJson);

/// <summary>
/// QwQ's chat template, rendered natively (no Jinja): byte-identical to transformers'
/// <c>apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=...)</c> with QwQ-32B's
/// tokenizer_config.json. Tool definitions and call arguments are printed like Python's
/// <c>json.dumps(ensure_ascii=False)</c> (transformers' <c>tojson</c>).
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>The generation prompt appended when <c>addGenerationPrompt</c> is true.</summary>
    public const string GenerationPrompt = "<|im_start|>assistant\n<think>\n";

    private ChatTemplate(string? modelTemplate, bool isQwq)
    {
        ModelTemplate = modelTemplate;
        IsQwqTemplate = isQwq;
    }

    /// <summary>QwQ-32B's Jinja template, as shipped in its tokenizer_config.json (embedded copy).</summary>
    public static string QwqTemplateSource => QwqChatTemplateSource.Jinja;

    /// <summary>The built-in QwQ template.</summary>
    public static ChatTemplate Qwq { get; } = new(QwqChatTemplateSource.Jinja, true);

    /// <summary>The template text found in the model directory, if any.</summary>
    public string? ModelTemplate { get; }

    /// <summary>True when the model directory's template is QwQ's (the one this class implements).</summary>
    public bool IsQwqTemplate { get; }

    /// <summary>
    /// Reads the chat template of <paramref name="modelDir"/> (chat_template.jinja, else tokenizer_config.json's
    /// <c>chat_template</c>) and compares it with QwQ's. Rendering always uses QwQ's native implementation;
    /// when the directory's template is missing or different, <paramref name="warning"/> says so (else null).
    /// </summary>
    /// <exception cref="QwqException">The directory does not exist or tokenizer_config.json is malformed.</exception>
    public static ChatTemplate Load(string modelDir, out string? warning)
    {
        if (string.IsNullOrEmpty(modelDir) || !Directory.Exists(modelDir))
            throw new QwqException($"Model directory '{modelDir}' does not exist.");
        string? template = null, source = null;
        string jinjaPath = Path.Combine(modelDir, "chat_template.jinja");
        string cfgPath = Path.Combine(modelDir, QwenTokenizer.TokenizerConfigFileName);
        if (File.Exists(jinjaPath))
        {
            template = File.ReadAllText(jinjaPath);
            source = jinjaPath;
        }
        else if (File.Exists(cfgPath))
        {
            template = ReadTemplateFromConfig(cfgPath);
            source = cfgPath;
        }

        if (template is null)
        {
            warning = $"No chat template found in '{modelDir}' (tokenizer_config.json or chat_template.jinja); using QwQ's built-in template.";
            return new ChatTemplate(null, false);
        }
        bool same = Canonical(template) == Canonical(QwqChatTemplateSource.Jinja);
        warning = same
            ? null
            : $"The chat template in '{source}' differs from QwQ's; prompts are rendered with QwQ's built-in template, not the model's.";
        return new ChatTemplate(template, same);
    }

    private static string Canonical(string t) => t.Replace("\r\n", "\n").Trim();

    private static string? ReadTemplateFromConfig(string cfgPath)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(cfgPath));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new QwqException($"'{cfgPath}' is malformed: expected a JSON object.");
            if (!root.TryGetProperty("chat_template", out var ct)) return null;
            if (ct.ValueKind == JsonValueKind.String) return ct.GetString();
            if (ct.ValueKind == JsonValueKind.Array)
                foreach (var item in ct.EnumerateArray())
                    if (item.ValueKind == JsonValueKind.Object && item.TryGetProperty("name", out var n) && n.GetString() == "default"
                        && item.TryGetProperty("template", out var tt) && tt.ValueKind == JsonValueKind.String)
                        return tt.GetString();
            return null;
        }
        catch (JsonException e)
        {
            throw new QwqException($"'{cfgPath}' is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>Instance form of <see cref="Render"/> (always QwQ's template).</summary>
    public string Apply(IReadOnlyList<ChatMessage> messages, IReadOnlyList<JsonElement>? tools = null, bool addGenerationPrompt = true)
        => Render(messages, tools, addGenerationPrompt);

    /// <summary>
    /// Renders the prompt. Follows the Jinja template exactly: a system turn (with the tool list when
    /// <paramref name="tools"/> is non-empty); user and later system turns verbatim; assistant turns keep only the
    /// text after the last <c>&lt;/think&gt;</c>, leading newlines removed; tool calls as <c>&lt;tool_call&gt;</c>
    /// blocks; consecutive tool messages merged into one user turn of <c>&lt;tool_response&gt;</c> blocks; other
    /// roles produce nothing. A null content is treated as "".
    /// </summary>
    /// <exception cref="QwqException">No messages, a null role, or tool-call arguments that are not JSON.</exception>
    public static string Render(IReadOnlyList<ChatMessage> messages, IReadOnlyList<JsonElement>? tools = null, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0) throw new QwqException("A chat needs at least one message.");
        for (int i = 0; i < messages.Count; i++)
            if (messages[i] is null || messages[i].Role is null)
                throw new QwqException($"Message {i} has no role.");

        var sb = new StringBuilder(256);
        var first = messages[0];
        if (tools is { Count: > 0 })
        {
            sb.Append("<|im_start|>system\n");
            if (first.Role == "system") sb.Append(first.Content ?? "");
            sb.Append("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
                      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
            foreach (var tool in tools)
            {
                sb.Append('\n');
                PythonJson.Write(sb, tool);
            }
            sb.Append("\n</tools>\n\nFor each function call, return a json object with function name and arguments " +
                      "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, " +
                      "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n");
        }
        else if (first.Role == "system")
        {
            sb.Append("<|im_start|>system\n").Append(first.Content ?? "").Append("<|im_end|>\n");
        }

        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            string content = m.Content ?? "";
            if (m.Role == "user" || (m.Role == "system" && i != 0))
            {
                sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(content).Append("<|im_end|>\n");
            }
            else if (m.Role == "assistant" && m.ToolCalls is not { Count: > 0 })
            {
                sb.Append("<|im_start|>assistant\n").Append(AnswerPart(content)).Append("<|im_end|>\n");
            }
            else if (m.Role == "assistant")
            {
                sb.Append("<|im_start|>assistant");
                if (content.Length > 0) sb.Append('\n').Append(AnswerPart(content));
                foreach (var call in m.ToolCalls!)
                {
                    sb.Append("\n<tool_call>\n{\"name\": \"").Append(call.Name).Append("\", \"arguments\": ");
                    sb.Append(ArgumentsToJson(call));
                    sb.Append("}\n</tool_call>");
                }
                sb.Append("<|im_end|>\n");
            }
            else if (m.Role == "tool")
            {
                if (i == 0 || messages[i - 1].Role != "tool") sb.Append("<|im_start|>user");
                sb.Append("\n<tool_response>\n").Append(content).Append("\n</tool_response>");
                if (i == messages.Count - 1 || messages[i + 1].Role != "tool") sb.Append("<|im_end|>\n");
            }
        }

        if (addGenerationPrompt) sb.Append(GenerationPrompt);
        return sb.ToString();
    }

    /// <summary>The template's <c>content.split('&lt;/think&gt;')[-1].lstrip('\n')</c>.</summary>
    public static string AnswerPart(string content)
    {
        int at = content.LastIndexOf("</think>", StringComparison.Ordinal);
        var tail = at < 0 ? content : content[(at + "</think>".Length)..];
        return tail.TrimStart('\n');
    }

    private static string ArgumentsToJson(ToolCall call)
    {
        try
        {
            return PythonJson.Dumps(call.ArgumentsJson ?? "");
        }
        catch (JsonException e)
        {
            throw new QwqException($"The arguments of tool call '{call.Name}' are not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>
    /// Reads messages in the transformers/OpenAI shape: <c>[{"role", "content", "tool_calls": [{"type": "function",
    /// "function": {"name", "arguments"}}]}]</c> (a bare <c>{"name", "arguments"}</c> call is accepted too).
    /// Arguments may be an object or a string holding its JSON text (as OpenAI sends them).
    /// </summary>
    /// <exception cref="QwqException">The JSON does not have that shape.</exception>
    public static IReadOnlyList<ChatMessage> ParseMessages(JsonElement array)
    {
        if (array.ValueKind != JsonValueKind.Array)
            throw new QwqException("Messages must be a JSON array of {\"role\": ..., \"content\": ...} objects.");
        var list = new List<ChatMessage>();
        int index = 0;
        foreach (var m in array.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object)
                throw new QwqException($"Message {index} is not a JSON object.");
            if (!m.TryGetProperty("role", out var roleEl) || roleEl.ValueKind != JsonValueKind.String)
                throw new QwqException($"Message {index} has no string \"role\".");
            string? content = null;
            if (m.TryGetProperty("content", out var c))
            {
                content = c.ValueKind switch
                {
                    JsonValueKind.String => c.GetString(),
                    JsonValueKind.Null => null,
                    _ => throw new QwqException($"Message {index}: \"content\" must be a string or null."),
                };
            }
            List<ToolCall>? calls = null;
            if (m.TryGetProperty("tool_calls", out var tcs) && tcs.ValueKind != JsonValueKind.Null)
            {
                if (tcs.ValueKind != JsonValueKind.Array)
                    throw new QwqException($"Message {index}: \"tool_calls\" must be an array.");
                calls = [];
                foreach (var tc in tcs.EnumerateArray())
                {
                    var f = tc.ValueKind == JsonValueKind.Object && tc.TryGetProperty("function", out var fn) ? fn : tc;
                    if (f.ValueKind != JsonValueKind.Object || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
                        throw new QwqException($"Message {index}: a tool call has no \"name\".");
                    string args = "{}";
                    if (f.TryGetProperty("arguments", out var a))
                        args = a.ValueKind == JsonValueKind.String ? a.GetString()! : a.GetRawText();
                    calls.Add(new ToolCall(name.GetString()!, args));
                }
            }
            list.Add(new ChatMessage(roleEl.GetString()!, content, calls));
            index++;
        }
        return list;
    }

    /// <summary>Reads a JSON array of tool definitions (each rendered as-is with <c>tojson</c>).</summary>
    /// <exception cref="QwqException">Not an array.</exception>
    public static IReadOnlyList<JsonElement> ParseTools(JsonElement array)
    {
        if (array.ValueKind != JsonValueKind.Array)
            throw new QwqException("Tools must be a JSON array of tool definitions.");
        return array.EnumerateArray().Select(t => t.Clone()).ToList();
    }
}

using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.AI;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using AI = Microsoft.Extensions.AI;
using Qwq = QwQ.Cuda.Text;

namespace QwQ.Cuda.Chat;

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="QwqModel"/>. Reasoning streams as <see cref="TextReasoningContent"/>,
/// the answer as <see cref="TextContent"/>, tool calls (the model's <c>&lt;tool_call&gt;</c> blocks) as
/// <see cref="FunctionCallContent"/>, and the last update carries <see cref="UsageContent"/> and the finish reason.
/// <para>
/// Every call sends the whole conversation. Calls may run concurrently: each takes a <see cref="ChatSession"/> of
/// the client's own (an idle one, else a new one), and all of them generate together on the model's scheduler,
/// batched into shared forward passes. The client keeps the last finished call's session, so a growing
/// conversation prefills only its new turns; other sessions are closed when their call ends, and the KV blocks of
/// their full prefixes stay in the model's prefix cache for later calls.
/// Cancellation throws <see cref="OperationCanceledException"/> carrying the caller's token, leaving the client usable.
/// Disposing the model while calls run (or this client, when it owns the model) ends them with
/// <see cref="ObjectDisposedException"/> naming what was disposed, as do later calls.
/// </para>
/// <para>
/// The engine has no constrained decoding, so options that would need it are either refused or enforced after
/// the fact: <see cref="ChatResponseFormat.Json"/> (and a JSON schema) throws <see cref="NotSupportedException"/>
/// rather than returning text that may not parse. <see cref="ChatToolMode.RequireSpecific"/> offers the model only
/// the named function and <see cref="ChatToolMode.RequireAny"/> all of them, each with a system instruction that a
/// call is required; a generation that still ends without a call throws <see cref="InvalidOperationException"/>
/// naming the mode (after its text has streamed), so a caller never mistakes a plain answer for the call it required.
/// </para>
/// <para>
/// <c>AllowMultipleToolCalls = false</c> ends the generation once the first tool call is complete: the response holds
/// at most one <see cref="FunctionCallContent"/>.
/// </para>
/// <para>
/// Options: MaxOutputTokens, Temperature, TopP, TopK, Seed, StopSequences, Presence/FrequencyPenalty, and
/// AdditionalProperties "min_p" and "repetition_penalty" (numbers) map to the engine; a value that cannot work throws
/// <see cref="ArgumentException"/> (parameter "options") naming it. <c>Reasoning.Output = None</c> leaves the
/// reasoning out of the response (the model still reasons; its tokens are still counted). A
/// <c>ContinuationToken</c> throws <see cref="NotSupportedException"/>: there are no background responses to resume;
/// so does a <c>ConversationId</c>: no conversation is stored, every call sends the whole conversation.
/// </para>
/// <para>
/// <see cref="ChatResponse.RawRepresentation"/> is the <see cref="GenerationResult"/>, each update's the
/// <see cref="GenerationUpdate"/>. Usage carries <see cref="UsageDetails.ReasoningTokenCount"/> (tokens before
/// <c>&lt;/think&gt;</c>); the last update and the response carry timings in AdditionalProperties
/// (<see cref="TimeToFirstTokenMsKey"/>, <see cref="DecodeTokensPerSecondKey"/>, <see cref="PrefillTokensPerSecondKey"/>,
/// <see cref="TotalMsKey"/>, all doubles).
/// </para>
/// </summary>
public sealed class QwqChatClient : IChatClient
{
    public const string ProviderName = "qwq.cuda";

    /// <summary>AdditionalProperties key: milliseconds from the call to the first sampled token.</summary>
    public const string TimeToFirstTokenMsKey = "TimeToFirstTokenMs";
    /// <summary>AdditionalProperties key: generated tokens per second after the first.</summary>
    public const string DecodeTokensPerSecondKey = "DecodeTokensPerSecond";
    /// <summary>AdditionalProperties key: prompt tokens prefilled per second (cached ones excluded).</summary>
    public const string PrefillTokensPerSecondKey = "PrefillTokensPerSecond";
    /// <summary>AdditionalProperties key: milliseconds of the whole generation.</summary>
    public const string TotalMsKey = "TotalMs";

    private readonly QwqModel _model;
    private readonly bool _ownsModel;
    private readonly int? _maxContext;
    private readonly Stack<ChatSession> _idle = new(); // lock it; at most one between calls
    private readonly ChatClientMetadata _metadata;
    private bool _disposed;

    /// <param name="model">The loaded model.</param>
    /// <param name="modelId">Reported as <see cref="ChatResponse.ModelId"/> (default: "QwQ-32B").</param>
    /// <param name="maxContext">KV-cache positions of the client's session (null: the backend's maximum).</param>
    /// <param name="ownsModel">Dispose <paramref name="model"/> with the client.</param>
    public QwqChatClient(QwqModel model, string? modelId = null, int? maxContext = null, bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _ownsModel = ownsModel;
        ModelId = modelId ?? "QwQ-32B";
        _maxContext = maxContext;
        _idle.Push(model.CreateSession(maxContext)); // now, so a bad maxContext fails here
        _metadata = new ChatClientMetadata(ProviderName, null, ModelId);
    }

    public string ModelId { get; }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
            updates.Add(u);
        var response = updates.ToChatResponse();
        // The aggregate's raw form is the whole generation (the last update's result), not the list of pieces.
        var final = updates[^1];
        response.RawRepresentation = ((GenerationUpdate)final.RawRepresentation!).Result;
        response.AdditionalProperties = final.AdditionalProperties;
        return response;
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AI.ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (options?.ResponseFormat is ChatResponseFormatJson)
            throw new NotSupportedException("ChatOptions.ResponseFormat: JSON-constrained output is not supported (QwQ.Cuda has no constrained decoding); " +
                "use ChatResponseFormat.Text (or none) and ask for JSON in the prompt, then validate the answer.");
#pragma warning disable MEAI001 // ContinuationToken is experimental in M.E.AI; reading it to refuse it is safe whatever it becomes
        if (options?.ContinuationToken is not null)
            throw new NotSupportedException("ChatOptions.ContinuationToken: QwQ.Cuda has no background responses, so there is nothing to resume (this client never returns a " +
                "continuation token); send the conversation again without one.");
#pragma warning restore MEAI001
        // Stateless: answering only the messages given would silently drop the history the caller believes is stored.
        // Never set on a response, so FunctionInvokingChatClient and other middleware never send one on their own.
        if (options?.ConversationId is not null)
            throw new NotSupportedException($"ChatOptions.ConversationId (\"{options.ConversationId}\"): QwQ.Cuda stores no conversations (its responses carry " +
                "no ConversationId); send the whole conversation in messages on every call and leave ConversationId null.");
        // The model always reasons (QwQ has no switch for it); Output None only keeps the reasoning out of the response.
        bool showReasoning = options?.Reasoning?.Output is not ReasoningOutput.None;
        string? requiredTool = RequiredToolInstruction(options);
        var conversation = ToTemplateMessages(messages, JoinInstructions(options?.Instructions, requiredTool));
        var tools = ToToolDefinitions(options);
        // No tools offered (none given, or ToolMode None): a <tool_call> block the model writes anyway stays text, as the
        // server keeps it; parsed, it became a FunctionCallContent that FunctionInvokingChatClient would run under None.
        var generation = ToGenerationOptions(options, _model.GenerationDefaults) with { ParseToolCalls = tools is not null };

        var session = Rent();
        try
        {
            string responseId = "qwq-" + Guid.NewGuid().ToString("N")[..16];
            string messageId = responseId + "-0";
            var created = DateTimeOffset.UtcNow;
            ChatResponseUpdate Update(AIContent content, GenerationUpdate raw) => new(ChatRole.Assistant, [content])
            {
                RawRepresentation = raw,
                ResponseId = responseId,
                MessageId = messageId,
                ModelId = ModelId,
                CreatedAt = created,
            };

            bool sawToolCall = false;
            await foreach (var u in session.StreamAsync(conversation, generation, tools, cancellationToken).ConfigureAwait(false))
            {
                switch (u.Kind)
                {
                    case GenerationUpdateKind.Reasoning:
                        if (showReasoning) yield return Update(new TextReasoningContent(u.Text), u);
                        break;
                    case GenerationUpdateKind.Answer:
                        yield return Update(new TextContent(u.Text), u);
                        break;
                    case GenerationUpdateKind.ToolCall:
                        sawToolCall = true;
                        yield return Update(ToFunctionCall(u.ToolCall!), u);
                        break;
                    case GenerationUpdateKind.Completed:
                        var r = u.Result!;
                        if (r.FinishReason == FinishReason.Cancelled)
                            throw Cancelled(cancellationToken);
                        if (requiredTool is not null && !sawToolCall)
                            throw new InvalidOperationException($"ChatOptions.ToolMode is {DescribeToolMode(options!.ToolMode!)} but the model answered " +
                                $"without a tool call (finish reason {r.FinishReason}); QwQ.Cuda cannot force one (no constrained decoding). " +
                                "Retry the call, raise MaxOutputTokens if the answer was cut off, or use ChatToolMode.Auto and handle plain answers.");
                        var final = Update(new UsageContent(ToUsage(r, _model.Tokenizer.ThinkEndId)), u);
                        final.FinishReason = ToFinishReason(r.FinishReason, sawToolCall);
                        final.AdditionalProperties = Timings(r.Usage);
                        yield return final;
                        break;
                }
            }
        }
        finally
        {
            Return(session);
        }
    }

    /// <summary>
    /// Why a generation ended as cancelled: the caller's token, else the model disposed under the call (by its owner, or
    /// by this client when it owns the model). An OperationCanceledException carrying a token that was never cancelled
    /// would pass a caller's <c>catch when (e.CancellationToken == token)</c> as their own cancellation.
    /// </summary>
    private Exception Cancelled(CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested) return new OperationCanceledException(cancellationToken);
        if (_ownsModel && _disposed) return new ObjectDisposedException(GetType().FullName, "the client (which owns its model) was disposed while this call ran");
        if (_model.IsDisposed) return new ObjectDisposedException(_model.GetType().FullName, "the model was disposed while this call ran");
        return new OperationCanceledException("the generation was cancelled");
    }

    private ChatSession Rent()
    {
        lock (_idle)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            // The kept session ended with the model: name what the caller disposed, not a session they never saw.
            ObjectDisposedException.ThrowIf(_model.IsDisposed, _model);
            if (_idle.TryPop(out var session)) return session;
        }
        return _model.CreateSession(_maxContext);
    }

    /// <summary>Keeps the session for the next call if none is kept (its KV cache holds this conversation), else closes it.</summary>
    private void Return(ChatSession session)
    {
        lock (_idle)
        {
            if (!_disposed && _idle.Count == 0)
            {
                _idle.Push(session);
                return;
            }
        }
        session.Dispose();
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType == typeof(QwqModel)) return _model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    public void Dispose()
    {
        ChatSession[] idle;
        lock (_idle)
        {
            if (_disposed) return;
            _disposed = true;
            idle = [.. _idle];
            _idle.Clear();
        }
        foreach (var s in idle) s.Dispose(); // sessions of calls still running close when those calls end
        if (_ownsModel) _model.Dispose();
    }

    // ---- mapping -----------------------------------------------------------------------------

    /// <summary>
    /// ChatOptions over the model's defaults. Extra keys in AdditionalProperties: "min_p", "repetition_penalty".
    /// A value that cannot work throws <see cref="ArgumentException"/> (parameter "options") naming the option.
    /// </summary>
    internal static GenerationOptions ToGenerationOptions(ChatOptions? o, SamplingOptions defaults)
    {
        if (o is null) return new GenerationOptions { Sampling = defaults };
        // Checked here, in ChatOptions' terms: the engine's own checks name the CLI's flags (--max-tokens, --stop).
        if (o.MaxOutputTokens is < 1)
            throw new ArgumentException($"ChatOptions.MaxOutputTokens = {o.MaxOutputTokens} must be at least 1 (null: until the answer ends or the context is full).", "options");
        if (o.StopSequences is { } stopList && stopList.Any(string.IsNullOrEmpty))
            throw new ArgumentException("ChatOptions.StopSequences has an empty (or null) string: give non-empty text.", "options");
        var s = defaults with
        {
            Temperature = o.Temperature ?? defaults.Temperature,
            TopP = o.TopP ?? defaults.TopP,
            TopK = o.TopK ?? defaults.TopK,
            PresencePenalty = o.PresencePenalty ?? defaults.PresencePenalty,
            FrequencyPenalty = o.FrequencyPenalty ?? defaults.FrequencyPenalty,
            Seed = o.Seed is long seed ? unchecked((ulong)seed) : defaults.Seed,
        };
        if (o.AdditionalProperties is { } extra)
        {
            if (ExtraNumber(extra, "min_p") is float minP) s = s with { MinP = minP };
            if (ExtraNumber(extra, "repetition_penalty") is float rep) s = s with { RepetitionPenalty = rep };
        }
        try
        {
            s.Validate();
        }
        catch (OptionException e) // its message names the sampling parameter (temperature, top_p, min_p, ...)
        {
            throw new ArgumentException("ChatOptions: " + e.Message, "options", e);
        }
        return new GenerationOptions
        {
            Sampling = s,
            MaxNewTokens = o.MaxOutputTokens,
            StopStrings = o.StopSequences is { Count: > 0 } stops ? [.. stops] : [],
            StopAfterFirstToolCall = o.AllowMultipleToolCalls == false,
        };
    }

    /// <summary>
    /// A number under <paramref name="key"/> (any numeric type, a numeric string, or a JSON number as options read
    /// from configuration carry); null when absent. Anything else throws rather than being dropped without a word.
    /// </summary>
    private static float? ExtraNumber(AdditionalPropertiesDictionary extra, string key)
    {
        if (!extra.ContainsKey(key)) return null;
        if (extra.TryGetValue(key, out float value) && extra[key] is not bool) return value;
        if (extra[key] is JsonElement { ValueKind: JsonValueKind.Number } json && json.TryGetSingle(out value)) return value;
        throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{key}\"] must be a number, got {Describe(extra[key])}.", "options");

        static string Describe(object? v) => v switch
        {
            null => "null",
            JsonElement e => $"JSON {e.ValueKind.ToString().ToLowerInvariant()} {e.GetRawText()}",
            string str => $"\"{str}\"",
            _ => $"{v} ({v.GetType().Name})",
        };
    }

    /// <summary>
    /// M.E.AI messages → the template's messages: text contents joined; an assistant's function calls become tool
    /// calls; each function result becomes a "tool" message; reasoning content is dropped (the template drops it too).
    /// </summary>
    internal static List<Qwq.ChatMessage> ToTemplateMessages(IEnumerable<AI.ChatMessage> messages, string? instructions)
    {
        var list = new List<Qwq.ChatMessage>();
        int index = 0;
        foreach (var m in messages)
        {
            if (m is null) throw new ArgumentException($"messages[{index}] is null", nameof(messages));
            index++;
            string role = m.Role.Value;
            var text = string.Concat(m.Contents.OfType<TextContent>().Select(t => t.Text));
            var calls = m.Contents.OfType<FunctionCallContent>().Select(c => new Qwq.ToolCall(c.Name, ArgumentsJson(c.Arguments))).ToList();
            var results = m.Contents.OfType<FunctionResultContent>().ToList();

            if (results.Count > 0)
            {
                foreach (var r in results) list.Add(Qwq.ChatMessage.Tool(ResultText(r)));
                if (text.Length > 0 && role != "tool") list.Add(new Qwq.ChatMessage(role, text));
                continue;
            }
            if (role == "assistant") list.Add(Qwq.ChatMessage.Assistant(text, calls.Count > 0 ? calls : null));
            else list.Add(new Qwq.ChatMessage(role, text));
        }
        PrependInstructions(list, instructions);
        if (list.Count == 0) throw new ArgumentException("at least one message is needed", nameof(messages));
        return list;
    }

    /// <summary>Puts <paramref name="instructions"/> ahead of the first message's text when it is the system's, else in a system message first.</summary>
    internal static void PrependInstructions(List<Qwq.ChatMessage> list, string? instructions)
    {
        if (string.IsNullOrEmpty(instructions)) return;
        if (list.Count > 0 && list[0].Role == "system")
            list[0] = list[0] with { Content = instructions + "\n\n" + list[0].Content };
        else
            list.Insert(0, Qwq.ChatMessage.System(instructions));
    }

    /// <summary>The system instruction that a call is required: of <paramref name="functionName"/>, or (null) of any offered function.</summary>
    internal static string RequiredCallInstruction(string? functionName) => functionName is { } name
        ? $"You must answer by calling the function \"{name}\" (a <tool_call> block); do not answer in plain text."
        : "You must answer by calling one or more of the provided functions (<tool_call> blocks); do not answer in plain text.";

    /// <summary>
    /// The system instruction a required tool mode adds (null for Auto, None or no mode). Throws when the mode
    /// cannot be met: no tools offered, or a required function name that is not among them.
    /// </summary>
    internal static string? RequiredToolInstruction(ChatOptions? o)
    {
        if (o?.ToolMode is not RequiredChatToolMode required) return null;
        var names = (o.Tools ?? []).OfType<AIFunctionDeclaration>().Select(f => f.Name).ToList();
        if (names.Count == 0)
            throw new ArgumentException($"ChatOptions.ToolMode is {DescribeToolMode(required)} but ChatOptions.Tools has no functions; add the functions or use ChatToolMode.Auto.", "options");
        if (required.RequiredFunctionName is { } name)
        {
            if (!names.Contains(name))
                throw new ArgumentException($"ChatOptions.ToolMode requires the function \"{name}\", which is not in ChatOptions.Tools ({string.Join(", ", names)}); add it or name one of those.", "options");
        }
        return RequiredCallInstruction(required.RequiredFunctionName);
    }

    internal static string DescribeToolMode(ChatToolMode mode) => mode switch
    {
        RequiredChatToolMode { RequiredFunctionName: { } name } => $"RequireSpecific(\"{name}\")",
        RequiredChatToolMode => "RequireAny",
        NoneChatToolMode => "None",
        _ => "Auto",
    };

    private static string? JoinInstructions(string? instructions, string? extra) =>
        string.IsNullOrEmpty(extra) ? instructions : string.IsNullOrEmpty(instructions) ? extra : instructions + "\n\n" + extra;

    /// <summary>
    /// AIFunction declarations → <c>{"type":"function","function":{name, description, parameters}}</c>. With
    /// <see cref="ChatToolMode.RequireSpecific"/> only the required function is offered: the model cannot call
    /// what it never sees, the closest we get to forcing the choice without constrained decoding.
    /// </summary>
    internal static IReadOnlyList<JsonElement>? ToToolDefinitions(ChatOptions? o)
    {
        if (o?.Tools is not { Count: > 0 } tools || o.ToolMode is NoneChatToolMode) return null;
        string? only = (o.ToolMode as RequiredChatToolMode)?.RequiredFunctionName;
        var result = new List<JsonElement>();
        foreach (var f in tools.OfType<AIFunctionDeclaration>())
        {
            if (only is not null && f.Name != only) continue;
            using var stream = new MemoryStream();
            using (var w = new Utf8JsonWriter(stream))
            {
                w.WriteStartObject();
                w.WriteString("type", "function");
                w.WriteStartObject("function");
                w.WriteString("name", f.Name);
                if (!string.IsNullOrEmpty(f.Description)) w.WriteString("description", f.Description);
                w.WritePropertyName("parameters");
                if (f.JsonSchema.ValueKind == JsonValueKind.Object) f.JsonSchema.WriteTo(w);
                else { w.WriteStartObject(); w.WriteString("type", "object"); w.WriteStartObject("properties"); w.WriteEndObject(); w.WriteEndObject(); }
                w.WriteEndObject();
                w.WriteEndObject();
            }
            using var doc = JsonDocument.Parse(stream.ToArray());
            result.Add(doc.RootElement.Clone());
        }
        return result.Count > 0 ? result : null;
    }

    /// <summary>
    /// A parsed tool call → FunctionCallContent. Arguments that are not a JSON object (the model wrote an array, a
    /// number, a string) cannot be mapped to named parameters: then <see cref="FunctionCallContent.Exception"/> says so,
    /// as M.E.AI's own adapters report arguments they cannot parse, rather than the call running with none.
    /// </summary>
    internal static FunctionCallContent ToFunctionCall(Qwq.ToolCall call)
    {
        string id = "call_" + Guid.NewGuid().ToString("N")[..12];
        var args = new Dictionary<string, object?>();
        JsonException? error = null;
        try
        {
            using var doc = JsonDocument.Parse(call.ArgumentsJson);
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
            {
                foreach (var p in doc.RootElement.EnumerateObject()) args[p.Name] = p.Value.Clone();
                return new FunctionCallContent(id, call.Name, args);
            }
        }
        catch (JsonException e) { error = e; } // the parser passes valid JSON only; kept so nothing escapes as a crash
        return new FunctionCallContent(id, call.Name)
        {
            Exception = new InvalidOperationException($"The arguments of the model's call to \"{call.Name}\" are not a JSON object: {call.ArgumentsJson}", error),
        };
    }

    internal static UsageDetails ToUsage(GenerationResult r, int thinkEndId)
    {
        // Reasoning is what came before </think>; an output that never closed it (the prompt opened <think>) is all reasoning.
        int end = r.TokenIds.ToList().IndexOf(thinkEndId);
        int reasoning = r.Reasoning.Length == 0 ? 0 : end >= 0 ? end : r.Usage.GeneratedTokens;
        var u = r.Usage;
        return new()
        {
            InputTokenCount = u.PromptTokens,
            OutputTokenCount = u.GeneratedTokens,
            TotalTokenCount = u.TotalTokens,
            CachedInputTokenCount = u.CachedPromptTokens,
            ReasoningTokenCount = reasoning,
        };
    }

    internal static AdditionalPropertiesDictionary Timings(GenerationUsage u) => new()
    {
        [TimeToFirstTokenMsKey] = u.TimeToFirstToken.TotalMilliseconds,
        [DecodeTokensPerSecondKey] = u.DecodeTokensPerSecond,
        [PrefillTokensPerSecondKey] = u.PrefillTokensPerSecond,
        [TotalMsKey] = u.TotalTime.TotalMilliseconds,
    };

    internal static ChatFinishReason ToFinishReason(FinishReason reason, bool toolCalls) => reason switch
    {
        FinishReason.MaxTokens or FinishReason.MaxContext => ChatFinishReason.Length,
        _ when toolCalls => ChatFinishReason.ToolCalls,
        _ => ChatFinishReason.Stop,
    };

    private static string ArgumentsJson(IDictionary<string, object?>? arguments)
    {
        if (arguments is null || arguments.Count == 0) return "{}";
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            foreach (var (k, v) in arguments)
            {
                w.WritePropertyName(k);
                WriteValue(w, v);
            }
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private static string ResultText(FunctionResultContent r) => r.Result switch
    {
        null => r.Exception is { } e ? $"Error: {e.Message}" : "",
        string s => s,
        JsonElement e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText(),
        var other => JsonSerializer.Serialize(other, AIJsonUtilities.DefaultOptions.GetTypeInfo(other.GetType())),
    };

    private static void WriteValue(Utf8JsonWriter w, object? v)
    {
        switch (v)
        {
            case null: w.WriteNullValue(); break;
            case JsonElement e: e.WriteTo(w); break;
            case string s: w.WriteStringValue(s); break;
            case bool b: w.WriteBooleanValue(b); break;
            default:
                JsonSerializer.Serialize(w, v, AIJsonUtilities.DefaultOptions.GetTypeInfo(v.GetType()));
                break;
        }
    }
}

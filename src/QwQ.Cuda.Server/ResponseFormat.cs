using QwQ.Cuda.Generation;

namespace QwQ.Cuda.Server;

/// <summary>How one endpoint turns a generation into OpenAI's JSON: whole, or as stream chunks.</summary>
internal abstract class ResponseFormat(string id, string model)
{
    protected string Id { get; } = id;
    protected string Model { get; } = model;
    protected long Created { get; } = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>The first chunk of a stream (before any text), or null.</summary>
    public abstract object? Start();

    /// <summary>The chunk for one update, or null when it sends nothing.</summary>
    public abstract object? Chunk(GenerationUpdate update);

    /// <summary>The last chunk with choices: the finish reason.</summary>
    public abstract object Finish(string finishReason);

    /// <summary>The chunk after the last (stream_options.include_usage): no choices, the usage.</summary>
    public abstract object UsageChunk(Usage usage);

    /// <summary>The non-streamed response.</summary>
    public abstract object Whole(GenerationResult result, string finishReason, Usage usage);

    /// <summary>Whether parsed tool calls are reported (tools were offered); they turn finish_reason "stop" into "tool_calls".</summary>
    public virtual bool ReportsToolCalls => false;

    /// <summary>Tool calls streamed so far.</summary>
    public virtual bool ReportedToolCalls => false;
}

/// <summary>/v1/chat/completions: reasoning_content, content and tool_calls.</summary>
internal sealed class ChatFormat(string id, string model, bool reportToolCalls) : ResponseFormat(id, model)
{
    private int _toolCalls;

    public override bool ReportsToolCalls => reportToolCalls;

    public override bool ReportedToolCalls => _toolCalls > 0;

    private ChatChunk With(Delta delta, string? finish = null) => new(Id, Created, Model, [new ChunkChoice(0, delta, finish)]);

    public override object Start() => With(new Delta(Role: "assistant", Content: ""));

    public override object? Chunk(GenerationUpdate u) => u.Kind switch
    {
        GenerationUpdateKind.Reasoning => With(new Delta(ReasoningContent: u.Text)),
        GenerationUpdateKind.Answer => With(new Delta(Content: u.Text)),
        GenerationUpdateKind.ToolCall when reportToolCalls => With(new Delta(ToolCalls: [ToolCallOut.From(u.ToolCall!, _toolCalls++)])),
        _ => null,
    };

    public override object Finish(string finishReason) => With(new Delta(), finishReason);

    public override object UsageChunk(Usage usage) => new ChatChunk(Id, Created, Model, [], usage);

    public override object Whole(GenerationResult r, string finishReason, Usage usage)
    {
        var calls = reportToolCalls && r.ToolCalls.Count > 0 ? r.ToolCalls.Select(c => ToolCallOut.From(c)).ToList() : null;
        // Beside calls, whitespace (the newline between two blocks) is no answer: content null, as OpenAI gives it.
        var message = new AssistantMessage(
            calls is not null && string.IsNullOrWhiteSpace(r.Answer) ? null : r.Answer,
            r.Reasoning.Length > 0 ? r.Reasoning : null,
            calls);
        return new ChatCompletion(Id, Created, Model, [new ChatChoice(0, message, finishReason)], usage);
    }
}

/// <summary>
/// /v1/completions: the generated text, unparsed (<see cref="ChatSession"/>'s raw stream): the streamed chunks add up to
/// the non-streamed text, the <c>&lt;/think&gt;</c> marker and tool-call blocks included.
/// </summary>
internal sealed class CompletionFormat(string id, string model) : ResponseFormat(id, model)
{
    private TextCompletion With(string text, string? finish = null) => new(Id, Created, Model, [new TextChoice(0, text, finish)], null);

    public override object? Start() => null;

    public override object? Chunk(GenerationUpdate u) =>
        u.Kind is GenerationUpdateKind.Reasoning or GenerationUpdateKind.Answer ? With(u.Text) : null;

    public override object Finish(string finishReason) => With("", finishReason);

    public override object UsageChunk(Usage usage) => new TextCompletion(Id, Created, Model, [], usage);

    public override object Whole(GenerationResult r, string finishReason, Usage usage) =>
        new TextCompletion(Id, Created, Model, [new TextChoice(0, r.Text, finishReason)], usage);
}

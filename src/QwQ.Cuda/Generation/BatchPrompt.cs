using QwQ.Cuda.Text;

namespace QwQ.Cuda.Generation;

/// <summary>
/// One prompt of <see cref="QwqModel.GenerateBatchAsync"/>: a conversation (the chat template is applied, as a
/// session does) or raw prompt text (tokenized as is), with its own options. Exactly one of
/// <see cref="Messages"/> and <see cref="RawText"/> is set.
/// </summary>
public sealed record BatchPrompt
{
    /// <summary>The caller's name for this prompt; results carry it (they arrive in completion order, not input order).</summary>
    public required string Id { get; init; }

    /// <summary>The conversation to answer (the model writes the next assistant turn).</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }

    /// <summary>Prompt text used without the chat template.</summary>
    public string? RawText { get; init; }

    /// <summary>Sampling (seed included), max new tokens, stop strings; null: the model's defaults.</summary>
    public GenerationOptions? Options { get; init; }

    /// <summary>A one-message conversation: <paramref name="message"/> as the user's turn.</summary>
    public static BatchPrompt User(string id, string message, GenerationOptions? options = null) =>
        new() { Id = id, Messages = [ChatMessage.User(message)], Options = options };
}

/// <summary>
/// One finished prompt of <see cref="QwqModel.GenerateBatchAsync"/>: its <see cref="GenerationResult"/> (text split
/// into reasoning and answer, token ids and counts, finish reason, timings), or, when the prompt itself was invalid
/// (e.g. longer than the context), <see cref="Error"/> saying why.
/// </summary>
public sealed record BatchResult(string Id, GenerationResult? Result, string? Error = null);

using QwQ.Cuda.Errors;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Generation;

/// <summary>What one generation may do. Defaults: the model's sampling defaults, run until end of sequence or a full context.</summary>
public sealed record GenerationOptions
{
    /// <summary>Sampling parameters; null takes the model's defaults (generation_config.json).</summary>
    public SamplingOptions? Sampling { get; init; }

    /// <summary>Most new tokens to generate; null: until end of sequence or the context is full.</summary>
    public int? MaxNewTokens { get; init; }

    /// <summary>Strings that end generation; the stop string itself is not returned.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>End-of-sequence token ids; null takes generation_config.json's (<c>&lt;|im_end|&gt;</c> 151645, <c>&lt;|endoftext|&gt;</c> 151643 for QwQ).</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }

    /// <summary>
    /// Count the prompt's tokens for the penalties too (transformers' repetition_penalty does this);
    /// off: only generated tokens are penalised (OpenAI's presence/frequency penalty semantics).
    /// </summary>
    public bool PenalizePrompt { get; init; }

    /// <summary>
    /// Parse the answer's <c>&lt;tool_call&gt;</c> blocks into tool calls (default); false leaves them in the answer
    /// as text, for callers that offered no tools and so report no calls (the server without tools or under
    /// <c>tool_choice: "none"</c>, <c>QwqChatClient</c> without tools or under <c>ChatToolMode.None</c>).
    /// </summary>
    public bool ParseToolCalls { get; init; } = true;

    /// <summary>
    /// End the generation as soon as the first tool call is complete (its <c>&lt;/tool_call&gt;</c>), so the result holds at
    /// most one call and nothing after it is generated: OpenAI's <c>parallel_tool_calls: false</c>, Microsoft.Extensions.AI's
    /// <c>AllowMultipleToolCalls = false</c>. The finish reason is then <see cref="FinishReason.StopString"/> with
    /// <c>&lt;/tool_call&gt;</c> as <see cref="GenerationResult.StopString"/> (it stays in the result's Text: it closes the call).
    /// </summary>
    public bool StopAfterFirstToolCall { get; init; }

    /// <summary>The most prompt tokens appended in one forward pass; cancellation is checked between chunks. 0: all at once.</summary>
    public int PrefillChunk { get; init; } = 2048;

    /// <summary>Throws <see cref="OptionException"/> naming the first bad value.</summary>
    public void Validate()
    {
        Sampling?.Validate();
        if (MaxNewTokens is < 1)
            throw new OptionException($"max new tokens = {MaxNewTokens} must be at least 1 (--max-tokens)");
        if (PrefillChunk < 0)
            throw new OptionException($"prefill chunk = {PrefillChunk} must not be negative");
        foreach (var s in StopStrings)
            if (string.IsNullOrEmpty(s))
                throw new OptionException("a stop string is empty (--stop): give non-empty text");
    }
}

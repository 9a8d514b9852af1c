using QwQ.Cuda.Text;

namespace QwQ.Cuda.Generation;

/// <summary>What a <see cref="GenerationUpdate"/> carries.</summary>
public enum GenerationUpdateKind
{
    /// <summary>Text of the model's reasoning (between <c>&lt;think&gt;</c> and <c>&lt;/think&gt;</c>).</summary>
    Reasoning,
    /// <summary>Text of the answer (after <c>&lt;/think&gt;</c>, outside tool calls).</summary>
    Answer,
    /// <summary>A complete tool call parsed from a <c>&lt;tool_call&gt;</c> block.</summary>
    ToolCall,
    /// <summary>The last update: finish reason, usage and timings in <see cref="GenerationUpdate.Result"/>.</summary>
    Completed,
}

/// <summary>
/// One streamed piece of a generation. A struct, so streaming allocates only the text itself.
/// </summary>
public readonly record struct GenerationUpdate(
    GenerationUpdateKind Kind,
    string Text,
    ToolCall? ToolCall = null,
    GenerationResult? Result = null)
{
    public static GenerationUpdate Completed(GenerationResult result) => new(GenerationUpdateKind.Completed, "", null, result);
}

/// <summary>The whole of one generation.</summary>
public sealed record GenerationResult
{
    public required FinishReason FinishReason { get; init; }
    public required GenerationUsage Usage { get; init; }

    /// <summary>Everything generated, as text (reasoning, <c>&lt;/think&gt;</c>, answer, tool calls), without a stop string.</summary>
    public required string Text { get; init; }

    /// <summary>The reasoning part (empty when the model did not think).</summary>
    public string Reasoning { get; init; } = "";

    /// <summary>The answer part, tool-call blocks removed.</summary>
    public string Answer { get; init; } = "";

    public IReadOnlyList<ToolCall> ToolCalls { get; init; } = [];

    /// <summary>Generated token ids (an end-of-sequence token included).</summary>
    public IReadOnlyList<int> TokenIds { get; init; } = [];

    /// <summary>The stop string that ended the text, when <see cref="FinishReason"/> is StopString.</summary>
    public string? StopString { get; init; }
}

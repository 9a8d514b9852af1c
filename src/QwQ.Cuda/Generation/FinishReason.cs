namespace QwQ.Cuda.Generation;

/// <summary>Why a generation ended.</summary>
public enum FinishReason
{
    /// <summary>The model produced an end-of-sequence token (<c>&lt;|im_end|&gt;</c>, <c>&lt;|endoftext|&gt;</c>).</summary>
    EndOfSequence,
    /// <summary>The text reached one of the stop strings (which is not part of the output).</summary>
    StopString,
    /// <summary>The maximum number of new tokens was generated.</summary>
    MaxTokens,
    /// <summary>The sequence's KV cache is full (the context length is reached).</summary>
    MaxContext,
    /// <summary>The caller's CancellationToken fired; the sequence keeps every token it appended.</summary>
    Cancelled,
}

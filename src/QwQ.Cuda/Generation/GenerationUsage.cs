namespace QwQ.Cuda.Generation;

/// <summary>Token counts and timings of one generation.</summary>
public sealed record GenerationUsage
{
    /// <summary>Tokens in the whole prompt (cached ones included).</summary>
    public int PromptTokens { get; init; }

    /// <summary>
    /// Prompt tokens reused from the KV cache (not recomputed): what the sequence already held (a session's earlier
    /// turns) and whole 64-token blocks found in the prefix cache (another request's identical prompt start).
    /// </summary>
    public int CachedPromptTokens { get; init; }

    /// <summary>Prompt tokens actually run through the model (prefill).</summary>
    public int PrefilledTokens => PromptTokens - CachedPromptTokens;

    /// <summary>Tokens sampled (an end-of-sequence token counts).</summary>
    public int GeneratedTokens { get; init; }

    /// <summary>From the start of the call to the first sampled token (prefill + first sample).</summary>
    public TimeSpan TimeToFirstToken { get; init; }

    public TimeSpan PrefillTime { get; init; }

    /// <summary>From the first sampled token to the last (covers GeneratedTokens − 1 decode steps).</summary>
    public TimeSpan DecodeTime { get; init; }

    public TimeSpan TotalTime { get; init; }

    public double PrefillTokensPerSecond => PrefillTime > TimeSpan.Zero ? PrefilledTokens / PrefillTime.TotalSeconds : 0;

    public double DecodeTokensPerSecond => GeneratedTokens > 1 && DecodeTime > TimeSpan.Zero ? (GeneratedTokens - 1) / DecodeTime.TotalSeconds : 0;

    public int TotalTokens => PromptTokens + GeneratedTokens;
}

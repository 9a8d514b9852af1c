namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// Incremental decoding with the CPU reference: <see cref="Append"/> runs only the new tokens against the
/// cached K/V of earlier ones, exactly as the GPU engine does, and must agree with a full
/// <see cref="Qwen2CpuModel.Forward"/> recompute.
/// </summary>
public sealed class CpuKvSession
{
    private readonly Qwen2CpuModel _model;
    private readonly CpuKvCache _cache;

    /// <summary>Tokens currently in the cache.</summary>
    public int Length { get; private set; }
    public int MaxContext { get; }

    internal CpuKvSession(Qwen2CpuModel model, int maxContext)
    {
        if (maxContext <= 0) throw new ArgumentOutOfRangeException(nameof(maxContext), "must be positive");
        _model = model;
        MaxContext = maxContext;
        _cache = new CpuKvCache(model.Config, maxContext);
    }

    /// <summary>Processes <paramref name="tokens"/> at positions Length.. and returns the last position's logits <c>[vocab]</c>.</summary>
    public float[] Append(ReadOnlySpan<int> tokens, ActivationSink? sink = null)
    {
        if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
        if (Length + tokens.Length > MaxContext)
            throw new InvalidOperationException($"session holds {Length} of {MaxContext} tokens; cannot append {tokens.Length} more");

        var normed = _model.Decode(tokens, Length, _cache, sink);
        Length += tokens.Length;
        int h = _model.Config.HiddenSize;
        return _model.Logits(normed.AsSpan((tokens.Length - 1) * h, h), 1, sink);
    }

    /// <summary>Forgets every token at position ≥ <paramref name="length"/> (their K/V are overwritten by later appends).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
            throw new ArgumentOutOfRangeException(nameof(length), $"must be in [0, {Length}]");
        Length = length;
    }
}

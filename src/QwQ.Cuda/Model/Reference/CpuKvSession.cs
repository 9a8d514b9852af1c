using QwQ.Cuda.Batching;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// Incremental decoding with the CPU reference: <see cref="Append"/> runs only the new tokens against the
/// cached K/V of earlier ones, exactly as the GPU engine does, and must agree with a full
/// <see cref="Qwen2CpuModel.Forward"/> recompute. A single sequence with a paged KV pool of its own (the
/// backend's sequences share one pool instead: <c>CpuReferenceBackend</c>).
/// </summary>
public sealed class CpuKvSession
{
    private readonly Qwen2CpuModel _model;
    private readonly CpuKvBlocks _kv;
    private readonly KvBlockTable _table;

    /// <summary>Tokens currently in the cache.</summary>
    public int Length => _table.Length;
    public int MaxContext { get; }
    /// <summary>How the session's cache stores K and V (<see cref="KvCacheKind"/>).</summary>
    public KvCacheKind KvCache => _kv.Kind;

    internal CpuKvSession(Qwen2CpuModel model, int maxContext, KvCacheKind kvCache = KvCacheKind.Bf16)
    {
        if (maxContext <= 0) throw new ArgumentOutOfRangeException(nameof(maxContext), "must be positive");
        _model = model;
        MaxContext = maxContext;
        _kv = CpuKvBlocks.ForPositions(model.Config, maxContext, kvCache);
        _table = new KvBlockTable(_kv.Pool);
    }

    /// <summary>Processes <paramref name="tokens"/> at positions Length.. and returns the last position's logits <c>[vocab]</c>.</summary>
    public float[] Append(ReadOnlySpan<int> tokens)
    {
        if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
        if (Length + tokens.Length > MaxContext)
            throw new InvalidOperationException($"session holds {Length} of {MaxContext} tokens; cannot append {tokens.Length} more");

        int start = Length;
        _table.Reserve(start, start + tokens.Length, _kv.CopyBlock);
        return _model.StepLogits(_kv, [new CpuBatchRows(tokens.ToArray(), start, _table, _model.Rope)], CancellationToken.None);
    }

    /// <summary>Forgets every token at position ≥ <paramref name="length"/> (their K/V are overwritten by later appends).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
            throw new ArgumentOutOfRangeException(nameof(length), $"must be in [0, {Length}]");
        _table.Truncate(length);
    }
}

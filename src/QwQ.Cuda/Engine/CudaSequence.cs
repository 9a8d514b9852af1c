using QwQ.Cuda.Batching;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One sequence on the GPU and everything that belongs to it: its tokens, its KV block table in the backend's
/// shared pool, the logits of its last appended position and its penalty counts. Creating one allocates no KV;
/// its blocks come from the pool as it grows (docs/ENGINE_V2.md). Forward passes go through
/// <see cref="CudaBackend.Step"/>, which may batch it with other sequences.
/// </summary>
internal sealed class CudaSequence : ISequence
{
    private readonly CudaBackend _backend;
    private readonly List<int> _tokens = [];
    private readonly DeviceBuffer _logits; // fp32 [vocab]   logits of the last appended position
    private readonly DeviceBuffer _counts; // int32 [vocab]  token counts for the penalties
    private bool _disposed;

    public CudaSequence(CudaBackend backend, int capacity, KvBlockTable table)
    {
        CacheRope = backend.ShortRope;
        _backend = backend;
        Capacity = capacity;
        Table = table;
        int vocab = backend.Config.VocabSize;
        _logits = DeviceBuffer.Allocate(4L * vocab);
        try { _counts = DeviceBuffer.Allocate(4L * vocab); }
        catch { _logits.Dispose(); throw; }
        _counts.Memset32(0, backend.Stream);
    }

    internal CudaBackend Backend => _backend;
    internal KvBlockTable Table { get; }
    internal List<int> TokenList => _tokens;
    internal ulong LogitsPtr => _logits.Ptr;
    internal ulong CountsPtr => _counts.Ptr;
    /// <summary>Whether <see cref="LogitsPtr"/> holds the logits of the current last position.</summary>
    internal bool HasLogits { get; set; }

    /// <summary>
    /// The rope its cached keys were written in; null while a switch rewrites them (adaptive rope scaling: a step whose
    /// length asks for another rope runs the sequence again from position 0, <c>CudaBackend.PartFor</c>).
    /// </summary>
    internal RopeParameters? CacheRope { get; set; }

    /// <summary>
    /// Whether its cached keys were re-rotated (<see cref="RopeSwitchMethod.Rerotate"/>): then they are close to, not
    /// exactly, what the rope writes, and none of its blocks go into the prefix cache until it is emptied.
    /// </summary>
    internal bool KeysTurned { get; set; }

    public int Length => _tokens.Count;
    public int Capacity { get; }
    public IReadOnlyList<int> Tokens => _tokens;

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Append(ReadOnlySpan<int> tokens, CancellationToken ct = default)
    {
        if (tokens.IsEmpty) return;
        _backend.Step([new SequenceChunk(this, tokens.ToArray())], ct);
    }

    public int AttachCachedPrefix(ReadOnlySpan<int> tokens)
    {
        ThrowIfDisposed();
        lock (_backend.Gate)
        {
            if (Length != 0) throw new InvalidOperationException($"the sequence holds {Length} tokens; a cached prefix attaches only to an empty one");
            tokens = tokens[..Math.Min(tokens.Length, Capacity)];
            // Cached blocks hold short-rope keys (RopePlan.MayPublish): useless to a sequence whose tokens end in the other
            // rope, whose first step would run them all again.
            if (!_backend.PrefixCacheServes(tokens.Length)) return 0;
            int reused = Table.AttachCachedPrefix(tokens);
            _tokens.AddRange(tokens[..reused]);
            CacheRope = _backend.ShortRope; // only blocks of the short rope are published (RopePlan.MayPublish)
            HasLogits = false;
            return reused;
        }
    }

    public ISequence Fork()
    {
        ThrowIfDisposed();
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            var child = new CudaSequence(_backend, Capacity, Table.Fork());
            child._tokens.AddRange(_tokens);
            (child.CacheRope, child.KeysTurned) = (CacheRope, KeysTurned);
            child._logits.CopyFromDevice(_logits.Ptr, _logits.Bytes, 0, _backend.Stream);
            child._counts.CopyFromDevice(_counts.Ptr, _counts.Bytes, 0, _backend.Stream);
            child.HasLogits = HasLogits;
            return child;
        }
    }

    /// <summary>
    /// Logits for chosen positions of <paramref name="tokens"/> appended now (tests compare them with the
    /// reference). Positions are relative to <paramref name="tokens"/>; one step, so at most a workspace's rows.
    /// </summary>
    internal float[] AppendWithLogits(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions) =>
        _backend.AppendWithLogits(this, tokens, positions);

    public bool RecomputesAt(int length)
    {
        ThrowIfDisposed();
        return _backend.RecomputesAt(this, length);
    }

    public void Truncate(int length)
    {
        ThrowIfDisposed();
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        if (length == Length) return;
        lock (_backend.Gate)
        {
            Table.Truncate(length);
            _tokens.RemoveRange(length, _tokens.Count - length);
            // Emptied, it starts again in the short rope; truncated below an adaptive switch it switches back at its
            // next step (a step, not Truncate, takes the blocks that needs).
            if (length == 0) (CacheRope, KeysTurned) = (_backend.ShortRope, false);
            HasLogits = false;
        }
    }

    public void ResetPenalties()
    {
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            _backend.Sampler.Reset(_backend.Stream, _counts.Ptr);
        }
    }

    public void RecordForPenalties(ReadOnlySpan<int> tokens)
    {
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            _backend.Sampler.Record(_backend.Stream, tokens, _counts.Ptr);
        }
    }

    public int Sample(SamplingOptions options, long step)
    {
        ThrowIfDisposed();
        lock (_backend.Gate)
        {
            if (!HasLogits) throw new InvalidOperationException("no logits to sample from: append at least one token first");
            _backend.Context.MakeCurrent();
            return _backend.Sampler.Sample(_backend.Stream, _logits.Ptr, _counts.Ptr, options, step);
        }
    }

    public void CopyLastLogits(Span<float> destination)
    {
        ThrowIfDisposed();
        lock (_backend.Gate)
        {
            if (!HasLogits) throw new InvalidOperationException("no logits: append at least one token first");
            _backend.Context.MakeCurrent();
            _backend.Stream.Synchronize();
            _logits.CopyToHost(destination[.._backend.Config.VocabSize]);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_backend.Gate)
        {
            if (_backend.IsDisposed) return; // the context and everything in it are gone already
            _backend.Context.MakeCurrent();
            _backend.Stream.Synchronize();
            Table.Dispose();
            _logits.Dispose();
            _counts.Dispose();
        }
    }
}

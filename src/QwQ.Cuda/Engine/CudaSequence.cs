using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One sequence on the GPU: its KV cache, and the decode step captured once as a CUDA graph. The graph's only
/// inputs are {token, position, ctx_len}, copied from pinned host memory by the graph's first node, so each
/// decode step is one graph launch, a sampler launch and one 4-byte read back.
/// </summary>
internal sealed class CudaSequence : ISequence
{
    private readonly CudaBackend _backend;
    private readonly KvCache _cache;
    private readonly PinnedHostBuffer _stepHost; // int32 [4]: token, position, ctx_len
    private CudaGraph? _decodeGraph;
    private bool _disposed;

    public CudaSequence(CudaBackend backend, int capacity)
    {
        _backend = backend;
        _cache = new KvCache(backend.Config, capacity);
        _stepHost = PinnedHostBuffer.Allocate(16);
    }

    public int Length { get; private set; }
    public int Capacity => _cache.Capacity;

    private readonly List<int> _tokens = [];
    public IReadOnlyList<int> Tokens => _tokens;

    /// <summary>No prefix cache until the paged GPU engine lands.</summary>
    public int AttachCachedPrefix(ReadOnlySpan<int> tokens) => 0;

    public ISequence Fork() => throw new NotSupportedException("GPU fork lands with the paged GPU engine");

    public void Append(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens.IsEmpty) return;
        if (Length + tokens.Length > Capacity)
            throw new OptionException(
                $"the sequence would need {Length + tokens.Length} positions but its KV cache holds {Capacity}; " +
                "shorten the prompt or raise --max-context");
        int vocab = _backend.Config.VocabSize;
        foreach (int t in tokens)
            if ((uint)t >= (uint)vocab)
                throw new OptionException($"token id {t} is outside the model's vocabulary of {vocab} rows");

        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            if (tokens.Length == 1 && Length > 0) DecodeOne(tokens[0]);
            else Prefill(tokens);
        }
        _tokens.AddRange(tokens);
    }

    private void Prefill(ReadOnlySpan<int> tokens)
    {
        var (s, fwd, ws) = (_backend.Stream, _backend.Forward, _backend.Workspace);
        int chunk = ws.Chunk;
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            var part = tokens.Slice(start, Math.Min(chunk, tokens.Length - start));
            s.Synchronize(); // the previous chunk has finished reading Ids
            ws.Ids.CopyFromHost(part);
            fwd.Prefill(s, _cache, part.Length, Length);
            Length += part.Length;
            if (start + part.Length == tokens.Length)
                fwd.LastLogits(s, part.Length - 1);
        }
    }

    private void DecodeOne(int token)
    {
        var (s, ws) = (_backend.Stream, _backend.Workspace);
        s.Synchronize(); // the pinned step buffer is free: the previous step has consumed it
        Span<int> step = _stepHost.AsSpan<int>();
        step[0] = token;
        step[1] = Length;
        step[2] = Length + 1;
        if (_backend.Options.UseCudaGraphs)
        {
            _decodeGraph ??= CudaGraph.Capture(s, () => RecordDecode(s, ws));
            _decodeGraph.Launch(s);
        }
        else RecordDecode(s, ws);
        Length++;
    }

    private void RecordDecode(CudaStream s, Workspace ws)
    {
        ws.Step.CopyFromHostAsync(_stepHost.Ptr, 12, 0, s);
        _backend.Forward.Decode(s, _cache);
    }

    /// <summary>
    /// Logits for chosen positions of <paramref name="tokens"/> appended now (tests compare them with the
    /// reference). Rows are chunk-relative positions into <paramref name="tokens"/>; the sequence must be short
    /// enough for one chunk.
    /// </summary>
    internal float[] AppendWithLogits(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        var (s, fwd, ws) = (_backend.Stream, _backend.Forward, _backend.Workspace);
        if (tokens.Length > ws.Chunk || positions.Length > ws.LogitRows)
            throw new ArgumentException($"at most {ws.Chunk} tokens and {ws.LogitRows} logit rows per call");
        if (Length + tokens.Length > Capacity) throw new OptionException("sequence exceeds its KV cache");
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            s.Synchronize();
            ws.Ids.CopyFromHost(tokens);
            fwd.Prefill(s, _cache, tokens.Length, Length);
            Length += tokens.Length;
            _tokens.AddRange(tokens);
            s.Synchronize();
            ws.LogitRowsIdxBuffer.CopyFromHost(positions);
            fwd.LogitsForRows(s, tokens.Length, positions.Length);
            var result = new float[positions.Length * _backend.Config.VocabSize];
            s.Synchronize();
            ws.CopyLogits(result);
            // leave the last appended position's logits in row 0 for Sample, as Append does
            fwd.LastLogits(s, tokens.Length - 1);
            return result;
        }
    }

    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        _tokens.RemoveRange(length, _tokens.Count - length);
        Length = length; // positions ≥ length are overwritten by the next append; attention never reads past ctx_len
    }

    public void ResetPenalties()
    {
        lock (_backend.Gate) _backend.Sampler.Reset(_backend.Stream);
    }

    public void RecordForPenalties(ReadOnlySpan<int> tokens)
    {
        lock (_backend.Gate) _backend.Sampler.Record(_backend.Stream, tokens);
    }

    public int Sample(SamplingOptions options, long step)
    {
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            return _backend.Sampler.Sample(_backend.Stream, _backend.Workspace.Logits, options, step);
        }
    }

    public void CopyLastLogits(Span<float> destination)
    {
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            _backend.Stream.Synchronize();
            _backend.Workspace.CopyLogits(destination[.._backend.Config.VocabSize]);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (_backend.Gate)
        {
            _backend.Context.MakeCurrent();
            _backend.Stream.Synchronize();
            _decodeGraph?.Dispose();
            _cache.Dispose();
            _stepHost.Dispose();
        }
    }
}

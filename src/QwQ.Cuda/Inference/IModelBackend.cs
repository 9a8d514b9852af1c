using QwQ.Cuda.Config;

namespace QwQ.Cuda.Inference;

/// <summary>
/// A loaded model's forward pass: the CUDA engine (<c>QwQ.Cuda.Engine.CudaBackend</c>) or the plain
/// float32 CPU reference (<c>CpuReferenceBackend</c>, for small models and CI). Generation, sessions and
/// the chat client are written against this, so the same loop is tested on the CPU and run on the GPU.
/// </summary>
public interface IModelBackend : IDisposable
{
    ModelConfig Config { get; }

    /// <summary>One line for humans, e.g. "NVIDIA H100 80GB HBM3, 78.2 GiB free".</summary>
    string DeviceDescription { get; }

    /// <summary>The most positions a sequence can hold on this backend (KV cache sized from free memory).</summary>
    int MaxContext { get; }

    /// <summary>The paged KV pool's bookkeeping, shared by all sequences.</summary>
    Batching.KvBlockPool KvPool { get; }

    /// <summary>One forward pass over rows from many sequences (TEMPORARY doc; see docs/ENGINE_V2.md).</summary>
    void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default);

    /// <summary>Opens a sequence with its own KV cache of <paramref name="maxContext"/> positions (null: <see cref="MaxContext"/>).</summary>
    ISequence CreateSequence(int? maxContext = null);
}

/// <summary>
/// One token sequence and its KV cache. Not thread-safe: one caller at a time.
/// </summary>
/// <summary>One sequence's next-token draw in a batched sample: its options and its RNG step.</summary>
public readonly record struct SampleRequest(ISequence Sequence, Sampling.SamplingOptions Options, long Step);

public readonly record struct SequenceChunk(ISequence Sequence, ReadOnlyMemory<int> Tokens);

public interface ISequence : IDisposable
{
    IReadOnlyList<int> Tokens { get; }
    ISequence Fork();
    /// <summary>Positions already in the KV cache.</summary>
    int Length { get; }

    /// <summary>The most positions this sequence can hold.</summary>
    int Capacity { get; }

    /// <summary>
    /// Runs the forward pass over <paramref name="tokens"/> placed at positions Length.. (prefill when there are many,
    /// decode when there is one) and leaves the last position's logits ready for <see cref="Sample"/>.
    /// Throws <see cref="Errors.OptionException"/> if Length + tokens.Length exceeds Capacity.
    /// <para>
    /// A long prefill runs in chunks and checks <paramref name="cancellationToken"/> before each: once it fires, Append
    /// throws <see cref="OperationCanceledException"/> and the sequence keeps the chunks that completed (Length says
    /// how many), and Sample needs another Append first.
    /// </para>
    /// </summary>
    void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default);

    /// <summary>Forgets positions ≥ <paramref name="length"/> so a shared prefix can be reused.</summary>
    void Truncate(int length);

    /// <summary>Clears the token counts that presence/frequency/repetition penalties use (start of a generation).</summary>
    void ResetPenalties();

    /// <summary>Adds tokens to the penalty counts (e.g. the prompt, where a caller wants HF's repetition penalty over it).</summary>
    void RecordForPenalties(ReadOnlySpan<int> tokens);

    /// <summary>Samples the next token from the last logits; the token is counted for penalties. <paramref name="step"/> feeds the seeded RNG.</summary>
    int Sample(Sampling.SamplingOptions options, long step);

    /// <summary>Copies the last position's logits, [vocab] fp32 (tests, debugging; not on the hot path).</summary>
    void CopyLastLogits(Span<float> destination);
}

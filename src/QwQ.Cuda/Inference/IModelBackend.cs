using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;

namespace QwQ.Cuda.Inference;

/// <summary>
/// A loaded model's forward pass: the CUDA engine (<c>QwQ.Cuda.Engine.CudaBackend</c>) or the plain
/// float32 CPU reference (<c>CpuReferenceBackend</c>, for small models and CI). Generation, sessions and
/// the chat client are written against this, so the same loop is tested on the CPU and run on the GPU.
/// Sequences keep their KV in one paged pool (<see cref="KvPool"/>); <see cref="Step"/> runs rows of many
/// sequences in one forward pass (docs/ENGINE_V2.md).
/// </summary>
public interface IModelBackend : IDisposable
{
    ModelConfig Config { get; }

    /// <summary>One line for humans, e.g. "NVIDIA H100 80GB HBM3, 78.2 GiB free".</summary>
    string DeviceDescription { get; }

    /// <summary>The most positions a sequence can hold on this backend.</summary>
    int MaxContext { get; }

    /// <summary>The KV blocks every sequence of this backend draws from (free blocks, prefix cache).</summary>
    KvBlockPool KvPool { get; }

    /// <summary>
    /// Opens an empty sequence that may grow to <paramref name="maxContext"/> positions (null: <see cref="MaxContext"/>).
    /// Allocates no KV: blocks are taken from <see cref="KvPool"/> as it grows.
    /// </summary>
    ISequence CreateSequence(int? maxContext = null);

    /// <summary>
    /// One forward pass over the rows of every item (their tokens laid end to end): each item appends its tokens to
    /// its sequence, and its last row's logits are kept by that sequence (<see cref="ISequence.Sample"/> reads them).
    /// Items must name distinct sequences of this backend. Throws <see cref="KvPoolExhaustedException"/> before
    /// anything runs when the pool cannot hold the new positions, <see cref="Errors.OptionException"/> when an item
    /// exceeds its sequence's capacity or names a token outside the vocabulary. All or nothing: when it throws
    /// (cancellation included), no sequence changed.
    /// </summary>
    void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default);

    /// <summary>
    /// The next token of many sequences at once, each from its own logits and penalty counts with its own options and
    /// step: exactly what each <see cref="ISequence.Sample"/> would return (the GPU needs one synchronisation for all).
    /// Where a sequence's logits leave no token (every one −∞ or NaN after bias and penalties: NaN weights, or a
    /// logit_bias that bans the rest) its slot gets <see cref="SampleRequest.NoToken"/> and nothing is counted, while
    /// the other rows are sampled as usual; that sequence's own <see cref="ISequence.Sample"/> throws the reason.
    /// Invalid options or a sequence without logits throw before any row is sampled.
    /// </summary>
    void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens);
}

/// <summary>One item of <see cref="IModelBackend.Step"/>: <paramref name="Tokens"/> to append to <paramref name="Sequence"/>.</summary>
/// <param name="FinalLength">
/// The length the caller will bring the sequence to with tokens it already has (a long prompt appended chunk by chunk
/// over several steps); 0 or less than the length after this chunk: this chunk ends it. Adaptive rope scaling runs the
/// rope of the larger of the two, so a prompt that ends past the switch runs YaRN from its first chunk and no chunk is
/// computed twice.
/// </param>
public readonly record struct SequenceChunk(ISequence Sequence, ReadOnlyMemory<int> Tokens, int FinalLength = 0);

/// <summary>One sequence's next-token draw in a batched sample: its options and its RNG step.</summary>
public readonly record struct SampleRequest(ISequence Sequence, Sampling.SamplingOptions Options, long Step)
{
    /// <summary>The token of a row with nothing to sample (<see cref="IModelBackend.Sample"/>).</summary>
    public const int NoToken = Sampling.NoTokenLeft.Token;
}

/// <summary>
/// One token sequence: the tokens whose KV is in the pool, the last appended position's logits and the token
/// counts that sampling penalties use. Its state is its own, so any interleaving of calls across sequences gives
/// each what it gets alone. Not thread-safe: one caller at a time.
/// </summary>
public interface ISequence : IDisposable
{
    /// <summary>Positions already in the KV cache.</summary>
    int Length { get; }

    /// <summary>The most positions this sequence can hold.</summary>
    int Capacity { get; }

    /// <summary>The tokens whose KV is in the cache, in position order (<see cref="Length"/> of them).</summary>
    IReadOnlyList<int> Tokens { get; }

    /// <summary>
    /// Runs the forward pass over <paramref name="tokens"/> placed at positions Length.. (prefill when there are many,
    /// decode when there is one) and leaves the last position's logits ready for <see cref="Sample"/>: a
    /// <see cref="IModelBackend.Step"/> of this one sequence. Throws <see cref="Errors.OptionException"/> if
    /// Length + tokens.Length exceeds Capacity, <see cref="KvPoolExhaustedException"/> if the pool is full.
    /// <para>
    /// A long prefill runs in chunks and checks <paramref name="cancellationToken"/> before each: once it fires, Append
    /// throws <see cref="OperationCanceledException"/> and the sequence keeps the chunks that completed (Length says
    /// how many), and Sample needs another Append first.
    /// </para>
    /// </summary>
    void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default);

    /// <summary>Forgets positions ≥ <paramref name="length"/> so a shared prefix can be reused; gives back blocks past it.</summary>
    void Truncate(int length);

    /// <summary>
    /// Whether the step that brings this sequence to <paramref name="length"/> positions first runs every position it
    /// holds again: with adaptive rope scaling, when that length asks for the other rope than its cache was written in
    /// (the switch to YaRN past the switch position, or back to plain after a truncation below it). A step does that
    /// recompute inside itself, so the whole sequence is one step's work; <see cref="Batching.BatchScheduler"/> instead
    /// empties the sequence and appends its tokens again in bounded chunks (<see cref="SequenceChunk.FinalLength"/>),
    /// so the other sequences of a batch keep decoding meanwhile. False for an empty sequence and in the other modes.
    /// </summary>
    bool RecomputesAt(int length);

    /// <summary>
    /// On an empty sequence: reuses the KV of the longest run of cached full blocks that hold <paramref name="tokens"/>'
    /// first positions, never all of them (the last must be appended for its logits). Returns the positions reused
    /// (now <see cref="Length"/>); the caller appends <c>tokens[result..]</c>. A backend without a prefix cache returns 0,
    /// and so does adaptive rope scaling when <paramref name="tokens"/> end past the switch (cached blocks hold plain
    /// keys, and such a sequence runs YaRN from position 0).
    /// </summary>
    int AttachCachedPrefix(ReadOnlySpan<int> tokens);

    /// <summary>
    /// A new sequence with the same tokens, last logits and penalty counts, sharing this one's KV blocks; a block is
    /// copied only when one of the two writes into it (copy-on-write). Dispose each independently.
    /// </summary>
    ISequence Fork();

    /// <summary>Clears the token counts that presence/frequency/repetition penalties use (start of a generation).</summary>
    void ResetPenalties();

    /// <summary>Adds tokens to the penalty counts (e.g. the prompt, where a caller wants HF's repetition penalty over it).</summary>
    void RecordForPenalties(ReadOnlySpan<int> tokens);

    /// <summary>Samples the next token from the last logits; the token is counted for penalties. <paramref name="step"/> feeds the seeded RNG.</summary>
    int Sample(Sampling.SamplingOptions options, long step);

    /// <summary>Copies the last position's logits, [vocab] fp32 (tests, debugging; not on the hot path).</summary>
    void CopyLastLogits(Span<float> destination);
}

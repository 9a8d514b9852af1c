using System.Threading.Channels;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Batching;

/// <summary>
/// One generation for <see cref="BatchScheduler"/>: append <paramref name="Prompt"/> to <paramref name="Sequence"/>
/// (which may already hold earlier turns), then sample up to <paramref name="MaxNewTokens"/> tokens, each appended
/// before the next is sampled, until one of <paramref name="EosTokenIds"/>. The sequence is the scheduler's until
/// the request completes: use it from nowhere else meanwhile.
/// </summary>
public sealed record GenerationRequest(
    ISequence Sequence,
    IReadOnlyList<int> Prompt,
    SamplingOptions Sampling,
    int MaxNewTokens,
    IReadOnlyList<int> EosTokenIds,
    CancellationToken CancellationToken = default)
{
    /// <summary>
    /// Tokens counted for the sampling penalties before the first draw (e.g. the whole prompt, for transformers'
    /// repetition penalty); null: only generated tokens are penalised. The scheduler resets the counts at admission,
    /// so a caller cannot record them on the sequence beforehand.
    /// </summary>
    public IReadOnlyList<int>? PenalizedTokens { get; init; }
}

/// <summary>What <see cref="BatchScheduler.Submit"/> returns.</summary>
public sealed class GenerationHandle
{
    private int _cachedPromptTokens;

    internal GenerationHandle(ChannelReader<int> tokens, Task<FinishReason> completion) => (Tokens, Completion) = (tokens, completion);

    /// <summary>
    /// Every sampled token as it is sampled (an end-of-sequence token included, as the last). Completes when the
    /// request ends; with the request's exception when it fails.
    /// </summary>
    public ChannelReader<int> Tokens { get; }

    /// <summary>
    /// Why the request ended. Faults with <see cref="KvPoolExhaustedException"/> when the request alone does not fit
    /// the KV pool, with <see cref="ObjectDisposedException"/> when the scheduler is disposed first.
    /// </summary>
    public Task<FinishReason> Completion { get; }

    /// <summary>
    /// Prompt tokens whose KV came from the pool's prefix cache instead of being computed: the whole cached blocks
    /// (<see cref="KvBlockPool.BlockSize"/> positions each) the scheduler attached to the empty sequence, so always
    /// less than the prompt. 0 when none matched, and when the sequence already held tokens (what it held is the
    /// caller's to count). Known once the first token has been read (0 before); a request that is preempted and
    /// recomputed reports the fewest that any of its runs reused, which is what it never computed.
    /// </summary>
    public int CachedPromptTokens => Volatile.Read(ref _cachedPromptTokens);

    internal void SetCachedPromptTokens(int count) => Volatile.Write(ref _cachedPromptTokens, count);
}

/// <summary>What the scheduler has done so far (monitoring, tests).</summary>
/// <param name="RopeRecomputes">Requests whose sequence was run again from position 0 in chunks because its length crossed
/// the adaptive rope switch (<see cref="Inference.ISequence.RecomputesAt"/>).</param>
public readonly record struct SchedulerCounters(long Steps, long Preemptions, int LargestBatch, long RopeRecomputes = 0);

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Batching;

/// <summary>How much <see cref="BatchScheduler"/> puts into one step and how many requests it runs at once.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Items (sequences) in one step, decode rows and prefill chunks together: the GPU's largest captured decode batch.</summary>
    public int MaxBatch { get; init; } = 128;

    /// <summary>Prefill rows in one step, across all prefilling requests: bounds a step's time so running requests keep streaming.</summary>
    public int PrefillTokensPerStep { get; init; } = 2048;

    /// <summary>Requests admitted at once (holding KV); at most <see cref="MaxBatch"/>, so every one gets its row each step.</summary>
    public int MaxSequences { get; init; } = 128;

    /// <summary>
    /// The most rows (tokens) one step gives the backend: a decode row for each running request beside at most
    /// <see cref="PrefillTokensPerStep"/> prefill rows. An engine whose workspace holds this many runs every step in one
    /// pass; a larger one would hold activations no step uses (the CLI sizes the engine's prefill chunk by it).
    /// </summary>
    public int MaxRowsPerStep => PrefillTokensPerStep + MaxSequences;

    /// <summary>How long <see cref="BatchScheduler.Dispose()"/> waits for the step in flight.</summary>
    public TimeSpan DisposeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Throws <see cref="OptionException"/> naming the first invalid value.</summary>
    public void Validate()
    {
        if (MaxBatch < 1) throw new OptionException($"MaxBatch must be at least 1, got {MaxBatch}.");
        if (PrefillTokensPerStep < 1) throw new OptionException($"PrefillTokensPerStep must be at least 1, got {PrefillTokensPerStep}.");
        if (MaxSequences < 1 || MaxSequences > MaxBatch)
            throw new OptionException($"MaxSequences must be in [1, MaxBatch = {MaxBatch}], got {MaxSequences}.");
        if (DisposeTimeout < TimeSpan.Zero) throw new OptionException($"DisposeTimeout must not be negative, got {DisposeTimeout}.");
    }
}

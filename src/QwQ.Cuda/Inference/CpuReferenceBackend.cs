using System.Globalization;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Inference;

/// <summary>
/// <see cref="IModelBackend"/> over the float32 CPU reference (<see cref="Qwen2CpuModel"/>) and <see cref="CpuSampler"/>.
/// Slow and memory-hungry (4 bytes a parameter), so meant for tiny models, tests and CI: the generation loop,
/// sessions and the chat client run on it exactly as on the GPU. Sequences share the read-only weights; each
/// sequence is single-caller, and different sequences may run on different threads.
/// </summary>
public sealed class CpuReferenceBackend : IModelBackend
{
    private readonly Qwen2CpuModel _model;
    private readonly int _validVocab;
    private readonly ulong? _seed;

    /// <param name="maxContext">Positions a sequence may hold (null: the model's maximum, see MemoryPlan.ModelMaxPositions).</param>
    /// <param name="validVocab">The tokenizer's size: ids at or above it are never sampled (null: config vocab_size).</param>
    /// <param name="samplerSeed">Seed for sampling when the options give none (null: a random one per sequence).</param>
    public CpuReferenceBackend(ModelConfig config, CpuWeights weights, int? maxContext = null, int? validVocab = null, ulong? samplerSeed = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        if (maxContext is < 1) throw new OptionException($"max context {maxContext} must be at least 1");
        int modelMax = MemoryPlan.ModelMaxPositions(config);
        if (maxContext > modelMax)
            throw new OptionException($"--max-context {maxContext} exceeds the model's {modelMax} positions");
        Config = config;
        _model = new Qwen2CpuModel(config, weights);
        MaxContext = maxContext ?? modelMax;
        _validVocab = Math.Min(validVocab ?? config.VocabSize, config.VocabSize);
        _seed = samplerSeed;
    }

    /// <summary>
    /// Loads a checkpoint directory as float32 (validated against <paramref name="config"/> first), or builds
    /// deterministic random weights when <paramref name="checkpointDir"/> is null (seed: <see cref="EngineOptions.SyntheticSeed"/>).
    /// </summary>
    public static CpuReferenceBackend Load(ModelConfig config, string? checkpointDir, EngineOptions? options = null,
        IProgress<LoadProgress>? progress = null, CancellationToken cancellationToken = default, int? validVocab = null)
    {
        options ??= new EngineOptions();
        cancellationToken.ThrowIfCancellationRequested();
        long total = checked(config.ParameterCount * 4);
        CheckHostMemory(total, "the CPU reference backend keeps every weight in float32: this model",
            "It is meant for small test models; use --backend cuda.");
        progress?.Report(new LoadProgress(checkpointDir is null ? "synthetic weights" : "loading weights", 0, total));
        CpuWeights weights;
        if (checkpointDir is null)
        {
            weights = CpuWeights.Random(config, unchecked((int)options.SyntheticSeed));
        }
        else
        {
            using var checkpoint = SafetensorsCheckpoint.Open(checkpointDir);
            weights = CpuWeights.Load(checkpoint, config);
        }
        cancellationToken.ThrowIfCancellationRequested();
        progress?.Report(new LoadProgress("weights loaded", total, total));
        return new CpuReferenceBackend(config, weights, options.MaxContext, validVocab);
    }

    public ModelConfig Config { get; }

    public string DeviceDescription => $"CPU float32 reference ({Environment.ProcessorCount} cores)";

    public int MaxContext { get; }

    public Batching.KvBlockPool KvPool { get; } = new(1); // TEMPORARY: the CPU pool lands from branch e1

    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
    {
        foreach (var item in items) item.Sequence.Append(item.Tokens.Span, ct);
    }

    public ISequence CreateSequence(int? maxContext = null)
    {
        int capacity = maxContext ?? MaxContext;
        if (capacity < 1) throw new OptionException($"max context {capacity} must be at least 1");
        if (capacity > MaxContext)
            throw new OptionException($"a sequence of {capacity} positions exceeds this backend's maximum of {MaxContext}");
        // The fp32 cache is allocated whole up front; a config with millions of positions must not take the host down.
        CheckHostMemory(checked(2L * 4 * Config.NumHiddenLayers * Config.KvDim * capacity),
            $"on the CPU reference backend a KV cache of {capacity} positions", "Pass a smaller --max-context.");
        return new CpuSequence(_model.CreateSession(capacity), new CpuSampler(Config.VocabSize, _validVocab, _seed), Config.VocabSize);
    }

    /// <summary>Refuses an allocation of more than half the memory the process may use, before trying it.</summary>
    private static void CheckHostMemory(long bytes, string what, string fix)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available / 2)
            throw new OptionException(string.Create(CultureInfo.InvariantCulture,
                $"{what} needs {bytes / 1e9:F1} GB of host memory and {available / 1e9:F1} GB is available. {fix}"));
    }

    /// <summary>Nothing to free: the weights are managed arrays.</summary>
    public void Dispose() { }

    /// <summary>Prompt tokens the CPU reference runs per forward pass: the most a cancellation waits for.</summary>
    internal const int PrefillChunk = 128;

    private sealed class CpuSequence(CpuKvSession session, CpuSampler sampler, int vocab) : ISequence
    {
        private float[]? _logits; // [vocab] fp32 of the last appended position; null until an Append
        private bool _disposed;

        public int Length => session.Length;

        public int Capacity => session.MaxContext;

        private readonly List<int> _tokens = [];
        public IReadOnlyList<int> Tokens => _tokens;
        public ISequence Fork() => throw new NotSupportedException("TEMPORARY: CPU fork lands from branch e1");

        public void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
            if (Length + tokens.Length > Capacity)
                throw new OptionException($"the sequence holds {Length} of {Capacity} positions; {tokens.Length} more do not fit (raise --max-context or shorten the prompt)");
            foreach (int t in tokens)
                if ((uint)t >= (uint)vocab)
                    throw new OptionException($"token id {t} is outside the model's vocabulary of {vocab}");
            // In chunks, so a cancelled prefill stops within one: in one pass, Ctrl+C during a 1.5k-token prompt took
            // 22.6 s to be noticed. Chunking changes no result: each position attends to the cached ones either way.
            for (int start = 0; start < tokens.Length; start += PrefillChunk)
            {
                cancellationToken.ThrowIfCancellationRequested();
                _logits = session.Append(tokens.Slice(start, Math.Min(PrefillChunk, tokens.Length - start)));
            }
        }

        public void Truncate(int length)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int before = Length;
            session.Truncate(length);
            // The logits belonged to the old last position; a Sample needs an Append first.
            if (length < before) _logits = null;
        }

        public void ResetPenalties() => sampler.Reset();

        public void RecordForPenalties(ReadOnlySpan<int> tokens) => sampler.Record(tokens);

        public int Sample(SamplingOptions options, long step) => sampler.Sample(LastLogits(), options, step);

        public void CopyLastLogits(Span<float> destination) => LastLogits().CopyTo(destination);

        private float[] LastLogits()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _logits ?? throw new InvalidOperationException("no logits: append at least one token after creating or truncating the sequence");
        }

        public void Dispose() => _disposed = true;
    }
}

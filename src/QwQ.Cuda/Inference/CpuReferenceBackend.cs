using System.Runtime.InteropServices;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Weights;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Inference;

/// <summary>
/// <see cref="IModelBackend"/> over the float32 CPU reference (<see cref="Qwen2CpuModel"/>) and <see cref="CpuSampler"/>.
/// Slow and memory-hungry (4 bytes a parameter), so meant for tiny models, tests and CI: the generation loop,
/// sessions, the scheduler and the chat client run on it exactly as on the GPU, paged KV pool, batched steps,
/// copy-on-write and prefix reuse included. Sequences share the read-only weights and the pool; each sequence is
/// single-caller, different sequences may be used from different threads, and one step runs at a time.
/// <para>
/// Rope scaling (<see cref="EngineOptions.RopeScaling"/>): Static and Off run one rope everywhere. Adaptive decides per
/// sequence at every step: the rope of its length after the step (<see cref="RopePlan.ForLength"/>; for
/// <see cref="ISequence.Append"/>, the length after the whole append). When that differs from the rope its cache was
/// written in, the step first takes every block of the sequence for itself (copy-on-write of any block a fork or the
/// prefix cache shares, counted with the step's other reservations), then rewrites the cache in the new rope: it runs
/// the whole sequence from position 0 (<see cref="RopeSwitchMethod.Recompute"/>, so the cache is exactly what a
/// static-YaRN run writes; re-rotating the keys is exact in the first layer only, see <see cref="RopeSwitchMethod"/>).
/// That is the switch to YaRN of a sequence growing past the switch position, and also the switch back of one
/// truncated below it: a sequence's logits depend on its tokens only, never on how long it once was. The switch back
/// happens at the next step, not in Truncate, so Truncate never needs blocks.
/// </para>
/// <para>
/// KV cache (<see cref="EngineOptions.KvCache"/>): with Fp8, every K and V head vector goes through the fp8 format as it is
/// written into the pool (<see cref="KvCacheFp8"/>, docs/KV_CACHE.md), and attention reads what it gives back. Forks, copy-on-write
/// and the prefix cache copy the stored values, so a shared prefix reads exactly what an unshared one would.
/// </para>
/// </summary>
public sealed class CpuReferenceBackend : IModelBackend
{
    private readonly Qwen2CpuModel _model;
    private readonly CpuKvBlocks _kv;
    private readonly Lock _stepGate = new(); // one pass at a time: a step's reservations and KV writes go together
    private readonly int _validVocab;
    private readonly ulong? _seed;
    private readonly RopePlan _rope;

    /// <param name="maxContext">Positions a sequence may hold (null: the model's maximum, see MemoryPlan.ModelMaxPositions).</param>
    /// <param name="validVocab">The tokenizer's size: ids at or above it are never sampled (null: config vocab_size).</param>
    /// <param name="samplerSeed">Seed for sampling when the options give none (null: a random one per sequence).</param>
    /// <param name="kvPoolPositions">
    /// Positions the shared KV pool holds, rounded up to whole blocks (null: 4 × maxContext, room for four full
    /// sequences). Block memory is allocated on first use, so a big pool costs only what sequences fill.
    /// </param>
    /// <param name="ropeScaling">See <see cref="EngineOptions.RopeScaling"/> (null: adaptive when the config has YaRN, as on the GPU engine).</param>
    /// <param name="ropeSwitchPosition">See <see cref="EngineOptions.RopeSwitchPosition"/> (Adaptive only).</param>
    /// <param name="ropeSwitch">See <see cref="EngineOptions.RopeSwitch"/> (Adaptive only).</param>
    /// <param name="kvCache">
    /// See <see cref="EngineOptions.KvCache"/>: with Fp8, keys and values go through the fp8 format as they are written
    /// (<see cref="KvCacheFp8"/>), and every sequence attends to what it gives back.
    /// </param>
    public CpuReferenceBackend(ModelConfig config, CpuWeights weights, int? maxContext = null, int? validVocab = null,
        ulong? samplerSeed = null, int? kvPoolPositions = null, RopeScalingMode? ropeScaling = null, int? ropeSwitchPosition = null,
        KvCacheKind kvCache = KvCacheKind.Bf16, RopeSwitchMethod ropeSwitch = RopeSwitchMethod.Recompute)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        if (maxContext is < 1) throw new OptionException($"max context {maxContext} must be at least 1");
        if (kvPoolPositions is < 1) throw new OptionException($"a KV pool of {kvPoolPositions} positions must hold at least 1");
        CheckKvCache(kvCache);
        int modelMax = MemoryPlan.ModelMaxPositions(config);
        if (maxContext > modelMax)
            throw new OptionException($"--max-context {maxContext} exceeds the model's {modelMax} positions");
        _rope = RopePlan.Resolve(config, ropeScaling, ropeSwitchPosition, ropeSwitch);
        Config = config;
        _model = new Qwen2CpuModel(config, weights);
        MaxContext = maxContext ?? modelMax;
        _kv = CpuKvBlocks.ForPositions(config, kvPoolPositions ?? 4L * MaxContext, kvCache);
        _validVocab = Math.Min(validVocab ?? config.VocabSize, config.VocabSize);
        _seed = samplerSeed;
    }

    /// <summary>The largest model the reference loads: 32 GB of fp32 weights (8B parameters).</summary>
    public const long MaxReferenceBytes = 32_000_000_000;

    /// <summary>
    /// Loads a checkpoint directory as float32 (validated against <paramref name="config"/> first), or builds
    /// deterministic random weights when <paramref name="checkpointDir"/> is null (seed: <see cref="EngineOptions.SyntheticSeed"/>).
    /// </summary>
    public static CpuReferenceBackend Load(ModelConfig config, string? checkpointDir, EngineOptions? options = null,
        IProgress<LoadProgress>? progress = null, CancellationToken cancellationToken = default, int? validVocab = null)
    {
        options ??= new EngineOptions();
        cancellationToken.ThrowIfCancellationRequested();
        RopePlan.Resolve(config, options.RopeScaling, options.RopeSwitchPosition, options.RopeSwitch); // a bad option fails before the weights load
        CheckKvCache(options.KvCache);
        bool int4 = options.Quantize == QuantizeMode.Int4 && Int4Applies(config);
        // The checkpoint is checked against the config before the memory check (headers only): weights under another
        // model's config are that fault, not a model too big for this backend.
        using var checkpoint = checkpointDir is null ? null : SafetensorsCheckpoint.Open(checkpointDir);
        if (checkpoint is not null) CheckpointValidator.Validate(checkpoint, config);
        long total = config.ParameterCount * 4;
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        // Half the host memory, and never a full-size model: at 32B parameters one fp32 token takes minutes, even where
        // a 512 GB host could hold the weights.
        if (total > Math.Min(available / 2, MaxReferenceBytes))
            throw new OptionException(
                $"the CPU reference backend keeps every weight in float32: this model needs {total / 1e9:F1} GB of host memory " +
                $"and it takes at most {Math.Min(available / 2, MaxReferenceBytes) / 1e9:F1} GB (half the {available / 1e9:F1} GB available, " +
                $"and never over {MaxReferenceBytes / 1e9:F0} GB). It is meant for small test models; use --backend cuda.");
        progress?.Report(new LoadProgress(checkpointDir is null ? "synthetic weights" : "loading weights", 0, total));
        CpuWeights weights;
        if (checkpointDir is null)
        {
            weights = CpuWeights.Random(config, unchecked((int)options.SyntheticSeed));
        }
        else
        {
            weights = CpuWeights.Load(checkpoint!, config);
        }
        if (options.Quantize == QuantizeMode.Fp8) weights = QuantizeFp8(weights);
        else if (int4) weights = QuantizeInt4(weights);
        cancellationToken.ThrowIfCancellationRequested();
        progress?.Report(new LoadProgress("weights loaded", total, total));
        return new CpuReferenceBackend(config, weights, options.MaxContext, validVocab,
            ropeScaling: options.RopeScaling, ropeSwitchPosition: options.RopeSwitchPosition, kvCache: options.KvCache, ropeSwitch: options.RopeSwitch);
    }

    private static void CheckKvCache(KvCacheKind kind)
    {
        if (kind is not (KvCacheKind.Bf16 or KvCacheKind.Fp8))
            throw new OptionException($"KV cache kind {kind} is not one of bf16 or fp8");
    }

    /// <summary>
    /// --quantize fp8 on the reference: every layer's linear weight quantized per output row exactly as the GPU
    /// quantizer does (scale amax / 448, codes rounded to nearest even) and dequantized back to fp32, so CPU and GPU
    /// runs of an fp8 model compute with the same weights. Embedding, norms, biases and lm_head stay as they are.
    /// </summary>
    internal static CpuWeights QuantizeFp8(CpuWeights w) => w.WithLayerLinears(static (m, rows, cols) =>
    {
        var codes = new byte[m.Length];
        var scales = new float[rows];
        Weights.Quantization.Fp8E4M3.QuantizePerChannel(m, rows, cols, codes, scales);
        var result = new float[m.Length];
        for (int r = 0; r < rows; r++)
            Weights.Quantization.Fp8E4M3.ToFloat(codes.AsSpan(r * cols, cols), scales[r], result.AsSpan(r * cols, cols));
        return result;
    });

    /// <summary>
    /// --quantize int4 on the reference: every layer's linear weight quantized by <see cref="Int4Rtn"/> (round to
    /// nearest, a scale and zero point per 128 inputs of a row) and dequantized back to fp32, the weights the GPU's
    /// int4 layers stand for (its quantizer computes the same codes, scales and zeros). Embedding, norms, biases and
    /// lm_head stay as they are. Call <see cref="Int4Applies"/> first: this throws on sizes the group does not divide.
    /// </summary>
    internal static CpuWeights QuantizeInt4(CpuWeights w) =>
        w.WithLayerLinears(static (m, rows, cols) => Int4Rtn.RoundTrip(m, rows, cols, Int4Rtn.DefaultGroupSize));

    /// <summary>
    /// Whether --quantize int4 quantizes this model's weights, as the GPU engine decides (<c>CudaBackend.LinearKind</c>),
    /// before any weight loads: a bf16 one yes, when the group of 128 divides every layer input size (hidden, q,
    /// intermediate; refused otherwise); an AWQ checkpoint is INT4 already and runs as it is (false: not rounded a
    /// second time); an FP8 one (or any other quantized layout) is refused.
    /// </summary>
    internal static bool Int4Applies(ModelConfig config)
    {
        switch (config.Quantization)
        {
            case null:
                Int4Rtn.EnsureGroupsDivide(config);
                return true;
            case AwqQuantizationConfig:
                return false; // --quantize int4 on an AWQ checkpoint asks for what it is
            default:
                throw new OptionException($"--quantize int4 takes a bf16 checkpoint, and this one is already {config.Quantization.Description}; " +
                                          "drop --quantize, or use the bf16 or AWQ checkpoint");
        }
    }

    public ModelConfig Config { get; }

    public string DeviceDescription => $"CPU float32 reference ({Environment.ProcessorCount} cores)";

    public int MaxContext { get; }

    /// <summary>How the shared KV pool stores K and V.</summary>
    internal KvCacheKind KvCache => _kv.Kind;

    /// <summary>The rope scaling this backend runs (Off whenever the config has no YaRN).</summary>
    internal RopeScalingMode RopeScaling => _rope.Mode;

    public KvBlockPool KvPool => _kv.Pool;

    public ISequence CreateSequence(int? maxContext = null)
    {
        int capacity = maxContext ?? MaxContext;
        if (capacity < 1) throw new OptionException($"max context {capacity} must be at least 1");
        if (capacity > MaxContext)
            throw new OptionException($"a sequence of {capacity} positions exceeds this backend's maximum of {MaxContext}");
        // Blocks are allocated as the sequence grows; one that could grow past half the host's memory is refused now,
        // not when it takes the host down (a config may claim 16M positions of a 1024-layer model: 2.2 TB of fp32 KV).
        long bytes = checked(2L * 4 * Config.NumHiddenLayers * Config.KvDim * capacity);
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available / 2)
            throw new OptionException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"on the CPU reference backend a KV cache of {capacity} positions needs {bytes / 1e9:F1} GB of host memory and {available / 1e9:F1} GB is available. Pass a smaller --max-context."));
        return new CpuSequence(this, capacity, new KvBlockTable(_kv.Pool), new CpuSampler(Config.VocabSize, _validVocab, _seed));
    }

    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default) => RunStep(items, ct);

    /// <summary>
    /// <see cref="Step"/>. An item's rope is that of its length after the step or of its
    /// <see cref="SequenceChunk.FinalLength"/>, the longer: Append passes the length after the whole append, so a prompt
    /// that ends past the switch runs YaRN from its first chunk (exactly the static-YaRN forward, no plain chunks to redo).
    /// </summary>
    private void RunStep(ReadOnlySpan<SequenceChunk> items, CancellationToken ct)
    {
        if (items.IsEmpty) throw new ArgumentException("a step needs at least one item", nameof(items));
        var sequences = new CpuSequence[items.Length];
        var rows = new CpuBatchRows[items.Length];
        var lengths = new int[items.Length];      // each sequence's length before the step: what a failed step goes back to
        var writeFrom = new int[items.Length];    // first position whose block must be the sequence's own
        var rerotate = new bool[items.Length];    // cached keys turn to rows[i].Rope before the pass
        var distinct = new HashSet<CpuSequence>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < items.Length; i++)
        {
            var seq = items[i].Sequence as CpuSequence;
            if (seq is null || seq.Owner != this)
                throw new ArgumentException($"item {i} names a sequence of another backend; create it with this backend's CreateSequence", nameof(items));
            if (!distinct.Add(seq))
                throw new ArgumentException($"item {i} names a sequence that an earlier item already names; join their tokens into one item", nameof(items));
            seq.CheckAppend(items[i].Tokens.Span);
            sequences[i] = seq;
            lengths[i] = writeFrom[i] = seq.Length;
            int length = Math.Max(seq.Length + items[i].Tokens.Length, items[i].FinalLength);
            var rope = _rope.ForLength(length);
            rows[i] = new CpuBatchRows(items[i].Tokens, seq.Length, seq.Table, rope);
            if (ReferenceEquals(seq.CacheRope, rope) || seq.Length == 0) continue;
            // The sequence changes rope: every block it holds is rewritten (copied first where shared).
            writeFrom[i] = 0;
            if (!_rope.Recomputes(seq.Length, seq.CacheRope, length)) // what RecomputesAt told the caller
                rerotate[i] = true;
            else // recompute: the pass runs the whole sequence from position 0 in the new rope
                rows[i] = new CpuBatchRows((int[])[.. seq.Tokens, .. items[i].Tokens.Span], 0, seq.Table, rope);
        }
        ct.ThrowIfCancellationRequested();

        lock (_stepGate)
        {
            Reserve(rows, writeFrom, lengths, rerotate);
            for (int i = 0; i < rows.Length; i++)
            {
                if (ReferenceEquals(sequences[i].CacheRope, rows[i].Rope)) continue;
                if (rerotate[i])
                {
                    _kv.RerotateKeys(rows[i].Table, rows[i].StartPos, sequences[i].CacheRope!, rows[i].Rope);
                    sequences[i].KeysTurned = true;
                }
                // Re-rotated keys are in the new rope whatever becomes of the pass. A recompute rewrites them layer by
                // layer: until it completes they are in no rope at all, and a sequence whose pass fails recomputes at its
                // next step, whichever rope its length then asks for.
                sequences[i].CacheRope = rerotate[i] || lengths[i] == 0 ? rows[i].Rope : null;
            }
            float[] logits; // [items, vocab]
            try
            {
                logits = _model.StepLogits(_kv, rows, ct);
            }
            catch
            {
                for (int i = 0; i < rows.Length; i++) rows[i].Table.Truncate(lengths[i]); // positions half written: the step never happened
                throw;
            }
            int vocab = Config.VocabSize;
            for (int i = 0; i < sequences.Length; i++)
            {
                sequences[i].CacheRope = rows[i].Rope;
                sequences[i].Commit(items[i].Tokens.Span, logits.AsSpan(i * vocab, vocab));
            }
        }
    }

    public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens)
    {
        if (tokens.Length < requests.Length) throw new ArgumentException("one token slot per request", nameof(tokens));
        // Every check before any row is sampled (and counted), as the interface promises.
        foreach (var r in requests)
        {
            if (r.Sequence is not CpuSequence seq || seq.Owner != this)
                throw new ArgumentException("a sequence does not belong to this backend", nameof(requests));
            if (!seq.HasLogits) throw new InvalidOperationException("no logits to sample from: append at least one token first");
            r.Options.Validate(_validVocab);
        }
        for (int i = 0; i < requests.Length; i++)
            tokens[i] = ((CpuSequence)requests[i].Sequence).TrySample(requests[i].Options, requests[i].Step);
    }

    /// <summary>
    /// Backs every item's new positions, or none of them (throwing <see cref="KvPoolExhaustedException"/>), and makes the
    /// blocks from <paramref name="writeFrom"/> on each sequence's own: an item that changes rope rewrites all its blocks,
    /// so it copies those a fork or the prefix cache shares instead of changing them under the other reader; one that
    /// re-rotates (<paramref name="evictCached"/>) takes those only the prefix cache describes out of it instead, as the GPU backend does.
    /// </summary>
    private void Reserve(CpuBatchRows[] rows, int[] writeFrom, int[] lengths, bool[] evictCached)
    {
        var pool = _kv.Pool;
        int needed = 0;
        for (int i = 0; i < rows.Length; i++)
            needed += rows[i].Table.BlocksNeeded(writeFrom[i], rows[i].StartPos + rows[i].Tokens.Length, evictCached[i]);
        int free = pool.FreeBlocks;
        if (needed > free) throw new KvPoolExhaustedException(needed, free, pool.TotalBlocks, pool.BlockSize);
        int done = 0;
        try
        {
            for (; done < rows.Length; done++)
                rows[done].Table.Reserve(writeFrom[done], rows[done].StartPos + rows[done].Tokens.Length, _kv.CopyBlock, evictCached[done]);
        }
        catch
        {
            // Another thread's sequence took blocks since the count above (only AttachCachedPrefix and Fork run outside the gate).
            for (int i = 0; i < done; i++) rows[i].Table.Truncate(lengths[i]);
            throw;
        }
    }

    /// <summary>Prompt tokens the CPU reference runs per forward pass in <see cref="ISequence.Append"/>: the most a cancellation waits for.</summary>
    internal const int PrefillChunk = 128;

    /// <summary>Nothing to free: the weights and KV blocks are managed arrays.</summary>
    public void Dispose() { }

    private sealed class CpuSequence(CpuReferenceBackend owner, int capacity, KvBlockTable table, CpuSampler sampler) : ISequence
    {
        private readonly List<int> _tokens = [];   // [Length] tokens whose KV the table holds

        /// <summary>
        /// The rope the cache was written in (an empty sequence's: the plan's for length 0); null while a recompute into
        /// another rope is unfinished (a failed step), which makes the next step recompute.
        /// </summary>
        public RopeParameters? CacheRope { get; set; } = owner._rope.ForLength(0);

        /// <summary>Whether its keys were re-rotated (close to, not exactly, the rope's): then it publishes no blocks until emptied.</summary>
        public bool KeysTurned { get; set; }
        private float[]? _logits;                  // [vocab] fp32 of the last appended position; null until an Append
        private bool _disposed;

        public CpuReferenceBackend Owner => owner;
        public KvBlockTable Table => table;
        public int Length => _tokens.Count;
        public int Capacity => capacity;
        public IReadOnlyList<int> Tokens => _tokens;

        public void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default)
        {
            // In chunks, so a cancelled prefill stops within one: in one pass, Ctrl+C during a 1.5k-token prompt took
            // 22.6 s to be noticed. Chunking changes no result: each position attends to the cached ones either way.
            if (tokens.IsEmpty) CheckAppend(tokens);
            int finalLength = Length + tokens.Length;
            for (int start = 0; start < tokens.Length; start += PrefillChunk)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var part = tokens.Slice(start, Math.Min(PrefillChunk, tokens.Length - start));
                owner.RunStep([new SequenceChunk(this, part.ToArray(), finalLength)], cancellationToken);
            }
        }

        /// <summary>The checks of <see cref="Step"/> that concern this sequence alone.</summary>
        public void CheckAppend(ReadOnlySpan<int> tokens)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
            if (Length + tokens.Length > Capacity)
                throw new OptionException($"the sequence holds {Length} of {Capacity} positions; {tokens.Length} more do not fit (raise --max-context or shorten the prompt)");
            int vocab = owner.Config.VocabSize;
            foreach (int t in tokens)
                if ((uint)t >= (uint)vocab)
                    throw new OptionException($"token id {t} is outside the model's vocabulary of {vocab}");
        }

        /// <summary>A step appended <paramref name="tokens"/>: keep them, their last logits, and publish filled blocks.</summary>
        public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> lastLogits)
        {
            _tokens.AddRange(tokens);
            _logits = lastLogits.ToArray();
            if (owner._rope.MayPublish(CacheRope) && !KeysTurned) table.PublishFullBlocks(CollectionsMarshal.AsSpan(_tokens));
        }

        public int AttachCachedPrefix(ReadOnlySpan<int> tokens)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (Length != 0) throw new InvalidOperationException($"the sequence holds {Length} tokens; a cached prefix attaches only to an empty one");
            CacheRope = owner._rope.ForLength(0); // what cached blocks hold (RopePlan.MayPublish)
            tokens = tokens[..Math.Min(tokens.Length, Capacity)];
            // useless to a sequence whose tokens end in the other rope: its first step would run them all again
            if (!owner._rope.PrefixCacheServes(tokens.Length)) return 0;
            int reused = table.AttachCachedPrefix(tokens);
            _tokens.AddRange(tokens[..reused]);
            return reused;
        }

        public ISequence Fork()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var copy = new CpuSampler(sampler.VocabRows, sampler.ValidVocab, sampler.DefaultSeed);
            var counts = sampler.Counts;
            for (int id = 0; id < counts.Length; id++)
                for (int c = 0; c < counts[id]; c++) copy.Record(new ReadOnlySpan<int>(in id));
            // The fork shares every block, keys in this sequence's rope; whichever of the two re-rotates later copies them first.
            var fork = new CpuSequence(owner, capacity, table.Fork(), copy) { _logits = _logits, CacheRope = CacheRope, KeysTurned = KeysTurned };
            fork._tokens.AddRange(_tokens);
            return fork;
        }

        public bool RecomputesAt(int length)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return owner._rope.Recomputes(Length, CacheRope, length);
        }

        public void Truncate(int length)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if ((uint)length > (uint)Length) throw new ArgumentOutOfRangeException(nameof(length), $"must be in [0, {Length}]");
            table.Truncate(length);
            // The logits belonged to the old last position; a Sample needs an Append first.
            if (length < Length) _logits = null;
            _tokens.RemoveRange(length, _tokens.Count - length);
            // Nothing cached, nothing to turn back: an empty sequence starts over in the rope of length 0. A non-empty one
            // keeps its keys as they are until the next step, which turns them if its length asks for the other rope.
            if (length == 0) (CacheRope, KeysTurned) = (owner._rope.ForLength(0), false);
        }

        public void ResetPenalties() => sampler.Reset();

        public void RecordForPenalties(ReadOnlySpan<int> tokens) => sampler.Record(tokens);

        public int Sample(SamplingOptions options, long step) => sampler.Sample(LastLogits(), options, step);

        internal bool HasLogits => _logits is not null;

        /// <summary>As <see cref="Sample"/>, with <see cref="NoTokenLeft.Token"/> where no token is left (the batch's form).</summary>
        internal int TrySample(SamplingOptions options, long step) => sampler.TrySample(LastLogits(), options, step);

        public void CopyLastLogits(Span<float> destination) => LastLogits().CopyTo(destination);

        private float[] LastLogits()
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _logits ?? throw new InvalidOperationException("no logits: append at least one token after creating or truncating the sequence");
        }

        /// <summary>Gives the KV blocks back to the pool.</summary>
        public void Dispose()
        {
            _disposed = true;
            table.Dispose();
        }
    }
}

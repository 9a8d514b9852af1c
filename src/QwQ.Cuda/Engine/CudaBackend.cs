using System.Runtime.InteropServices;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Weights;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Engine;

/// <summary>
/// The CUDA engine (nano-vllm's model runner): owns the GPUs' parts of the model (<see cref="DeviceRank"/>: context,
/// stream, weights, kernels, cuBLAS, activation workspace, paged KV pool), the host bookkeeping of the KV pool and the
/// sampler's scratch. Sequences own their tokens, block tables, logits and penalty counts. One stream per GPU: every
/// launch is ordered, and a step needs no host synchronisation until a sampled token is read. With tensor parallel
/// (<see cref="EngineOptions.TensorParallel"/>) every GPU runs each step over its shard, one thread each
/// (<see cref="RankThreads"/>); the sequences, their logits and the sampler live on the first GPU.
/// </summary>
/// <remarks>
/// Thread safety: all device work goes through <see cref="Gate"/>, so sequences may be used from different threads;
/// one forward step runs at a time, over rows from any number of sequences. Dispose frees all device memory.
/// </remarks>
public sealed class CudaBackend : IModelBackend
{
    /// <summary>Decode batches are padded to one of these sizes, each captured once as a CUDA graph.</summary>
    internal static readonly int[] GraphBatchSizes = [1, 2, 4, 8, 16, 32, 64, 128];

    private readonly OwnedResources _owned = new();   // on the first GPU
    private readonly DeviceRank[] _ranks = [];
    private readonly RankThreads? _threads;
    private readonly RopePlan _rope = null!;          // which rope a sequence of a given length runs
    private readonly RopeParameters[] _ropes = [];    // on the device, in this order: StepInputs.RopeRows indexes it
    private bool _eagerOnly; // ProfileStep: launch kernel by kernel, even for a batch a graph would replay
    private readonly NcclClique? _clique;
    private readonly TensorParallelPlan? _parallel;
    private volatile bool _disposed;
    private PinnedHostBuffer? _sampledHost; // int32 [sequences]  tokens of a batched Sample
    private readonly RowPointers _rowPointers = null!;

    internal object Gate { get; } = new();
    private DeviceRank First => _ranks[0];
    internal CudaContext Context => First.Context;
    internal CudaStream Stream => First.Stream;
    internal Workspace Workspace => First.Workspace;
    internal Qwen2Forward Forward => First.Forward;
    internal GpuSampler Sampler { get; } = null!;
    internal EngineOptions Options { get; }
    internal ModelWeights Weights => First.Weights;
    internal LinearOps Linear => First.Linear;
    internal KvPool KvMemory => First.Kv;

    /// <summary>How the KV pool stores keys and values (<see cref="EngineOptions.KvCache"/>): every GPU's pool alike.</summary>
    internal KvCacheKind KvCache => First.Kv.Kind;
    internal IReadOnlyList<DeviceRank> Ranks => _ranks;
    internal bool IsDisposed => _disposed;

    public ModelConfig Config { get; }
    public MemoryPlan Plan { get; } = null!;
    public string DeviceDescription { get; } = "";
    public int MaxContext => Plan.MaxContext;
    public KvBlockPool KvPool { get; } = null!;

    /// <summary>GPUs the model is split over (1: no tensor parallel).</summary>
    public int TensorParallel => _ranks.Length;

    /// <summary>Whether the kernels run with programmatic dependent launch (<see cref="EngineOptions.ProgrammaticLaunch"/> on an sm_90+ GPU).</summary>
    public bool ProgrammaticLaunch => First.Library.ProgrammaticLaunch;

    /// <summary>Whether decode-sized partial sums go through the one-shot kernel (tensor parallel with peer access and <see cref="AllReduceKind.Custom"/>).</summary>
    public bool UsesOneShotAllReduce { get; }

    private CudaBackend(ModelConfig config, string? checkpointDir, EngineOptions options,
        IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        Config = config;
        Options = options;
        SafetensorsCheckpoint? checkpoint = null;
        try
        {
            // Check the checkpoint before touching the GPU: a missing tensor is reported in a second, not after minutes.
            if (checkpointDir is not null)
            {
                checkpoint = SafetensorsCheckpoint.Open(checkpointDir);
                CheckpointValidator.Validate(checkpoint, config);
            }
            int n = options.TensorParallel;
            _parallel = n > 1 ? TensorParallelPlan.Create(config, n) : null;
            RankShape shape = _parallel?.Shape ?? RankShape.Whole(config);
            WeightKind linearKind = LinearKind(config, options);
            if (_parallel is not null) EnsureShardable(config, shape, options);
            _rope = RopePlanFor(config, options);
            // Adaptive runs two ropes (a sequence's length picks one, step by step); Static and Off one everywhere.
            _ropes = _rope.Mode == RopeScalingMode.Adaptive ? [_rope.Plain, _rope.Yarn] : [_rope.ForLength(0)];
            if (options.KvCache is not (KvCacheKind.Bf16 or KvCacheKind.Fp8)) // before any GPU work, like RopePlanFor's refusals
                throw new OptionException($"KV cache kind {options.KvCache} is not one of bf16 or fp8");
            if (options.DecodeBlocksPerSm is int perSm) Kernels.AttentionOps.CheckDecodeBlocksPerSm(perSm);
            if (!Native.Cuda.IsAvailable(out string reason))
                throw new CudaUnavailableException(reason);
            int devices = Native.Cuda.DeviceCount;
            if (options.Device < 0 || options.Device + n > devices)
                throw new CudaUnavailableException(n == 1
                    ? $"CUDA device {options.Device} does not exist: {devices} device(s) visible (ordinals 0..{devices - 1})"
                    : $"--tensor-parallel {n} from device {options.Device} needs devices {options.Device}..{options.Device + n - 1}, and {devices} are visible; " +
                      $"use --tensor-parallel {Math.Max(1, TensorParallelPlan.ValidSizes(config).Where(v => v <= devices - Math.Max(0, options.Device)).DefaultIfEmpty(1).Max())} or fewer");

            _ranks = new DeviceRank[n];
            for (int r = 0; r < n; r++) _ranks[r] = new DeviceRank(r, options.Device + r, shape);
            if (n > 1)
            {
                // Peer access lets the one-shot all-reduce read the other GPUs' partial sums; without it (no NVLink or
                // P2P between some pair) every sum goes through NCCL.
                UsesOneShotAllReduce = options.AllReduce == AllReduceKind.Custom &&
                                       _ranks.All(a => _ranks.All(b => a == b || a.Context.CanAccessPeer(b.Context)));
                if (UsesOneShotAllReduce)
                    foreach (var a in _ranks)
                        foreach (var b in _ranks)
                            if (a != b) a.Context.EnablePeerAccess(b.Context);
                _clique = NcclClique.Create(_ranks.Select(r => r.Context.Device).ToArray());
            }
            // Every GPU gets the same plan, from the one with the least free memory (after NCCL's own buffers).
            var memory = _ranks.Select(r => r.Context.GetMemoryInfo()).ToArray();
            long free = memory.Min(m => m.Free);
            bool fp8Gemm = LinearOps.Resolve(options.Fp8Prefill, Context.ComputeCapability.Major) != Fp8PrefillGemm.Dequantize;
            Plan = MemoryPlan.Create(shape, free, options, linearKind, fp8Gemm);
            DeviceDescription = n == 1
                ? $"{Context.DeviceName}, {MemoryPlan.Gib(free)} free of {MemoryPlan.Gib(memory[0].Total)}"
                : $"{n} × {Context.DeviceName} (tensor parallel, {(UsesOneShotAllReduce ? "one-shot all-reduce over peer access" : "NCCL all-reduce")}), " +
                  $"{MemoryPlan.Gib(free)} free of {MemoryPlan.Gib(memory[0].Total)} on the fullest";

            _threads = new RankThreads(n);
            var load = new DeviceRank.LoadArgs(config, linearKind, _ropes, Plan, options, checkpoint, _parallel, progress, ct);
            bool oneShot = UsesOneShotAllReduce;
            _threads.Run(r => _ranks[r].Load(load, _clique?[r], oneShot));
            if (oneShot) ResidualSum.Connect(_ranks.Select(r => r.Sum).ToArray());
            checkpoint?.Dispose();
            checkpoint = null;

            Context.MakeCurrent();
            KvPool = new KvBlockPool(Plan.KvPoolBlocks, AttentionOps.KvBlockSize);
            Sampler = Own(new GpuSampler(First.Library, config.VocabSize, options.SampleableVocab ?? config.VocabSize));
            _rowPointers = Own(new RowPointers(Workspace.LogitRows));
            if (n > 1) WarmUpCollectives();
            _threads.Run(r => _ranks[r].TuneDecode(GraphBatchSizes));
            if (options.PrefillGemm == PrefillGemm.CublasLtTuned) _threads.Run(r => _ranks[r].TunePrefill());
            Context.MakeCurrent();
            Stream.Synchronize();
        }
        catch
        {
            checkpoint?.Dispose();
            DisposeOwned(); // nothing stays allocated when loading fails or is cancelled
            throw;
        }
    }

    /// <summary>
    /// Refuses, before any GPU work, what tensor parallel cannot load: a quantized kind (from --quantize or the
    /// checkpoint) whose per-GPU input sizes its kernels cannot take, and AWQ checkpoints whose per-GPU slices do not
    /// fall on their packing (8 outputs per int32) and groups.
    /// </summary>
    internal static void EnsureShardable(ModelConfig config, RankShape shape, EngineOptions options)
    {
        string what = options.Quantize != QuantizeMode.None ? $"--quantize {options.Quantize.ToString().ToLowerInvariant()}" : "this checkpoint's quantization";
        try { LinearKind(shape.Config, options); }
        catch (OptionException e)
        {
            throw new OptionException($"--tensor-parallel {shape.Ranks}: each GPU's share of the layers does not suit {what} ({e.Message}); use fewer GPUs");
        }
        if (config.Quantization is AwqQuantizationConfig awq)
        {
            ModelConfig c = shape.Config;
            foreach (int outputs in new[] { c.QDim, c.KvDim, c.IntermediateSize })
                if (outputs % 8 != 0)
                    throw new OptionException($"--tensor-parallel {shape.Ranks}: a GPU would hold {outputs} outputs of an AWQ layer, and AWQ packs them 8 to an int32; use fewer GPUs");
            foreach (int inputs in new[] { c.QDim, c.IntermediateSize })
                if (inputs % awq.GroupSize != 0)
                    throw new OptionException($"--tensor-parallel {shape.Ranks}: a GPU would hold {inputs} inputs of an AWQ layer, not whole groups of {awq.GroupSize}; use fewer GPUs");
        }
    }

    /// <summary>
    /// NCCL sets up its connections at a communicator's first collectives, which must not happen inside a graph
    /// capture: one all-reduce and one all-gather on every GPU now, and the one-shot kernel's barrier once.
    /// </summary>
    private void WarmUpCollectives()
    {
        _threads!.Run(r =>
        {
            DeviceRank rank = _ranks[r];
            rank.Context.MakeCurrent();
            rank.Sum.AllReduceOnly(rank.Stream, rank.Workspace.Residual, 1, oneShot: false, ResidualSum.Attention);
            if (UsesOneShotAllReduce)
            {
                rank.Sum.AllReduceOnly(rank.Stream, rank.Workspace.Residual, 1, oneShot: true, ResidualSum.Attention);
                rank.Sum.AllReduceOnly(rank.Stream, rank.Workspace.Residual, 1, oneShot: true, ResidualSum.Mlp);
            }
            rank.Sum.GatherLogits(rank.Stream, rank.Workspace.Logits, 1);
            rank.Stream.Synchronize();
        });
    }

    /// <summary>
    /// How the layers' linear weights are stored on the GPU: as the checkpoint's quantization says (compressed-tensors
    /// FP8 loads as fp8), or as --quantize asks of a plain one. Combinations this engine cannot run fail here, before
    /// any GPU work, with what to do instead.
    /// </summary>
    internal static WeightKind LinearKind(ModelConfig config, EngineOptions options)
    {
        // The fp8 kernels need whole 64-k chunks of every layer input, the int4 ones whole groups (themselves whole chunks).
        switch (config.Quantization)
        {
            case null when options.Quantize == QuantizeMode.Fp8:
                if (config.LayerInputSizeNotMultipleOf(Fp8Ops.KMultiple) is int bad)
                    throw new OptionException($"--quantize fp8 needs every layer's input size to be a multiple of {Fp8Ops.KMultiple}, and this model has one of {bad}; run it in bf16");
                return WeightKind.Fp8;
            case null when options.Quantize == QuantizeMode.Int4:
                Int4Rtn.EnsureGroupsDivide(config);
                return WeightKind.Int4Awq;
            case null:
                return WeightKind.Bf16;
            case Fp8QuantizationConfig:
                if (options.Quantize == QuantizeMode.Int4)
                    throw new OptionException("--quantize int4 takes a bf16 checkpoint, and this one is already FP8; drop --quantize, or use the bf16 or AWQ checkpoint");
                if (QuantizedTensorNames.OutputProjection(config) is Fp8LinearTensors)
                    throw new OptionException("this FP8 checkpoint quantizes lm_head too; the GPU engine keeps lm_head in bf16 and loads " +
                                              "FP8 checkpoints whose quantization_config lists lm_head in \"ignore\" (llm-compressor's default)");
                if (config.LayerInputSizeNotMultipleOf(Fp8Ops.KMultiple) is int odd)
                    throw new OptionException($"this FP8 checkpoint has a layer input size of {odd}; the GPU engine's fp8 kernels need multiples of {Fp8Ops.KMultiple}");
                return WeightKind.Fp8; // --quantize fp8 on an fp8 checkpoint asks for what it is
            case AwqQuantizationConfig awq:
                if (options.Quantize == QuantizeMode.Fp8)
                    throw new OptionException("--quantize fp8 takes a bf16 checkpoint, and this one is already INT4 (AWQ); drop --quantize, or use the bf16 checkpoint");
                if (!Int4Ops.SupportsGroup(awq.GroupSize))
                    throw new OptionException($"this AWQ checkpoint groups {awq.GroupSize} inputs per scale; the GPU engine's int4 kernels take groups of " +
                                              $"{Int4Ops.KMultiple} to {Int4Ops.MaxGroup} (QwQ-32B-AWQ uses 128); run it with --backend cpu");
                if (config.LayerInputSizeNotMultipleOf(awq.GroupSize) is int odd4)
                    throw new OptionException($"this AWQ checkpoint has a layer input size of {odd4}; the GPU engine's int4 kernels need multiples of {Int4Ops.KMultiple} and of the group size");
                return WeightKind.Int4Awq; // --quantize int4 on an AWQ checkpoint asks for what it is
            default:
                throw new OptionException($"{config.Quantization.Description} checkpoints are not supported on the GPU engine");
        }
    }

    /// <summary>
    /// The rotary embeddings the GPU runs (<see cref="EngineOptions.RopeScaling"/>): the config's everywhere (static YaRN
    /// when it has rope_scaling, the default), plain RoPE everywhere (off), or per sequence by its length (adaptive: plain
    /// up to the switch position, YaRN past it; a sequence that crosses runs again from position 0 in the new rope, as
    /// the CPU reference does, <see cref="RopeSwitchMethod.Recompute"/>). Invalid combinations are refused before any GPU work.
    /// </summary>
    internal static RopePlan RopePlanFor(ModelConfig config, EngineOptions options) =>
        RopePlan.Resolve(config, options.RopeScaling, options.RopeSwitchPosition, options.RopeSwitch);

    /// <summary>The rope a sequence's cache starts in and returns to when emptied: what a length of 0 runs.</summary>
    internal RopeParameters ShortRope => _rope.ForLength(0);

    /// <summary>Whether blocks whose keys <paramref name="rope"/> wrote may go into the prefix cache (<see cref="RopePlan.MayPublish"/>).</summary>
    internal bool MayPublish(RopeParameters? rope) => _rope.MayPublish(rope);

    /// <summary>
    /// The part of a step that appends <paramref name="tokens"/> to <paramref name="seq"/>: from its length, in the rope of
    /// its length after the step (or of <paramref name="finalLength"/>, <see cref="SequenceChunk.FinalLength"/>, when
    /// longer); or, when that rope is not the one its cache holds, the whole sequence again from position 0 in the new
    /// rope (the adaptive switch, and the switch back of a sequence truncated below it).
    /// </summary>
    private Part PartFor(CudaSequence seq, ReadOnlyMemory<int> tokens, int finalLength)
    {
        int length = Math.Max(seq.Length + tokens.Length, finalLength);
        RopeParameters rope = _rope.ForLength(length);
        if (seq.Length == 0 || ReferenceEquals(seq.CacheRope, rope)) return new Part(seq, tokens, WantsLogits: true, seq.Length, rope);
        if (!_rope.Recomputes(seq.Length, seq.CacheRope, length)) // what RecomputesAt told the caller
            return new Part(seq, tokens, WantsLogits: true, seq.Length, rope, Rerotate: true);
        return new Part(seq, (int[])[.. seq.TokenList, .. tokens.Span], WantsLogits: true, 0, rope);
    }

    /// <summary><see cref="ISequence.RecomputesAt"/> (<see cref="RopePlan.Recomputes"/>).</summary>
    internal bool RecomputesAt(CudaSequence seq, int length) => _rope.Recomputes(seq.Length, seq.CacheRope, length);

    /// <summary>Whether cached prefix blocks serve a sequence whose tokens end at <paramref name="length"/> (<see cref="RopePlan.PrefixCacheServes"/>).</summary>
    internal bool PrefixCacheServes(int length) => _rope.PrefixCacheServes(length);

    /// <summary>
    /// Throws <see cref="KvPoolExhaustedException"/>, changing nothing, unless the pool holds the blocks of every part
    /// (a re-rotation rewrites every block from position 0: those another sequence holds are copied first); then turns
    /// the cached keys of the parts that switch by re-rotation (<see cref="Rerotate"/>).
    /// </summary>
    private void CheckBlocksThenRerotate(IReadOnlyList<Part> parts)
    {
        int needed = 0;
        foreach (Part p in parts) needed += p.Seq.Table.BlocksNeeded(p.Rerotate ? 0 : p.Start, p.Start + p.Tokens.Length, evictCached: p.Rerotate);
        if (needed > KvPool.FreeBlocks) throw new KvPoolExhaustedException(needed, KvPool.FreeBlocks, KvPool.TotalBlocks, KvPool.BlockSize);
        foreach (Part p in parts)
            if (p.Rerotate) Rerotate(p);
    }

    /// <summary>
    /// The switch by re-rotation (<see cref="RopeSwitchMethod.Rerotate"/>): <paramref name="p"/>'s sequence takes its
    /// blocks for its own (copying those a fork holds too; those only the prefix cache describes leave it, since copying
    /// a 32k sequence's 512 blocks to keep plain-rope entries would cost more than turning them), then its cached keys
    /// turn in place into the part's rope on every GPU, one kernel each over all layers.
    /// </summary>
    private void Rerotate(Part p)
    {
        CudaSequence seq = p.Seq;
        try
        {
            seq.Table.Reserve(0, seq.Length, CollectCopy, evictCached: true);
        }
        finally
        {
            FlushCopies();
        }
        int from = Array.IndexOf(_ropes, seq.CacheRope), to = Array.IndexOf(_ropes, p.Rope);
        foreach (DeviceRank rank in _ranks) rank.RerotateKeys(seq.Table.Blocks, seq.Length, from, to);
        Context.MakeCurrent();
        seq.CacheRope = p.Rope; // turned, whatever becomes of the pass
        seq.KeysTurned = true;  // approximately the rope's keys: never shared through the prefix cache
    }

    /// <summary>With adaptive rope scaling, the length past which a sequence runs YaRN; null in the other modes.</summary>
    internal int? AdaptiveSwitchPosition => _rope.Mode == RopeScalingMode.Adaptive ? _rope.SwitchPosition : null;

    /// <summary>How a sequence's cache turns at the adaptive switch (<see cref="EngineOptions.RopeSwitch"/>).</summary>
    internal RopeSwitchMethod RopeSwitch => _rope.Method;

    /// <summary>
    /// Loads <paramref name="checkpointDir"/> (HF safetensors layout) onto the GPU, or random weights generated on
    /// the GPU when it is null. Nothing stays allocated if loading fails or is cancelled.
    /// </summary>
    public static CudaBackend Load(ModelConfig config, string? checkpointDir, EngineOptions options,
        IProgress<LoadProgress>? progress = null, CancellationToken ct = default) =>
        new(config, checkpointDir, options, progress, ct);

    private T Own<T>(T resource) where T : IDisposable => _owned.Add(resource);

    /// <summary>
    /// Runs one step, like <see cref="Step"/> but kernel by kernel, with every kernel our ops launch timed on every GPU
    /// (<see cref="LaunchTimer"/>): each GPU's launches in order. A diagnostic for <c>qwq bench --profile-step</c>: where
    /// a step's time goes, per kernel, against what a graph replay of the same step takes.
    /// </summary>
    internal LaunchTimer.Launch[][] ProfileStep(ReadOnlySpan<SequenceChunk> items, int capacity = 4096)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        // The timers and the eager switch are the backend's state: no other step may run while they are set (Step's own
        // lock is re-entered).
        lock (Gate)
        {
            var timers = new LaunchTimer[_ranks.Length];
            try
            {
                for (int r = 0; r < _ranks.Length; r++)
                {
                    _ranks[r].Context.MakeCurrent();
                    timers[r] = new LaunchTimer(capacity); // a 64-layer eager decode step is ~800 launches; a prefill ~1,100 per pass
                    _ranks[r].Stream.Timer = timers[r];
                }
                Context.MakeCurrent();
                _eagerOnly = true;
                Step(items);
                var launches = new LaunchTimer.Launch[_ranks.Length][];
                for (int r = 0; r < _ranks.Length; r++)
                {
                    _ranks[r].Context.MakeCurrent();
                    launches[r] = timers[r].Read();
                }
                return launches;
            }
            finally
            {
                _eagerOnly = false;
                for (int r = 0; r < _ranks.Length; r++)
                {
                    _ranks[r].Stream.Timer = null;
                    timers[r]?.Dispose();
                }
                Context.MakeCurrent();
            }
        }
    }

    /// <summary>
    /// Times one all-reduce of <paramref name="rows"/> × hidden fp32 across the GPUs as decode runs it, inside CUDA graphs
    /// of <paramref name="calls"/> back-to-back calls: our one-shot kernel (null when it is off) and NCCL's, in
    /// microseconds per call. Tensor parallel only; overwrites the workspace's residual stream (call between steps).
    /// </summary>
    public (double? OneShotUs, double NcclUs) MeasureAllReduce(int rows, int calls = 64)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (calls < 2 || calls % 2 != 0) throw new ArgumentOutOfRangeException(nameof(calls), "an even number of calls: they alternate the two partial buffers");
        if (_ranks.Length < 2) throw new InvalidOperationException("all-reduce timings need tensor parallel");
        if (rows < 1 || rows > Workspace.MaxRows) throw new ArgumentOutOfRangeException(nameof(rows));
        lock (Gate)
        {
            double Time(bool oneShot)
            {
                var graphs = new CudaGraph[_ranks.Length];
                try
                {
                    _threads!.Run(r =>
                    {
                        DeviceRank rank = _ranks[r];
                        rank.Context.MakeCurrent();
                        graphs[r] = CudaGraph.Capture(rank.Stream, () =>
                        {
                            // in pairs, attention's buffer then the MLP's, as a forward pass alternates them
                            for (int i = 0; i < calls; i++) rank.Sum.AllReduceOnly(rank.Stream, rank.Workspace.Residual, rows, oneShot, i % 2);
                        });
                    });
                    var times = new List<double>();
                    Context.MakeCurrent();
                    using var start = CudaEvent.Create();
                    using var end = CudaEvent.Create();
                    for (int repeat = 0; repeat < 5; repeat++)
                    {
                        SynchronizeAll();
                        start.Record(Stream);
                        _threads.Run(r => { _ranks[r].Context.MakeCurrent(); graphs[r].Launch(_ranks[r].Stream); });
                        Context.MakeCurrent();
                        end.Record(Stream);
                        SynchronizeAll();
                        if (repeat > 0) times.Add(1e3 * CudaEvent.ElapsedMilliseconds(start, end) / calls); // the first replay warms up
                    }
                    times.Sort();
                    return times[times.Count / 2];
                }
                finally
                {
                    for (int r = 0; r < graphs.Length; r++)
                    {
                        if (graphs[r] is null) continue;
                        _ranks[r].Context.MakeCurrent();
                        graphs[r].Dispose();
                    }
                    Context.MakeCurrent();
                }
            }
            double? oneShot = UsesOneShotAllReduce && rows <= ResidualSum.OneShotMaxRows ? Time(true) : null;
            return (oneShot, Time(false));
        }
    }

    /// <summary>Host time each GPU's thread spent enqueuing the last step, in ms (bench logs: is a step bound by launches?).</summary>
    public IReadOnlyList<double> LastEnqueueMs => _ranks.Select(r => r.LastEnqueueMs).ToArray();

    /// <summary>Which kernel each product runs at each padded decode batch, as measured at load (for bench logs).</summary>
    public IEnumerable<string> DescribeKernelChoices() =>
        Linear.DescribeChoices().Append(First.DescribeDecodeSplits(Options.DecodeBlocksPerSm is not null));

    /// <summary>
    /// Which GEMM the layers' prefill-sized products run on (above 128 rows), e.g. "fp8 cuBLASLt" or "dequantized to bf16
    /// cuBLAS" (<see cref="EngineOptions.Fp8Prefill"/>, <see cref="EngineOptions.PrefillGemm"/>); bench records it.
    /// </summary>
    public string PrefillGemmPath => Linear.PrefillPath(Weights.LinearKind);

    /// <summary>
    /// Which kernel prefill attention runs on for this cache and head size: "wgmma+TMA ping-pong sm_90a", "wgmma+TMA
    /// sm_90a" or "wgmma sm_90a" (the Hopper kernel: <see cref="EngineOptions.HopperAttention"/> on a compute capability
    /// 9.0 GPU, its PTX embedded, bf16 cache at head_dim 128; its ping-pong entry unless
    /// <see cref="EngineOptions.HopperPingPong"/> is off, its TMA entry unless <see cref="EngineOptions.HopperTma"/> is
    /// off, each where the PTX has it)
    /// or "mma.sync" (the portable one); bench records it beside each prefill figure.
    /// </summary>
    public string PrefillAttentionPath =>
        Kernels.AttentionOps.PrefillLaunchFor(First.Kernels.Attention.LoadedPrefill, KvCache, Config.HeadDim).Path;

    public ISequence CreateSequence(int? maxContext = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int capacity = maxContext ?? MaxContext;
        if (capacity < 1 || capacity > MaxContext)
            throw new OptionException($"a sequence of {capacity} positions does not fit: {(TensorParallel > 1 ? $"these {TensorParallel} GPUs hold" : "this GPU holds")} at most {MaxContext}");
        lock (Gate)
        {
            Context.MakeCurrent();
            return new CudaSequence(this, capacity, new KvBlockTable(KvPool));
        }
    }

    /// <summary>
    /// One part of a step: <c>Tokens</c> of a sequence written at positions from <c>Start</c> (its length, or 0 when it runs
    /// again in another rope) in <c>Rope</c>.
    /// </summary>
    private readonly record struct Part(CudaSequence Seq, ReadOnlyMemory<int> Tokens, bool WantsLogits, int Start, RopeParameters Rope,
        bool Rerotate = false)
    {
        public bool IsDecode => Tokens.Length == 1 && Start > 0;
    }

    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var pending = new List<Part>(items.Length);
        var seen = new HashSet<CudaSequence>();
        int vocab = Config.VocabSize;
        foreach (var item in items)
        {
            if (item.Sequence is not CudaSequence seq || seq.Backend != this)
                throw new ArgumentException("a sequence in the step does not belong to this backend", nameof(items));
            seq.ThrowIfDisposed();
            if (!seen.Add(seq)) throw new ArgumentException("a sequence appears twice in one step", nameof(items));
            if (item.Tokens.IsEmpty) continue;
            if (seq.Length + item.Tokens.Length > seq.Capacity)
                throw new OptionException(
                    $"the sequence would need {seq.Length + item.Tokens.Length} positions but holds at most {seq.Capacity}; " +
                    "shorten the prompt or raise --max-context");
            foreach (int t in item.Tokens.Span)
                if ((uint)t >= (uint)vocab)
                    throw new OptionException($"token id {t} is outside the model's vocabulary of {vocab} rows");
            pending.Add(PartFor(seq, item.Tokens, item.FinalLength));
        }

        lock (Gate)
        {
            Context.MakeCurrent();
            // A step longer than one pass is still all or nothing on a full pool: check every item's blocks first.
            CheckBlocksThenRerotate(pending);
            // Passes of at most MaxRows rows and MaxSequences sequences, each row in its sequence's rope (StepInputs.RopeRows:
            // a batch on both sides of the adaptive switch is one pass, one read of the weights); a long prompt continues
            // in the next pass and only its last piece wants logits. Decode parts go first in each pass (StepShape's row order).
            var pass = new List<Part>();
            while (pending.Count > 0)
            {
                ct.ThrowIfCancellationRequested();
                pass.Clear();
                int rows = 0;
                pending.Sort((a, b) => b.IsDecode.CompareTo(a.IsDecode));
                for (int i = 0; i < pending.Count && rows < Workspace.MaxRows && pass.Count < Workspace.Inputs.MaxSequences; i++)
                {
                    Part p = pending[i];
                    int n = Math.Min(p.Tokens.Length, Workspace.MaxRows - rows);
                    pass.Add(p with { Tokens = p.Tokens[..n], WantsLogits = n == p.Tokens.Length });
                    pending[i] = p with { Tokens = p.Tokens[n..], Start = p.Start + n };
                    rows += n;
                }
                pending.RemoveAll(p => p.Tokens.IsEmpty);
                RunPass(pass, logitPositions: default);
            }
        }
    }

    /// <summary>
    /// Samples the next token of many sequences at once: each from its own logits and penalty counts, with its own
    /// options and step, exactly as <see cref="ISequence.Sample"/> would, but with one host synchronisation in all.
    /// </summary>
    public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens.Length < requests.Length) throw new ArgumentException("one token slot per request", nameof(tokens));
        lock (Gate)
        {
            Context.MakeCurrent();
            if (_sampledHost is null || _sampledHost.Bytes < 4L * requests.Length)
            {
                _sampledHost?.Dispose();
                _sampledHost = PinnedHostBuffer.Allocate(4L * Math.Max(requests.Length, Workspace.MaxSequences));
            }
            // Every check before any row is sampled (and counted), as the interface promises.
            foreach (var r in requests)
            {
                if (r.Sequence is not CudaSequence seq || seq.Backend != this)
                    throw new ArgumentException("a sequence does not belong to this backend", nameof(requests));
                if (!seq.HasLogits) throw new InvalidOperationException("no logits to sample from: append at least one token first");
                r.Options.Validate(Sampler.ValidVocab);
            }
            // Plain greedy rows (the common case of evaluation runs) go through one launch; the rest one by one.
            // A row with nothing to sample comes back as SampleRequest.NoToken from either (kernels/sampling.cu).
            Span<int> greedyIndex = stackalloc int[Math.Min(requests.Length, 1024)];
            int greedy = 0;
            for (int i = 0; i < requests.Length; i++)
            {
                var seq = (CudaSequence)requests[i].Sequence;
                if (GpuSampler.IsPlainGreedy(requests[i].Options) && greedy < Math.Min(greedyIndex.Length, _rowPointers.Capacity))
                {
                    _rowPointers.SampleLogitsHost[greedy] = seq.LogitsPtr;
                    _rowPointers.SampleCountsHost[greedy] = seq.CountsPtr;
                    greedyIndex[greedy++] = i;
                }
                else Sampler.SampleAsync(Stream, seq.LogitsPtr, seq.CountsPtr, requests[i].Options, requests[i].Step, _sampledHost.Ptr + 4 * i);
            }
            if (greedy > 0)
            {
                _rowPointers.Upload(Stream, 1, greedy);
                _rowPointers.Upload(Stream, 2, greedy);
                Sampler.GreedyRowsAsync(Stream, _rowPointers.SampleLogits, _rowPointers.SampleCounts, _rowPointers.Tokens, greedy);
                _rowPointers.DownloadTokens(Stream, greedy);
            }
            Stream.Synchronize();
            _sampledHost.AsSpan<int>()[..requests.Length].CopyTo(tokens);
            for (int g = 0; g < greedy; g++) tokens[greedyIndex[g]] = _rowPointers.TokensHost[g];
        }
    }

    /// <summary>Test hook: appends one chunk and returns the logits of the chosen chunk-relative positions, [positions, vocab].</summary>
    internal float[] AppendWithLogits(CudaSequence seq, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        if (tokens.Length > Workspace.MaxRows || positions.Length > Workspace.LogitRows)
            throw new ArgumentException($"at most {Workspace.MaxRows} tokens and {Workspace.LogitRows} logit rows per call");
        if (seq.Length + tokens.Length > seq.Capacity) throw new OptionException("sequence exceeds its capacity");
        lock (Gate)
        {
            Context.MakeCurrent();
            Part part = PartFor(seq, tokens.ToArray(), finalLength: 0);
            if (part.Start != seq.Length) throw new InvalidOperationException("AppendWithLogits does not switch a sequence's rope: append up to the switch first");
            CheckBlocksThenRerotate([part]);
            RunPass([part], positions);
            var result = new float[positions.Length * Config.VocabSize];
            SynchronizeAll();
            if (_parallel is null) Workspace.CopyLogits(result);
            else
            {
                // [ranks, rows, lm_head_rows] → [rows, vocab], dropping the last rank's padding
                int rows = positions.Length, width = _parallel.VocabPerRank;
                var gathered = new float[(long)_parallel.Ranks * rows * width];
                First.Sum.CopyGatheredLogits(gathered);
                for (int r = 0; r < _parallel.Ranks; r++)
                {
                    ShardRange vocab = _parallel.Vocab(r);
                    for (int i = 0; i < rows; i++)
                        gathered.AsSpan((r * rows + i) * width, vocab.Count).CopyTo(result.AsSpan(i * Config.VocabSize + vocab.Start));
                }
            }
            return result;
        }
    }

    /// <summary>Waits for every GPU's stream; leaves the first GPU's context current.</summary>
    private void SynchronizeAll()
    {
        foreach (var rank in _ranks) rank.Synchronize();
        Context.MakeCurrent();
    }

    /// <summary>
    /// One forward step over <paramref name="pass"/>: reserves KV blocks (all or nothing), writes the step inputs,
    /// runs the forward (a captured graph for decode-only batches) and hands each sequence its logits.
    /// </summary>
    private void RunPass(List<Part> pass, ReadOnlySpan<int> logitPositions)
    {
        StepInputs inp = Workspace.Inputs;
        SynchronizeAll(); // the previous step has finished reading the pinned inputs
        ReserveBlocks(pass);

        int rows = 0, seqs = 0, decode = 0, maxPrefill = 0, logitRows = 0;
        Span<int> ids = inp.IdsHost, pos = inp.PositionsHost, slots = inp.SlotsHost, info = inp.SeqInfoHost, ropeRows = inp.RopeRowsHost;
        Span<int> ctxLens = inp.CtxLensHost, logits = inp.LogitRowsHost;
        foreach (Part p in pass)
        {
            CudaSequence s = p.Seq;
            int start = p.Start, n = p.Tokens.Length;
            ReadOnlySpan<int> tokens = p.Tokens.Span;
            ReadOnlySpan<int> blocks = s.Table.Blocks;
            int rope = Array.IndexOf(_ropes, p.Rope);
            for (int j = 0; j < n; j++)
            {
                int position = start + j;
                ropeRows[rows + j] = rope;
                ids[rows + j] = tokens[j];
                pos[rows + j] = position;
                slots[rows + j] = blocks[position / AttentionOps.KvBlockSize] * AttentionOps.KvBlockSize + position % AttentionOps.KvBlockSize;
            }
            (info[4 * seqs], info[4 * seqs + 1], info[4 * seqs + 2], info[4 * seqs + 3]) = (rows, n, start, 0);
            ctxLens[seqs] = start + n;
            Span<int> table = inp.TableHost(seqs);
            blocks.CopyTo(table);
            if (logitPositions.IsEmpty && p.WantsLogits) logits[logitRows++] = rows + n - 1;
            if (p.IsDecode) decode++;
            else maxPrefill = Math.Max(maxPrefill, n);
            rows += n;
            seqs++;
        }
        foreach (int lp in logitPositions) logits[logitRows++] = lp;

        int gatheredRows = logitRows; // rows of logits the step computes (padded with the batch)
        if (decode == seqs && Options.UseCudaGraphs && !_eagerOnly && logitPositions.IsEmpty && seqs <= GraphBatchSizes[^1])
        {
            // Pad to a captured batch size: padding rows write no KV (slot −1) and attend to nothing (ctx_len 0).
            int batch = GraphBatchSizes.First(b => b >= seqs);
            for (int r = rows; r < batch; r++)
            {
                (ids[r], pos[r], slots[r], ctxLens[r], ropeRows[r]) = (0, 0, -1, 0, 0);
                logits[r] = r;
            }
            gatheredRows = batch;
            First.PlanDecodeSplits(batch);
            ShareInputs(batch);
            if (_ranks.All(rank => rank.HasDecodeGraph(batch)))
            {
                // A replay only enqueues (asynchronous, nothing waits on another GPU on the host), so one thread does
                // every GPU's: no waking of the rank threads, whose latency would start the other GPUs late.
                foreach (DeviceRank rank in _ranks) rank.ReplayDecode(batch);
            }
            else
                _threads!.Run(r => _ranks[r].ReplayDecode(batch)); // the first replay captures: each GPU on its own thread
        }
        else
        {
            if (decode > 0) First.PlanDecodeSplits(decode);
            ShareInputs(seqs);
            var shape = new StepShape(rows, decode, seqs - decode, maxPrefill, logitRows);
            _threads!.Run(r => _ranks[r].Step(shape, seqs));
        }
        Context.MakeCurrent();

        // Each sequence keeps its own logits (any interleaving of Append/Sample gives it exactly what it gets alone):
        // one launch copies every logits row into its sequence's buffer.
        int withLogits = 0;
        Span<ulong> destinations = _rowPointers.LogitsDestinationsHost;
        foreach (Part p in pass)
        {
            List<int> known = p.Seq.TokenList;
            // A part that runs a sequence again from position 0 starts with tokens it already has.
            int already = Math.Clamp(known.Count - p.Start, 0, p.Tokens.Length);
            known.AddRange(p.Tokens.Span[already..]);
            // Its cache is in the part's rope once the last piece of the part is written; until then, in none.
            p.Seq.CacheRope = p.WantsLogits || p.Start + p.Tokens.Length >= known.Count ? p.Rope : null;
            p.Seq.HasLogits = p.WantsLogits && logitPositions.IsEmpty;
            if (p.Seq.HasLogits) destinations[withLogits++] = p.Seq.LogitsPtr;
            if (MayPublish(p.Seq.CacheRope) && !p.Seq.KeysTurned) p.Seq.Table.PublishFullBlocks(CollectionsMarshal.AsSpan(known));
        }
        if (withLogits > 0)
        {
            _rowPointers.Upload(Stream, 0, withLogits);
            EmbeddingOps embedding = First.Kernels.Embedding;
            if (_parallel is null)
                embedding.ScatterRowsF32(Stream, Workspace.Logits, Config.VocabSize, _rowPointers.LogitsDestinations, 0, withLogits, Config.VocabSize);
            else
            {
                // every GPU's vocabulary rows, gathered on this one as [ranks, rows, lm_head_rows]
                long width = _parallel.VocabPerRank;
                for (int r = 0; r < _parallel.Ranks; r++)
                {
                    ShardRange vocab = _parallel.Vocab(r);
                    if (vocab.Count == 0) continue;
                    ulong shard = First.Sum.GatheredLogits + (ulong)(4L * r * gatheredRows * width);
                    embedding.ScatterRowsF32(Stream, shard, width, _rowPointers.LogitsDestinations, vocab.Start, withLogits, vocab.Count);
                }
            }
        }
    }

    /// <summary>Every other GPU runs the step from the same inputs as the first.</summary>
    private void ShareInputs(int sequences)
    {
        for (int r = 1; r < _ranks.Length; r++) _ranks[r].Workspace.Inputs.CopyHostFrom(Workspace.Inputs, sequences);
    }

    /// <summary>
    /// Backs every position the pass writes with an exclusively owned block (copy-on-write of shared ones), for all
    /// sequences or none: on exhaustion, the sequences reserved so far give their new blocks back.
    /// </summary>
    private void ReserveBlocks(List<Part> pass)
    {
        int needed = 0;
        foreach (Part p in pass) needed += p.Seq.Table.BlocksNeeded(p.Start, p.Start + p.Tokens.Length);
        if (needed > KvPool.FreeBlocks) throw new KvPoolExhaustedException(needed, KvPool.FreeBlocks, KvPool.TotalBlocks, KvPool.BlockSize);
        try
        {
            for (int i = 0; i < pass.Count; i++)
            {
                CudaSequence s = pass[i].Seq;
                try
                {
                    s.Table.Reserve(pass[i].Start, pass[i].Start + pass[i].Tokens.Length, CollectCopy);
                }
                catch (KvPoolExhaustedException)
                {
                    for (int j = 0; j < i; j++) pass[j].Seq.Table.Truncate(pass[j].Seq.Length);
                    throw;
                }
            }
        }
        finally
        {
            // Even when a later table failed: an earlier one already holds the destinations in place of the sources, and
            // keeps those below its length.
            FlushCopies();
        }
    }

    private readonly List<int> _copies = []; // [n, 2] (source, destination) blocks a Reserve asked to copy, not yet enqueued

    /// <summary>Copy-on-write of a KV block, collected: <see cref="FlushCopies"/> enqueues them all at once.</summary>
    private void CollectCopy(int src, int dst)
    {
        _copies.Add(src);
        _copies.Add(dst);
    }

    /// <summary>
    /// Enqueues the collected block copies on every GPU (each holds its KV heads of every block), one launch each, before
    /// anything that reads or writes those blocks. The sources stay intact until then: a released block is only reused by
    /// a later allocation, whose writes come later on the same streams.
    /// </summary>
    private void FlushCopies()
    {
        if (_copies.Count == 0) return;
        try
        {
            foreach (var rank in _ranks) rank.CopyBlocks(CollectionsMarshal.AsSpan(_copies));
            Context.MakeCurrent();
        }
        finally
        {
            _copies.Clear();
        }
    }

    private void DisposeOwned()
    {
        if (_ranks.Length > 0 && _ranks[0] is { } first)
        {
            try { first.Context.MakeCurrent(); } catch (CudaException) { /* best effort while unwinding */ }
        }
        _sampledHost?.Dispose();
        _owned.DisposeAll();
        _threads?.Dispose();
        foreach (var rank in _ranks) rank?.DisposeGraphs(); // NCCL waits for graphs holding its collectives to go
        _clique?.Dispose(); // before the contexts its communicators live in
        foreach (var rank in _ranks) rank?.Dispose();
    }

    public void Dispose()
    {
        if (_disposed) return;
        lock (Gate)
        {
            _disposed = true;
            try { SynchronizeAll(); }
            finally { DisposeOwned(); }
        }
    }
}

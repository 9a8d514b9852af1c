using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One GPU's part of the engine: its context and stream, its share of the weights, its workspace and KV pool (its KV
/// heads of every block), its kernels, products and forward pass, and its captured decode graphs. On one GPU the
/// engine has one rank holding the whole model; with tensor parallel one per GPU, each running the same steps over its
/// shard (<see cref="RankShape"/>, docs/TENSOR_PARALLEL.md). Every method runs with <see cref="Context"/> current.
/// </summary>
internal sealed class DeviceRank : IDisposable
{
    private readonly OwnedResources _owned = new();
    private readonly Dictionary<int, CudaGraph> _decodeGraphs = []; // by padded batch size

    public int Index { get; }
    public CudaContext Context { get; }
    public RankShape Shape { get; }
    public CudaStream Stream { get; private set; } = null!;
    public PtxLibrary Library { get; private set; } = null!;
    public ModelWeights Weights { get; private set; } = null!;
    public Workspace Workspace { get; private set; } = null!;
    public KvPool Kv { get; private set; } = null!;
    public KernelSet Kernels { get; private set; } = null!;
    public LinearOps Linear { get; private set; } = null!;
    public ResidualSum Sum { get; private set; } = null!;
    public Qwen2Forward Forward { get; private set; } = null!;
    private DeviceRope[] _ropes = [];
    private bool _rerotates; // loaded for RopeSwitchMethod.Rerotate
    // int32 [max blocks of a sequence, 2]: CopyBlocks' (source, destination) pairs, or RerotateKeys' block table
    private DeviceBuffer _blockLists = null!;
    private KvBlockOps _blockOps = null!;

    /// <summary>Makes device <paramref name="device"/>'s context current and measures nothing else: loading is <see cref="Load"/>.</summary>
    public DeviceRank(int index, int device, RankShape shape)
    {
        Index = index;
        Shape = shape;
        Context = CudaContext.Create(device);
    }

    /// <summary>What loading a rank needs besides its own shape (the same for every rank).</summary>
    public sealed record LoadArgs(ModelConfig Config, WeightKind Kind, RopeParameters[] Ropes, MemoryPlan Plan, EngineOptions Options,
        SafetensorsCheckpoint? Checkpoint, TensorParallelPlan? Parallel, IProgress<LoadProgress>? Progress, CancellationToken Cancel);

    /// <summary>
    /// Allocates this GPU's buffers, loads its weights (its slices of the checkpoint, or of the synthetic model) and
    /// builds its forward pass. <paramref name="comm"/>: its NCCL rank with tensor parallel; <paramref name="oneShot"/>:
    /// whether partial sums of decode steps go through the one-shot kernel (peer access is on).
    /// </summary>
    public void Load(LoadArgs a, NcclCommunicator? comm, bool oneShot)
    {
        Context.MakeCurrent();
        ModelConfig shard = Shape.Config;
        Stream = Own(CudaStream.Create());
        Library = Own(PtxLibrary.Load(Context, a.Options.ProgrammaticLaunch, archSpecific: a.Options.HopperAttention));
        var blas = Own(Cublas.Create(Stream));
        var lt = a.Options.PrefillGemm is PrefillGemm.CublasLt or PrefillGemm.CublasLtTuned ? Own(CublasLt.Create()) : null;
        var decodeLt = a.Options.TuneDecodeGemm ? Own(CublasLt.Create()) : null;
        Weights = Own(ModelWeights.Allocate(Shape, a.Kind));
        Fp8Ops? fp8 = a.Kind == WeightKind.Fp8 ? new Fp8Ops(Library) : null;
        Int4Ops? int4 = a.Kind == WeightKind.Int4Awq ? new Int4Ops(Library) : null;
        var quantizers = new WeightUploader.Quantizers(fp8, int4);
        // bf16 scratch for quantized kinds: where loads stage rows before quantizing them, and where prefill-sized
        // products expand a layer's weight for the bf16 tensor cores.
        long scratchBytes = ModelWeights.ScratchBytes(shard, a.Kind);
        DeviceBuffer? scratch = scratchBytes > 0 ? Own(DeviceBuffer.Allocate(scratchBytes)) : null;
        var progress = Index == 0 ? a.Progress : null; // one rank reports: every rank loads the same amount
        var init = new InitOps(Library);
        // The last rank's lm_head has padding rows past the vocabulary: zero, whatever fills the real ones.
        if (Shape.IsSharded) init.FillConstBf16(Stream, Weights.LmHead.Weight, (long)Weights.LmHead.Out * shard.HiddenSize, 0);
        if (a.Checkpoint is not null)
            WeightUploader.Upload(a.Checkpoint, a.Config, Weights, Stream, quantizers, scratch, progress, a.Cancel, a.Parallel, Index);
        else
            SyntheticWeights.Fill(Weights, a.Config, init, quantizers, scratch, Stream, a.Options.SyntheticSeed, progress, a.Cancel, a.Parallel, Index);

        Workspace = Own(new Workspace(shard, a.Plan.PrefillChunk, MemoryPlan.MaxBlocksPerSequence(shard), Context.MultiprocessorCount, Shape.LmHeadRows, a.Kind));
        Kv = Own(new KvPool(shard, a.Plan.KvPoolBlocks, a.Options.KvCache)); // this GPU's KV heads of every block
        var ropes = a.Ropes.Select(r => new DeviceRope(Own(DeviceBuffer.FromHost<float>(r.InverseFrequencies)).Ptr, r.AttentionFactor)).ToArray();
        _ropes = ropes;
        _blockOps = new KvBlockOps(Library);
        _blockLists = Own(DeviceBuffer.Allocate(8L * MemoryPlan.MaxBlocksPerSequence(shard)));
        _rerotates = a.Options.RopeSwitch == RopeSwitchMethod.Rerotate;
        Kernels = new KernelSet(Library, Context.MultiprocessorCount, a.Options.DecodeBlocksPerSm, a.Options.HopperTma,
            a.Options.HopperPingPong);
        // fp8 prefill on the FP8 tensor cores: its own cuBLASLt (plans per shape and row count), the workspace's e4m3 copy of the input
        Fp8Gemm? fp8Gemm = null;
        if (fp8 is not null && LinearOps.Resolve(a.Options.Fp8Prefill, Context.ComputeCapability.Major) is var mode and not Fp8PrefillGemm.Dequantize)
            fp8Gemm = new Fp8Gemm(Own(CublasLt.Create()), mode == Fp8PrefillGemm.Fp8FastAccum, Workspace.Fp8ActCodes, Workspace.Fp8ActScales,
                Workspace.MaxRows, Workspace.MaxProductInput(shard));
        Linear = Own(new LinearOps(Kernels.Gemv, new TensorCoreGemvOps(Library), fp8, int4, blas, lt, decodeLt, a.Options.GemvMaxRows,
            a.Options.TensorCoreGemvMaxRows, Context.MultiprocessorCount, scratch?.Ptr ?? 0, fp8Gemm, a.Options.OnlyTensorCoreVariant));
        // The plan kept room for row-major copies of the fp8 weights (EngineOptions.Fp8PrefillCopy): untile them once
        // now rather than every prefill pass.
        if (fp8Gemm is not null && a.Plan.Fp8PrefillCopyBytes > 0)
            Linear.KeepFp8RowMajor(Stream, Weights.Products().SelectMany(p => p.Layers).Where(w => w.Kind == WeightKind.Fp8),
                Own(DeviceBuffer.Allocate(a.Plan.Fp8PrefillCopyBytes)));
        Sum = Own(comm is null
            ? new ResidualSum(Linear, Kernels.Norm, Workspace, shard)
            : new ResidualSum(Linear, Kernels.Norm, Workspace, Shape, Index, comm, oneShot ? new AllReduceOps(Library) : null));
        Forward = new Qwen2Forward(shard, Weights, Workspace, Kv, Kernels, Linear, Sum, ropes);
    }

    /// <summary>How the decode attention splits on this GPU, for the load log: blocks a multiprocessor and slots a KV head.</summary>
    public string DescribeDecodeSplits(bool chosen)
    {
        ModelConfig c = Shape.Config;
        int perSm = Kernels.Attention.DecodeBlocksPerSmFor(c.HeadDim, Kv.Kind);
        int slots = Kernels.Attention.DecodeSplitSlots(c.NumKeyValueHeads, 1, c.HeadDim, Kv.Kind);
        return $"decode attention: {perSm} split blocks a multiprocessor ({(chosen ? "--decode-blocks-per-sm" : "by occupancy")}), {slots} split slots a KV head at batch 1";
    }

    /// <summary>
    /// Plans the decode attention of a step whose first <paramref name="batch"/> sequences decode (their context lengths
    /// already in <see cref="Workspace"/>'s step inputs): how this GPU's split slots are dealt to them by length
    /// (<see cref="AttentionOps.PlanDecodeSplits"/>), written beside the lengths. Tensor-parallel ranks hold the same
    /// KV head count on the same GPU model, so one rank plans and the others copy its inputs.
    /// </summary>
    public void PlanDecodeSplits(int batch)
    {
        ModelConfig c = Shape.Config;
        StepInputs inp = Workspace.Inputs;
        int slots = Kernels.Attention.DecodeSplitSlots(c.NumKeyValueHeads, batch, c.HeadDim, Kv.Kind);
        AttentionOps.PlanDecodeSplits(inp.CtxLensHost[..batch], inp.MaxBlocks * AttentionOps.KvBlockSize, slots, inp.SplitRowsHost, inp.SplitWorkHost);
    }

    /// <summary>
    /// Adaptive rope scaling's fast switch (<see cref="RopeSwitchMethod.Rerotate"/>): turns this GPU's cached keys of the
    /// sequence whose blocks are <paramref name="blocks"/>, positions 0 .. <paramref name="positions"/>−1 of every layer,
    /// from rope <paramref name="from"/> into rope <paramref name="to"/> (indices into the ropes it was loaded with). The
    /// blocks must be the sequence's own (the caller copies shared ones first). Enqueued on <see cref="Stream"/>.
    /// </summary>
    public void RerotateKeys(ReadOnlySpan<int> blocks, int positions, int from, int to)
    {
        if (!_rerotates) throw new InvalidOperationException("this rank was loaded without --rope-switch-method rerotate");
        Context.MakeCurrent();
        UploadBlockList(blocks[..((positions + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize)]);
        ModelConfig c = Shape.Config;
        Kernels.Rope.RerotateKeys(Stream, Kv.Layer(0), Kv.LayerBytes, Kv.Layers, _blockLists.Ptr, positions, c.NumKeyValueHeads, c.HeadDim,
            _ropes[from].InvFreq, _ropes[from].Factor, _ropes[to].InvFreq, _ropes[to].Factor);
    }

    /// <summary>
    /// Copy-on-write of this GPU's KV heads of many blocks, <paramref name="pairs"/> [n, 2] (source, destination), in one
    /// launch per buffer-full (a sequence's worth of blocks). Enqueued on <see cref="Stream"/>.
    /// </summary>
    public void CopyBlocks(ReadOnlySpan<int> pairs)
    {
        Context.MakeCurrent();
        int capacity = (int)(_blockLists.Bytes / 8), total = pairs.Length / 2;
        for (int first = 0; first < total; first += capacity)
        {
            int n = Math.Min(capacity, total - first);
            UploadBlockList(pairs.Slice(2 * first, 2 * n));
            Kv.CopyBlocks(_blockOps, Stream, _blockLists.Ptr, n);
        }
    }

    /// <summary>
    /// Puts <paramref name="ints"/> in the block-list buffer, once the stream has finished with what it held (an earlier
    /// copy or switch may still read it: the host copy does not wait for this stream).
    /// </summary>
    private void UploadBlockList(ReadOnlySpan<int> ints)
    {
        Stream.Synchronize();
        _blockLists.CopyFromHost(ints);
    }

    /// <summary>Times each product's kernels at every captured decode batch size and keeps the fastest (LinearOps).</summary>
    public void TuneDecode(IEnumerable<int> batches)
    {
        Context.MakeCurrent();
        Linear.TuneDecodeBatches(Stream, Weights.Products(), Workspace.Act, Workspace.GateUp, batches.Where(b => b <= Workspace.Inputs.MaxSequences));
        Stream.Synchronize();
    }

    /// <summary>
    /// Times cuBLASLt's candidate algorithms for each bf16 product at the prefill chunk's row count and keeps the fastest
    /// (<see cref="PrefillGemm.CublasLtTuned"/>), on the buffers the forward pass gives each product (cuBLASLt's plans
    /// are keyed by the pointers' alignment too), before any step has run: every one of them is rewritten by a step.
    /// The inputs are random first (zeros time faster than any real activation).
    /// </summary>
    public void TunePrefill()
    {
        Context.MakeCurrent();
        int rows = Workspace.MaxRows;
        ModelConfig c = Shape.Config;
        var init = new InitOps(Library);
        init.FillNormalBf16(Stream, Workspace.Normed, (long)rows * c.HiddenSize, seed: 1, mean: 0f, std: 1f);
        init.FillNormalBf16(Stream, Workspace.Attn, (long)rows * c.QDim, seed: 2, mean: 0f, std: 1f);
        init.FillNormalBf16(Stream, Workspace.Act, (long)rows * c.IntermediateSize, seed: 3, mean: 0f, std: 1f);
        LayerWeights w = Weights.Layers[0];
        Linear.TunePrefill(Stream, rows,
        [
            (w.Qkv, Workspace.Normed, Workspace.Qkv, false, true),       // bf16 out: Qwen2Forward.QkvProduct
            (w.O, Workspace.Attn, Workspace.Residual, true, false),
            (w.GateUp, Workspace.Normed, Workspace.GateUp, false, true), // bf16 out: Qwen2Forward.GateUpActivation
            (w.Down, Workspace.Act, Workspace.Residual, true, false),
        ]);
        Stream.Synchronize();
    }

    /// <summary>Host time this rank's thread spent enqueuing its last step, in ms (launches are asynchronous: not GPU time).</summary>
    public double LastEnqueueMs { get; private set; }

    /// <summary>One eager step over rows described by <see cref="Workspace"/>'s inputs (already written on the host).</summary>
    public void Step(StepShape shape, int sequences)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        Context.MakeCurrent();
        Workspace.Inputs.Upload(Stream, sequences);
        Forward.Step(Stream, shape);
        LastEnqueueMs = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    /// <summary>Whether <see cref="ReplayDecode"/> has captured the graph of this batch size (a replay then only launches it).</summary>
    public bool HasDecodeGraph(int batch) => _decodeGraphs.ContainsKey(batch);

    /// <summary>
    /// A decode step of <paramref name="batch"/> (padded) rows, each in its own rope (<see cref="StepInputs.RopeRowsHost"/>):
    /// its graph, captured at first use, replayed.
    /// </summary>
    public void ReplayDecode(int batch)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        Context.MakeCurrent();
        if (!_decodeGraphs.TryGetValue(batch, out CudaGraph? graph))
        {
            var shape = new StepShape(batch, batch, 0, 0, batch);
            graph = CudaGraph.Capture(Stream, () =>
            {
                Workspace.Inputs.Upload(Stream, batch);
                Forward.Step(Stream, shape);
            });
            _decodeGraphs.Add(batch, graph);
        }
        graph.Launch(Stream);
        LastEnqueueMs = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    public void Synchronize()
    {
        Context.MakeCurrent();
        Stream.Synchronize();
    }

    private T Own<T>(T resource) where T : IDisposable => _owned.Add(resource);

    /// <summary>
    /// Frees the captured decode graphs. With tensor parallel they hold NCCL's captured collectives, and destroying a
    /// communicator waits until no graph refers to it: graphs go before the communicators, which go before the rest.
    /// </summary>
    public void DisposeGraphs()
    {
        try { Context.MakeCurrent(); } catch (CudaException) { /* disposed or broken: free what can be freed */ }
        foreach (var g in _decodeGraphs.Values)
        {
            try { g.Dispose(); } catch (CudaException) { /* best effort while unwinding */ }
        }
        _decodeGraphs.Clear();
    }

    /// <summary>Frees everything this GPU holds (best effort while unwinding), its context last.</summary>
    public void Dispose()
    {
        DisposeGraphs();
        _owned.DisposeAll();
        Context.Dispose();
    }
}

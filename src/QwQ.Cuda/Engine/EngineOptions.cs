namespace QwQ.Cuda.Engine;

/// <summary>How the CUDA engine is set up. Every field has a sensible default.</summary>
public sealed record EngineOptions
{
    /// <summary>KV-cache positions to reserve; null sizes the cache from free device memory (capped at the model's maximum).</summary>
    public int? MaxContext { get; init; }

    /// <summary>
    /// Positions of the paged KV pool shared by all sequences; null: as many as fit in the free device memory
    /// (capped at 128 sequences of the model's maximum length).
    /// </summary>
    public int? KvPoolPositions { get; init; }

    /// <summary>Device memory left free after weights and KV cache, for workspaces and other processes.</summary>
    public long ReserveBytes { get; init; } = 2L << 30;

    /// <summary>Capture decode steps as CUDA graphs, one per padded batch size, and replay them (off: launch kernel by kernel, for debugging).</summary>
    public bool UseCudaGraphs { get; init; } = true;

    /// <summary>
    /// On sm_90 and newer (H100, H200), launch our kernels with programmatic dependent launch: each kernel's blocks may be
    /// scheduled while the one before it finishes, which hides most of the launch gap between the ~800 small kernels
    /// of a decode step (kernels/common.cuh, <c>kernel_entry_barrier</c>). Off: the compute_80 build, launched the
    /// ordinary way (for measuring the difference, or ruling it out). Older GPUs always launch the ordinary way.
    /// </summary>
    public bool ProgrammaticLaunch { get; init; } = true;

    /// <summary>
    /// On compute capability 9.0 (H100, H200), prefill attention over the bf16 KV cache at head_dim 128 (QwQ) runs the
    /// Hopper wgmma kernel (kernels/sm90a/attention_prefill_sm90a.cu; same results as the portable kernel, faster) when
    /// its PTX is embedded. Off: the portable mma.sync kernel everywhere (for measuring the difference, or ruling it out).
    /// Off also leaves out the rest of the sm_90a module, which is loaded as one: the fp8 tensor-core GEMV's warpgroup
    /// builds (TensorCoreVariant.Warpgroup, kernels/sm90a/gemv_tc_sm90a.cu) are then not timed or run either.
    /// </summary>
    public bool HopperAttention { get; init; } = true;

    /// <summary>
    /// Of that Hopper kernel, the entry that reads K and V by TMA (tensor maps, one thread issuing a tile's copies; the
    /// faster one, session 16) where its PTX has it. Off: the entry that copies them with cp.async on every thread (for
    /// measuring the difference within one build).
    /// </summary>
    public bool HopperTma { get; init; } = true;

    /// <summary>
    /// Of the TMA entries, the one whose two warpgroups take turns on the tensor cores with a producer warp issuing the
    /// copies (FlashAttention-3's ping-pong; the faster one, session 19) where its PTX has it. Off: the plain TMA entry
    /// (for measuring the difference within one build).
    /// </summary>
    public bool HopperPingPong { get; init; } = true;

    /// <summary>Seed for synthetic weights (when no checkpoint is given).</summary>
    public ulong SyntheticSeed { get; init; } = 1234;

    /// <summary>
    /// The most rows (tokens of all sequences) one forward step processes; longer prompts are prefilled in chunks. On a
    /// card where its activations would leave the KV pool fewer than 8,192 positions, the memory plan halves it (down to
    /// 512) to keep the context (<see cref="MemoryPlan.PrefillChunk"/>). The CLI's commands other than <c>bench</c> set it to
    /// the batch scheduler's largest step (<see cref="Batching.SchedulerOptions.MaxRowsPerStep"/>, 2,176 rows), the most
    /// their steps take, so the rest goes to the KV pool.
    /// </summary>
    public int PrefillChunk { get; init; } = 4096;

    /// <summary>
    /// Ids at or past this are never sampled: the embedding has more rows (152064) than the tokenizer has tokens
    /// (151669). Null: every row of the vocabulary may be sampled (tiny test models).
    /// </summary>
    public int? SampleableVocab { get; init; }

    /// <summary>Which library runs the prefill products (decode always uses our GEMV kernels).</summary>
    public PrefillGemm PrefillGemm { get; init; } = PrefillGemm.Cublas;

    /// <summary>
    /// How fp8 weights run prefill-sized products (more than 128 rows): on the FP8 tensor cores (activations quantized per
    /// token, the weight untiled to row-major e4m3, cuBLASLt with outer-vector scales) or expanded to bf16 for the bf16
    /// GEMM of <see cref="PrefillGemm"/>. <see cref="Fp8PrefillGemm.Auto"/> (the default): the FP8 GEMM where cuBLASLt
    /// has outer-vector scaling (compute capability 9.x: H100, H200), the bf16 detour elsewhere.
    /// </summary>
    public Fp8PrefillGemm Fp8Prefill { get; init; } = Fp8PrefillGemm.Auto;

    /// <summary>
    /// With fp8 weights on the FP8 prefill GEMM: whether a row-major e4m3 copy of every layer weight stays on the device
    /// (<see cref="Fp8PrefillCopy.Keep"/>), or each product's weight is untiled from the decode kernels' tile layout into
    /// a scratch every prefill pass (<see cref="Fp8PrefillCopy.Untile"/>: 2 bytes of traffic per weight per pass, 17.5 of
    /// 162.6 ms of a 2k prefill of QwQ-32B on an H200). The copy costs the fp8 weights' size again (33 GB for QwQ-32B).
    /// <see cref="Fp8PrefillCopy.Auto"/> (the default) keeps it when the KV pool still holds the model's longest context
    /// beside it and at least half the positions it would hold without it (an H200 does with QwQ-32B, an 80 GB H100 does
    /// not), and untiles otherwise.
    /// </summary>
    public Fp8PrefillCopy Fp8PrefillCopy { get; init; } = Fp8PrefillCopy.Auto;

    /// <summary>
    /// Linear layers over at most this many rows use our GEMV kernels (each weight read once for all rows, fp32
    /// FMAs on the CUDA cores, which become the bottleneck past 4 rows); more rows go to cuBLAS's tensor cores. 0: always cuBLAS.
    /// </summary>
    public int GemvMaxRows { get; init; } = 4; // measured crossover on the H100: bench/NOTES.md

    /// <summary>
    /// bf16 linear layers over more rows than <see cref="GemvMaxRows"/> and at most this many (≤ 8) use our tensor-core
    /// GEMV (weights streamed once through mma.sync); above, cuBLAS. Null (the default): per product, whichever of the
    /// two measured faster at load (with <see cref="TuneDecodeGemm"/>); 0: never (bench/NOTES.md has the timings).
    /// </summary>
    public int? TensorCoreGemvMaxRows { get; init; }

    /// <summary>
    /// A diagnostic: the decode split blocks counted per multiprocessor when a step's split slots are planned (1 to 4;
    /// <c>AttentionOps.DecodeSplitSlots</c>). Null (the default): as many as the driver says one multiprocessor holds of
    /// the loaded split kernel (its registers and shared memory; at most 4), 2 for the bf16 cache and 3 for the fp8 cache
    /// at head_dim 128 on an H100/H200, so the splits run in one wave.
    /// Fewer: fewer and longer splits (less combining, less parallelism); more than fit: a second wave.
    /// </summary>
    public int? DecodeBlocksPerSm { get; init; }

    /// <summary>
    /// Decode batches above the GEMV sizes use cuBLASLt with the algorithm that measured fastest for each product and
    /// padded batch size at load (about a second); off: cublasGemmEx with its own heuristic.
    /// </summary>
    public bool TuneDecodeGemm { get; init; } = true;

    /// <summary>
    /// Tests only: where this tensor-core GEMV build serves a product and row count, the load-time tuner may pick only it
    /// (its split count still tuned), so a test can run a build end to end whatever would measure fastest. Null: all compete.
    /// </summary>
    internal Kernels.TensorCoreVariant? OnlyTensorCoreVariant { get; init; }

    /// <summary>
    /// Quantize a bf16 checkpoint's (or synthetic) layer weights while they load: <see cref="QuantizeMode.Fp8"/>
    /// stores e4m3 with one scale per output channel (half the bytes per token); <see cref="QuantizeMode.Int4"/> 4-bit
    /// codes with a scale and zero point per 128 inputs (<c>Int4Rtn</c>; about a quarter). The CPU reference computes
    /// with the same weights, dequantized. Checkpoints that are already quantized load as they are
    /// (<see cref="QuantizeMode.Int4"/> is refused on FP8 ones).
    /// </summary>
    public QuantizeMode Quantize { get; init; }

    /// <summary>
    /// How the KV cache stores keys and values. <see cref="KvCacheKind.Fp8"/> (e4m3 codes and one fp32 scale per position
    /// and KV head, <see cref="Model.KvCacheFp8"/>; docs/KV_CACHE.md) about halves its bytes, so the memory plan's pool
    /// holds about twice the positions; the GPU engine and the CPU reference both run it (the GPU's attention reads
    /// code × scale rounded to bf16).
    /// </summary>
    public KvCacheKind KvCache { get; init; }

    /// <summary>CUDA device ordinal (with tensor parallel, the first of the <see cref="TensorParallel"/> devices used).</summary>
    public int Device { get; init; }

    /// <summary>
    /// GPUs to split the model over (tensor parallelism); 1: one GPU. It must divide the model's key/value heads and its
    /// intermediate size (QwQ-32B: 1, 2, 4 or 8); see docs/TENSOR_PARALLEL.md. Checked when a model loads
    /// (<c>TensorParallelSupport.EnsureSupported</c>). The GPU engine uses devices <see cref="Device"/> to
    /// <see cref="Device"/> + N − 1, one CUDA context, stream and thread each, in one process.
    /// </summary>
    public int TensorParallel { get; init; } = 1;

    /// <summary>How tensor-parallel ranks sum their partial products: our one-shot kernel for decode-sized steps (the default) or NCCL throughout.</summary>
    public AllReduceKind AllReduce { get; init; } = AllReduceKind.Custom;

    /// <summary>
    /// How a config's YaRN rope_scaling is applied (<see cref="RopeScalingMode"/>); null: <see cref="RopeScalingMode.Adaptive"/>
    /// when the config has YaRN (plain RoPE while a sequence fits the switch, YaRN past it; a sequence that crosses runs
    /// again from position 0 in YaRN, in chunks under <see cref="Batching.BatchScheduler"/>). <see cref="RopeScalingMode.Static"/>
    /// is what transformers and vLLM do. See README, "Rope scaling".
    /// </summary>
    public RopeScalingMode? RopeScaling { get; init; }

    /// <summary>
    /// With <see cref="RopeScalingMode.Adaptive"/>: a sequence runs plain RoPE while its length is at most this, and switches
    /// to YaRN at the step that takes it past. Null: the config's original_max_position_embeddings (QwQ-32B: 32768), where the
    /// model without YaRN ends. In [1, original_max_position_embeddings].
    /// </summary>
    public int? RopeSwitchPosition { get; init; }

    /// <summary>
    /// With <see cref="RopeScalingMode.Adaptive"/>: how a sequence's cache turns to the other rope at the switch
    /// (<see cref="RopeSwitchMethod"/>): recompute it (exact, the default) or re-rotate the cached keys in place (a few
    /// milliseconds, approximate). See README, "Rope scaling".
    /// </summary>
    public RopeSwitchMethod RopeSwitch { get; init; } = RopeSwitchMethod.Recompute;
}

/// <summary>
/// How an adaptive sequence's cache changes rope when it crosses the switch (or comes back below it).
/// <para>
/// The issue proposed re-rotating the cached keys in place and said that makes the cache exactly what static YaRN
/// writes. That holds for the first layer only. Every later layer's K and V are projections of hidden states that earlier
/// layers' attention produced, and that attention ran with plain RoPE (other angles, and no attention factor, which
/// alone scales the attention logits by factor² ≈ 1.30 for QwQ). Re-rotation fixes the angles of those keys but not what
/// they were computed from, so the cache stays a hybrid: on the 2-layer tiny-yarn fixture the logits after the switch
/// are ~1% (relative) from the static-YaRN reference, where a 1-layer model matches to 1e-7. Hence recompute by default,
/// and re-rotation for who prefers a switch of milliseconds to one of seconds (a lone long generation that would
/// otherwise pause once at the switch).
/// </para>
/// </summary>
public enum RopeSwitchMethod
{
    /// <summary>
    /// Run the sequence again from position 0 in the new rope (in the step that switches it, or in prefill-budget chunks
    /// under <see cref="Batching.BatchScheduler"/>). Exactly the static-YaRN (or plain) cache; costs one prefill of the
    /// sequence's length.
    /// </summary>
    Recompute,
    /// <summary>
    /// Turn the cached keys in place (<c>Model.AdaptiveYarn</c>; on the GPU one kernel over the sequence's blocks of every
    /// layer): milliseconds, exact in layer 0 only (see the type's remarks).
    /// </summary>
    Rerotate,
}

/// <summary>How a config's YaRN rope_scaling is applied (a config without it always runs plain RoPE).</summary>
public enum RopeScalingMode
{
    /// <summary>
    /// Per sequence: plain RoPE (exactly the model without YaRN) while the sequence fits the switch position; the step that
    /// takes it past rewrites its cache in YaRN (running the sequence again from position 0) and it continues with YaRN,
    /// so the cache is exactly what a <see cref="Static"/> run would have written. Short texts keep the model's unscaled
    /// quality, as QwQ-32B's card advises. The default for a config with YaRN.
    /// </summary>
    Adaptive,
    /// <summary>YaRN at every position of every sequence, as transformers (and vLLM) apply rope_scaling.</summary>
    Static,
    /// <summary>Plain RoPE at every position, as if the config had no rope_scaling (the context limit stays the config's).</summary>
    Off,
}

/// <summary>How to store the layers' linear weights of a bf16 checkpoint on the GPU.</summary>
public enum QuantizeMode
{
    /// <summary>As the checkpoint stores them (bf16).</summary>
    None,
    /// <summary>FP8 E4M3, one fp32 scale per output channel (amax / 448), rounded to nearest.</summary>
    Fp8,
    /// <summary>
    /// INT4, round-to-nearest, group 128, asymmetric (a scale and zero point per 128 inputs; exact arithmetic in
    /// <c>QwQ.Cuda.Weights.Quantization.Int4Rtn</c>). Lower quality than AWQ's calibrated weights: prefer the
    /// QwQ-32B-AWQ checkpoint. Every layer input size must be a multiple of 128.
    /// </summary>
    Int4,
}

/// <summary>How the KV cache stores keys (after bias and RoPE) and values (docs/KV_CACHE.md).</summary>
public enum KvCacheKind
{
    /// <summary>
    /// bf16 K and V, the default: 2 × kv_heads × head_dim × 2 bytes per position and layer. The CPU reference keeps them in
    /// fp32, unrounded, as it always has.
    /// </summary>
    Bf16,
    /// <summary>
    /// FP8 E4M3: per position, layer and KV head, head_dim codes and one fp32 scale amax / 448 for K and for V
    /// (<see cref="Model.KvCacheFp8"/>): 2 × kv_heads × (head_dim + 4) bytes per position and layer.
    /// </summary>
    Fp8,
}

/// <summary>
/// The prefill products: cublasGemmEx; cuBLASLt with its heuristic's first algorithm, chosen once per shape; or cuBLASLt
/// with, at the prefill chunk's row count, whichever of the heuristic's first 16 algorithms measured fastest at load
/// (about a second; other row counts keep the first pick). Why the third: the 16k prefill spends three quarters of its
/// time in these products at 624–689 TFLOP/s against the 8192³ GEMM's ~775 (bench/NOTES.md, sessions 20 and 22).
/// </summary>
public enum PrefillGemm { Cublas, CublasLt, CublasLtTuned }

/// <summary>How fp8 weights run prefill-sized products (<see cref="EngineOptions.Fp8Prefill"/>).</summary>
public enum Fp8PrefillGemm
{
    /// <summary><see cref="Fp8"/> on compute capability 9.x (where cuBLASLt scales FP8 products by outer vectors), else <see cref="Dequantize"/>.</summary>
    Auto,
    /// <summary>Expand the weight to a bf16 scratch and run the bf16 GEMM (<see cref="EngineOptions.PrefillGemm"/>): any GPU, bf16 activations.</summary>
    Dequantize,
    /// <summary>
    /// e4m3 × e4m3 on the FP8 tensor cores through cuBLASLt: activations quantized per token (amax / 448), per-channel weight
    /// scales and per-token activation scales applied to the fp32 accumulator; sm_90 only (cuBLASLt refuses it elsewhere).
    /// </summary>
    Fp8,
    /// <summary><see cref="Fp8"/> with cuBLASLt's fast accumulation (no periodic fp32 promotion of the accumulator): for measuring.</summary>
    Fp8FastAccum,
}

/// <summary>Whether fp8 prefill keeps row-major copies of the weights (<see cref="EngineOptions.Fp8PrefillCopy"/>).</summary>
public enum Fp8PrefillCopy
{
    /// <summary><see cref="Keep"/> when the KV pool still holds the model's longest context and half its positions beside the copy, else <see cref="Untile"/>.</summary>
    Auto,
    /// <summary>A row-major e4m3 copy of every layer weight stays on the device for the FP8 prefill GEMM; the plan fails if it does not fit.</summary>
    Keep,
    /// <summary>Each product's weight is untiled into a scratch every prefill pass (no extra memory).</summary>
    Untile,
}

/// <summary>Load progress: bytes of weights on the device so far.</summary>
public readonly record struct LoadProgress(string Stage, long BytesDone, long BytesTotal, string? Tensor = null)
{
    public double Fraction => BytesTotal == 0 ? 1 : (double)BytesDone / BytesTotal;
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Engine;

/// <summary>Whether this engine runs a weight kind on the GPU today.</summary>
public enum GpuSupport
{
    /// <summary>It loads and runs.</summary>
    Yes,
    /// <summary>The kind has kernels, but not for this model's shapes.</summary>
    No,
}

/// <summary>
/// One weight kind on one card: what it takes and the context that fits (<see cref="Plan"/>, the engine's own
/// <see cref="MemoryPlan"/>), or why it does not fit (<see cref="DoesNotFit"/>).
/// </summary>
public sealed record MemoryTableRow(
    WeightKind Kind,
    long WeightBytes,
    long WorkspaceBytes,
    long KvBytesPerToken,
    MemoryPlan? Plan,
    string? DoesNotFit,
    GpuSupport Gpu,
    string GpuNote,
    bool IsCheckpointKind)
{
    /// <summary>The kind as results files and <c>qwq info</c> spell it: bf16, fp8, int4-awq.</summary>
    public string Name => MemoryTable.KindName(Kind);

    public bool Fits => Plan is not null;
}

/// <summary>
/// The memory plan of every weight kind (bf16, fp8, int4-awq) on one card: "does it fit, and with how much context".
/// Each row is the engine's <see cref="MemoryPlan"/> for that kind, so the numbers are what a load would pick. With
/// <see cref="EngineOptions.TensorParallel"/> = N the card is one of N alike, and every figure is per card: its share
/// of the weights, its KV heads.
/// </summary>
public sealed record MemoryTable(long? CardBytes, long FreeBytes, IReadOnlyList<MemoryTableRow> Rows, int TensorParallel = 1)
{
    /// <summary>The kinds a table lists, in this order.</summary>
    public static IReadOnlyList<WeightKind> Kinds { get; } = [WeightKind.Bf16, WeightKind.Fp8, WeightKind.Int4Awq];

    /// <summary>
    /// What a context and the driver keep on an idle card, beside the part CUDA never shows: an 80 GB H100 (80 GiB of
    /// HBM) reports 79.2 GiB total and about 78.7 GiB free once a context exists.
    /// </summary>
    public const long ContextOverheadBytes = 512L << 20;

    /// <summary>Percent of a card's memory CUDA reports as its total (the rest is ECC and the driver's; H100 80GB: 79.2 of 80 GiB).</summary>
    public const int VisiblePercent = 99;

    /// <summary>
    /// Free memory assumed on an idle card of <paramref name="cardBytes"/> once a CUDA context exists: 99% of it less
    /// 0.5 GiB (80 GiB → 78.7 GiB). Real cards differ by a few hundred MiB, more with a display attached; planning for
    /// the present GPU uses its own figure instead.
    /// </summary>
    public static long AssumedFreeBytes(long cardBytes) =>
        Math.Max(0, cardBytes - cardBytes / 100 * (100 - VisiblePercent) - ContextOverheadBytes);

    /// <summary>The table for a card of <paramref name="cardBytes"/> (free memory assumed: <see cref="AssumedFreeBytes"/>).</summary>
    public static MemoryTable For(ModelConfig c, long cardBytes, EngineOptions o)
    {
        if (cardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(cardBytes), cardBytes, "a card has more than 0 bytes");
        return Build(c, cardBytes, AssumedFreeBytes(cardBytes), o);
    }

    /// <summary>
    /// The table for <paramref name="freeBytes"/> measured on a device after its context was created. With the device's
    /// compute capability (<paramref name="computeCapabilityMajor"/>) the fp8 row is what a load there picks, the
    /// row-major copies for the FP8 prefill GEMM included (<see cref="EngineOptions.Fp8PrefillCopy"/>, on 9.x); without
    /// it, and for cards that are only a size (<see cref="For"/>), prefill is assumed to untile (no copies).
    /// </summary>
    public static MemoryTable ForFreeBytes(ModelConfig c, long freeBytes, EngineOptions o, int? computeCapabilityMajor = null) =>
        Build(c, null, freeBytes, o,
            computeCapabilityMajor is int major && LinearOps.Resolve(o.Fp8Prefill, major) != Fp8PrefillGemm.Dequantize);

    /// <summary>The kind a checkpoint's layers are stored as: bf16 for plain weights (they load as bf16), fp8, int4-awq; null for another layout.</summary>
    public static WeightKind? CheckpointKind(ModelConfig c) => c.Quantization switch
    {
        null => WeightKind.Bf16,
        Fp8QuantizationConfig => WeightKind.Fp8,
        AwqQuantizationConfig => WeightKind.Int4Awq,
        _ => null,
    };

    public static string KindName(WeightKind kind) => kind switch
    {
        WeightKind.Bf16 => "bf16",
        WeightKind.Fp8 => "fp8",
        WeightKind.Int4Awq => "int4-awq",
        _ => kind.ToString().ToLowerInvariant(),
    };

    /// <summary>The row of <paramref name="kind"/>.</summary>
    public MemoryTableRow this[WeightKind kind] => Rows.First(r => r.Kind == kind);

    private static MemoryTable Build(ModelConfig c, long? cardBytes, long freeBytes, EngineOptions o, bool fp8Gemm = false)
    {
        WeightKind? checkpoint = CheckpointKind(c);
        RankShape shape = o.TensorParallel > 1 ? TensorParallelPlan.Create(c, o.TensorParallel).Shape : RankShape.Whole(c);
        var rows = new List<MemoryTableRow>();
        foreach (WeightKind kind in Kinds)
        {
            MemoryPlan? plan = null;
            string? reason = null;
            long? failedWorkspace = null;  // the failed plan's, at the chunk it shrank to: what its message names
            try { plan = MemoryPlan.Create(shape, freeBytes, o, kind, fp8Gemm); }
            catch (CudaOutOfMemoryPlanException e) { (reason, failedWorkspace) = (e.Message, e.WorkspaceBytes); }
            var (gpu, note) = Support(c, kind, o.TensorParallel);
            long workspace = plan?.WorkspaceBytes ?? failedWorkspace ?? MemoryPlan.WorkspaceBytesFor(shape, o.PrefillChunk, kind);
            rows.Add(new MemoryTableRow(kind, ModelWeights.DeviceBytes(shape, kind), workspace,
                KvPool.BytesPerToken(shape.Config, o.KvCache), plan, reason, gpu, note, kind == checkpoint));
        }
        return new MemoryTable(cardBytes, freeBytes, rows, shape.Ranks);
    }

    /// <summary>
    /// Whether a load would take this kind: a checkpoint already stored so as it is (<paramref name="isCheckpointKind"/>),
    /// any other model as its bf16 release under --quantize.
    /// </summary>
    private static (GpuSupport, string) AskLoad(ModelConfig c, QuantizeMode mode, bool isCheckpointKind, string how, int tensorParallel)
    {
        try
        {
            var model = isCheckpointKind ? c : c with { Quantization = null };
            var options = new EngineOptions { Quantize = mode, TensorParallel = tensorParallel };
            CudaBackend.LinearKind(model, options);
            if (tensorParallel > 1) CudaBackend.EnsureShardable(model, TensorParallelPlan.Create(model, tensorParallel).Shape, options);
            return (GpuSupport.Yes, isCheckpointKind ? "yes" : $"yes ({how})");
        }
        catch (OptionException e)
        {
            return (GpuSupport.No, $"no: {e.Message}");
        }
    }

    /// <summary>Whether the engine runs <paramref name="kind"/> for this model today, asked of the same check a load makes.</summary>
    private static (GpuSupport, string) Support(ModelConfig c, WeightKind kind, int tensorParallel)
    {
        switch (kind)
        {
            case WeightKind.Bf16:
                return (GpuSupport.Yes, "yes"); // a plain checkpoint, or a quantized one's bf16 release, at any valid tensor-parallel size
            case WeightKind.Fp8:
                return AskLoad(c, QuantizeMode.Fp8, c.Quantization is Fp8QuantizationConfig, "--quantize fp8, or an FP8 checkpoint", tensorParallel);
            default:
                return AskLoad(c, QuantizeMode.Int4, c.Quantization is AwqQuantizationConfig, "--quantize int4, or an AWQ checkpoint", tensorParallel);
        }
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Engine;

/// <summary>
/// How device memory is split between weights, activation workspace and the paged KV pool (its bytes per position as
/// <see cref="EngineOptions.KvCache"/> stores them: <see cref="KvBytesPerToken"/>). The pool takes what the
/// weights and workspace leave (less a reserve) — nano-vllm's rule — capped at <see cref="MaxPoolSequences"/>
/// sequences of the model's maximum length (small test models need no more). A sequence may grow to
/// <see cref="MaxContext"/> positions while the pool has blocks for it. <see cref="PrefillChunk"/>: the most rows one
/// step takes, <see cref="EngineOptions.PrefillChunk"/> or, on a card where that would leave the pool fewer than
/// <see cref="ComfortablePositions"/> positions (or than the <see cref="EngineOptions.MaxContext"/> or
/// <see cref="EngineOptions.KvPoolPositions"/> asked for, if more), a smaller power-of-two share of it (not below <see cref="MinPrefillChunk"/>).
/// <see cref="Fp8PrefillCopyBytes"/>: the row-major copies of fp8 weights kept for the FP8 prefill GEMM
/// (<see cref="EngineOptions.Fp8PrefillCopy"/>), 0 when prefill untiles them per pass.
/// </summary>
public sealed record MemoryPlan(
    long WeightBytes,
    long WorkspaceBytes,
    long KvBytesPerToken,
    long FreeBytes,
    long ReserveBytes,
    int KvPoolBlocks,
    int MaxContext,
    int PrefillChunk,
    long Fp8PrefillCopyBytes = 0)
{
    /// <summary>
    /// A plan shrinks the prefill chunk, whose activations cost about 0.35 GiB per 1024 rows at QwQ-32B's size, while the
    /// pool would hold fewer positions than this (or the model's maximum, if smaller): INT4 QwQ-32B on a 24 GB card then
    /// keeps an 8k context rather than 4096-row prefill steps (the products still run on the tensor cores at 512 rows; int4 and fp8 re-expand their weights once per chunk, about 26 ms for QwQ-32B).
    /// </summary>
    public const int ComfortablePositions = 8192;

    /// <summary>The smallest prefill chunk a plan picks by itself.</summary>
    public const int MinPrefillChunk = 512;

    /// <summary>The pool never holds more than this many full-length sequences.</summary>
    public const int MaxPoolSequences = Workspace.MaxSequences;

    /// <summary>Positions in the pool, over all sequences.</summary>
    public long KvPoolPositions => (long)KvPoolBlocks * AttentionOps.KvBlockSize;

    public long KvCacheBytes => KvBytesPerToken * KvPoolPositions;

    /// <summary>Block-table width: blocks of the longest sequence the model supports.</summary>
    public static int MaxBlocksPerSequence(ModelConfig c) => (ModelMaxPositions(c) + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize;

    /// <summary>
    /// Plans for <paramref name="freeBytes"/> of free device memory (measured after the context is created), with the
    /// layers' linear weights stored as <paramref name="linearKind"/>.
    /// Throws <see cref="CudaOutOfMemoryPlanException"/> when the weights do not fit or the asked-for context does not.
    /// </summary>
    public static MemoryPlan Create(ModelConfig c, long freeBytes, EngineOptions o, WeightKind linearKind = WeightKind.Bf16) =>
        Create(RankShape.Whole(c), freeBytes, o, linearKind);

    /// <summary>
    /// The plan of one GPU holding <paramref name="shape"/> (with tensor parallel every GPU's: the same shapes and, from the
    /// GPU with the least free memory, the same number of KV blocks). Weight, workspace and KV bytes are per GPU.
    /// <paramref name="fp8Gemm"/>: fp8 prefill will run on the FP8 GEMM (compute capability 9.x), the only path that
    /// reads row-major fp8 copies; without it <see cref="EngineOptions.Fp8PrefillCopy"/> is moot and nothing is kept.
    /// </summary>
    internal static MemoryPlan Create(RankShape shape, long freeBytes, EngineOptions o, WeightKind linearKind, bool fp8Gemm = false)
    {
        ModelConfig c = shape.Config;
        long weights = ModelWeights.DeviceBytes(shape, linearKind);
        long kvPerToken = KvPool.BytesPerToken(c, o.KvCache); // fp8 (--kv-cache fp8): 2,112 of bf16's 4,096 bytes per position and layer
        long blockBytes = KvPool.BytesPerBlock(c, o.KvCache);
        int modelMax = ModelMaxPositions(c);
        long copy = linearKind == WeightKind.Fp8 && fp8Gemm && o.Fp8PrefillCopy != Fp8PrefillCopy.Untile ? ModelWeights.Fp8RowMajorBytes(shape) : 0;
        long FitBlocksBeside(int chunk, long copyBytes)
        {
            long left = freeBytes - weights - copyBytes - WorkspaceBytesFor(shape, chunk, linearKind) - o.ReserveBytes;
            return left <= 0 ? 0 : left / blockBytes;
        }
        if (copy > 0 && o.Fp8PrefillCopy == Fp8PrefillCopy.Auto)
        {
            // Keep the copies only where they cost the pool little: it must still hold the longest context (or the pool
            // asked for) and at least half the positions it would hold without them. An H200 with QwQ-32B does; an 80 GB
            // H100 would give up three quarters of its pool, so it untiles per pass.
            long want = o.KvPoolPositions is int poolAskedFor ? (poolAskedFor + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize
                                                              : (long)MaxPoolSequences * MaxBlocksPerSequence(c);
            long withCopies = Math.Min(FitBlocksBeside(o.PrefillChunk, copy), want);
            long withoutCopies = Math.Min(FitBlocksBeside(o.PrefillChunk, 0), want);
            long modelMaxBlocks = (modelMax + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize;
            if (withCopies < Math.Min(modelMaxBlocks, want) || 2 * withCopies < withoutCopies) copy = 0;
        }
        if (copy > 0 && FitBlocksBeside(MinPrefillChunk, copy) < 1)
            throw new CudaOutOfMemoryPlanException(
                $"not enough GPU memory for the row-major fp8 copies that --fp8-prefill-copy keep asks for ({Gib(copy)} beside " +
                $"{Gib(weights)} of weights, {Gib(freeBytes)} free); use --fp8-prefill-copy auto or untile.");
        long FitBlocks(int chunk) => FitBlocksBeside(chunk, copy);
        int prefillChunk = o.PrefillChunk;
        // A context (or pool) asked for is a target too: smaller chunks leave room for it, where 8k alone would stop
        // early and refuse an asked context that fits (INT4 QwQ-32B on 24 GiB: 8,512 positions at 1088 rows, 8,896 at 544).
        long comfortableBlocks = Math.Max(
            (Math.Min(Math.Max(ComfortablePositions, o.MaxContext ?? 0), modelMax) + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize,
            ((long)(o.KvPoolPositions ?? 0) + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize);
        while (prefillChunk / 2 >= MinPrefillChunk && FitBlocks(prefillChunk) < comfortableBlocks) prefillChunk /= 2;
        long workspace = WorkspaceBytesFor(shape, prefillChunk, linearKind);
        long fitBlocks = FitBlocks(prefillChunk);
        if (fitBlocks < 1)
            throw new CudaOutOfMemoryPlanException(
                $"not enough GPU memory: the weights need {Gib(weights)} and the workspace {Gib(workspace)}, " +
                $"but only {Gib(freeBytes)} is free (reserve {Gib(o.ReserveBytes)}). Use a GPU with more memory or free it from other processes.",
                workspace);
        long capBlocks = (long)MaxPoolSequences * MaxBlocksPerSequence(c);
        if (o.KvPoolPositions is int poolAsked)
        {
            if (poolAsked < AttentionOps.KvBlockSize) throw new OptionException($"a KV pool of {poolAsked} positions is too small: at least {AttentionOps.KvBlockSize}");
            capBlocks = (poolAsked + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize;
            if (capBlocks > fitBlocks)
                throw new CudaOutOfMemoryPlanException(
                    $"a KV pool of {poolAsked} positions needs {Gib(capBlocks * blockBytes)} but only {Gib(fitBlocks * blockBytes)} " +
                    $"({fitBlocks * AttentionOps.KvBlockSize} positions) fits beside the weights.", workspace);
        }
        int blocks = (int)Math.Min(Math.Min(fitBlocks, capBlocks), int.MaxValue / AttentionOps.KvBlockSize);
        int poolPositions = blocks * AttentionOps.KvBlockSize;
        int max = Math.Min(poolPositions, modelMax);
        if (o.MaxContext is int asked)
        {
            if (asked < 1) throw new OptionException($"--max-context {asked} must be at least 1");
            if (asked > modelMax) throw new OptionException($"--max-context {asked} exceeds the model's {modelMax} positions");
            if (asked > poolPositions)
                throw new CudaOutOfMemoryPlanException(
                    $"--max-context {asked} needs {Gib(asked * kvPerToken)} of KV cache but only {Gib((long)poolPositions * kvPerToken)} " +
                    $"({poolPositions} positions) fits beside the weights; use --max-context {poolPositions} or less.", workspace);
            max = asked;
        }
        return new MemoryPlan(weights, workspace, kvPerToken, freeBytes, o.ReserveBytes, blocks, max, prefillChunk, copy);
    }

    /// <summary>
    /// Activation workspace (with fp8 weights also the per-token e4m3 copy of a product's input for the FP8 GEMM) and the
    /// quantized kinds' bf16 scratch: what a plan sets aside besides weights and KV.
    /// </summary>
    public static long WorkspaceBytesFor(ModelConfig c, int prefillChunk, WeightKind linearKind) =>
        WorkspaceBytesFor(RankShape.Whole(c), prefillChunk, linearKind);

    /// <summary>The same for one GPU holding <paramref name="shape"/>, with tensor parallel's partial and gathered-logit buffers.</summary>
    internal static long WorkspaceBytesFor(RankShape shape, int prefillChunk, WeightKind linearKind)
    {
        ModelConfig c = shape.Config;
        return Workspace.DeviceBytes(c, prefillChunk, MaxBlocksPerSequence(c), logitsWidth: shape.LmHeadRows, linearKind: linearKind) + ModelWeights.ScratchBytes(c, linearKind) +
               ResidualSum.DeviceBytes(shape, prefillChunk, Workspace.LogitRowsFor(c, prefillChunk));
    }

    /// <summary>
    /// Positions the model supports: max_position_embeddings, or with YaRN factor × original_max_position_embeddings
    /// (QwQ: 4 × 32768 = 131072) when that is larger.
    /// </summary>
    public static int ModelMaxPositions(ModelConfig c) =>
        c.RopeScaling is { } rs
            ? Math.Max(c.MaxPositionEmbeddings, (int)(rs.Factor * rs.OriginalMaxPositionEmbeddings))
            : c.MaxPositionEmbeddings;

    internal static string Gib(long bytes) => $"{bytes / (double)(1L << 30):F1} GiB";
}

/// <summary>
/// The memory plan does not fit the device. <see cref="WorkspaceBytes"/>: the workspace of the plan that failed (at the
/// prefill chunk it had shrunk to), where it got that far, so a table row beside the message shows the same figure.
/// </summary>
public sealed class CudaOutOfMemoryPlanException(string message, long? workspaceBytes = null) : QwqException(message)
{
    public long? WorkspaceBytes { get; } = workspaceBytes;
}

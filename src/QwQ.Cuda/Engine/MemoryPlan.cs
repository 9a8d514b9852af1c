using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Engine;

/// <summary>
/// How device memory is split between weights, activation workspace and KV cache. The KV cache takes what the
/// weights and workspace leave (less a reserve), capped at the model's maximum positions — nano-vllm's rule.
/// </summary>
public sealed record MemoryPlan(
    long WeightBytes,
    long WorkspaceBytes,
    long KvBytesPerToken,
    long FreeBytes,
    long ReserveBytes,
    int MaxContext)
{
    public long KvCacheBytes => KvBytesPerToken * MaxContext;

    /// <summary>
    /// Plans for <paramref name="freeBytes"/> of free device memory (measured after the context is created).
    /// Throws <see cref="CudaOutOfMemoryPlanException"/> when the weights do not fit or the asked-for context does not.
    /// </summary>
    public static MemoryPlan Create(ModelConfig c, long freeBytes, EngineOptions o)
    {
        long weights = ModelWeights.DeviceBytes(c);
        long workspace = Workspace.DeviceBytes(c, o.PrefillChunk);
        long kvPerToken = c.KvBytesPerToken;
        long left = freeBytes - weights - workspace - o.ReserveBytes;
        int modelMax = ModelMaxPositions(c);
        int fits = left <= 0 ? 0 : (int)Math.Min(int.MaxValue, left / kvPerToken);
        if (fits < 1)
            throw new CudaOutOfMemoryPlanException(
                $"not enough GPU memory: the weights need {Gib(weights)} and the workspace {Gib(workspace)}, " +
                $"but only {Gib(freeBytes)} is free (reserve {Gib(o.ReserveBytes)}). Use a GPU with more memory or free it from other processes.");
        int max = Math.Min(fits, modelMax);
        if (o.MaxContext is int asked)
        {
            if (asked < 1) throw new OptionException($"--max-context {asked} must be at least 1");
            if (asked > modelMax) throw new OptionException($"--max-context {asked} exceeds the model's {modelMax} positions");
            if (asked > fits)
                throw new CudaOutOfMemoryPlanException(
                    $"--max-context {asked} needs {Gib(asked * kvPerToken)} of KV cache but only {Gib(fits * kvPerToken)} " +
                    $"({fits} positions) fits beside the weights; use --max-context {fits} or less.");
            max = asked;
        }
        return new MemoryPlan(weights, workspace, kvPerToken, freeBytes, o.ReserveBytes, max);
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

/// <summary>The memory plan does not fit the device.</summary>
public sealed class CudaOutOfMemoryPlanException(string message) : QwqException(message);

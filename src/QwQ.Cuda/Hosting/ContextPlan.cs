using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Hosting;

/// <summary>
/// A host-side estimate of how a GPU's memory splits between weights and KV cache, computed from config.json
/// alone (no weights, no GPU): <c>qwq info</c> shows it. The engine makes its own exact plan when it loads.
/// Max context = (free − weights − workspace − reserve) / KV bytes per token, capped at the model's positions.
/// </summary>
public sealed record ContextPlan(
    long FreeBytes,
    long WeightBytes,
    long WorkspaceBytes,
    long ReserveBytes,
    long KvBytesPerToken,
    int ModelMaxPositions,
    int MaxContext)
{
    /// <summary>Free memory of an idle 80 GB H100 after a CUDA context is created (about 79.1 GiB).</summary>
    public const long H100FreeBytes = 84_935_000_000;

    public long KvCacheBytes => KvBytesPerToken * MaxContext;

    /// <summary>True when the weights and at least one position fit.</summary>
    public bool Fits => MaxContext > 0;

    /// <summary>Plans for <paramref name="freeBytes"/> of free device memory with <paramref name="options"/>' reserve and prefill chunk.</summary>
    public static ContextPlan Create(ModelConfig config, long freeBytes, EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        // bf16 on the device whatever the checkpoint dtype.
        long weights = config.ParameterCount * 2;
        long workspace = WorkspaceEstimate(config, options.PrefillChunk);
        long kvPerToken = config.KvBytesPerToken;
        long left = freeBytes - weights - workspace - options.ReserveBytes;
        int fits = left <= 0 ? 0 : (int)Math.Min(int.MaxValue, left / kvPerToken);
        int max = Math.Min(fits, config.MaxPositionEmbeddings);
        if (options.MaxContext is int asked) max = Math.Min(max, asked);
        return new ContextPlan(freeBytes, weights, workspace, options.ReserveBytes, kvPerToken, config.MaxPositionEmbeddings, max);
    }

    /// <summary>
    /// Activations of one prefill chunk: fp32 residual and bf16 copies [chunk, hidden], qkv [chunk, qkv],
    /// gate/up [chunk, 2·I] and fp32 logits for the last position [vocab]. An estimate, not the engine's exact figure.
    /// </summary>
    internal static long WorkspaceEstimate(ModelConfig c, int chunk)
    {
        long t = Math.Max(1, chunk);
        long perToken = 4L * c.HiddenSize * 2 + 2L * c.HiddenSize + 2L * c.QkvDim + 2L * c.QDim + 2L * 2 * c.IntermediateSize + 2L * c.IntermediateSize;
        return t * perToken + 4L * c.VocabSize * 2;
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Hosting;

/// <summary>Creates the backend a <see cref="QwqModel"/> runs on.</summary>
internal static class BackendFactory
{
    /// <param name="validVocab">The tokenizer's size: the CPU sampler never picks ids at or above it.</param>
    public static IModelBackend Create(BackendKind kind, ModelConfig config, string? checkpointDir, EngineOptions options,
        int validVocab, IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        TensorParallelSupport.EnsureSupported(config, options, kind);
        return kind switch
        {
            BackendKind.Cpu => CpuReferenceBackend.Load(config, checkpointDir, options, progress, ct, validVocab),
            // the embedding has more rows than the tokenizer has tokens: the GPU sampler must never pick the padding rows
            _ => CudaBackend.Load(config, checkpointDir, options with { SampleableVocab = options.SampleableVocab ?? validVocab }, progress, ct),
        };
    }
}

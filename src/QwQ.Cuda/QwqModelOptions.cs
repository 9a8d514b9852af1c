using QwQ.Cuda.Batching;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda;

/// <summary>Which forward pass runs the model.</summary>
public enum BackendKind
{
    /// <summary>The CUDA engine: bf16 weights on one NVIDIA GPU.</summary>
    Cuda,
    /// <summary>The float32 CPU reference: small models, tests, CI (4 bytes a parameter, slow).</summary>
    Cpu,
}

/// <summary>How <see cref="QwqModel.LoadAsync(string, QwqModelOptions?, IProgress{LoadProgress}?, CancellationToken)"/> loads a model.</summary>
public sealed record QwqModelOptions
{
    /// <summary>Engine settings: context length, memory reserve, CUDA graphs, device, synthetic seed.</summary>
    public EngineOptions Engine { get; init; } = new();

    /// <summary>
    /// A preset architecture name (e.g. "qwq-32b") to run with synthetic weights instead of a checkpoint. The
    /// tokenizer then comes from <see cref="TokenizerPath"/> (or, when given, the model path's tokenizer files).
    /// </summary>
    public string? Synthetic { get; init; }

    public BackendKind Backend { get; init; } = BackendKind.Cuda;

    /// <summary>How the model's scheduler batches concurrent generations (batch size, prefill budget per step).</summary>
    public SchedulerOptions Scheduler { get; init; } = new();

    /// <summary>Directory with tokenizer.json and tokenizer_config.json; null: the model directory.</summary>
    public string? TokenizerPath { get; init; }
}

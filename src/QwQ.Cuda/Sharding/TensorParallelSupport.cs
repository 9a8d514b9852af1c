using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Sharding;

/// <summary>
/// The one place that decides whether <see cref="EngineOptions.TensorParallel"/> can run: every backend load goes
/// through <see cref="EnsureSupported"/> (<c>BackendFactory</c>, <c>qwq bench</c>). The size is checked against the
/// model first (<see cref="TensorParallelPlan.Check"/>), then against what the backend implements: the GPU engine runs
/// any valid size (<c>CudaBackend</c> checks the GPUs it needs when it loads); the CPU reference runs one rank.
/// </summary>
internal static class TensorParallelSupport
{
    /// <summary>Throws <see cref="OptionException"/> unless <paramref name="backend"/> can run <paramref name="options"/>' size on <paramref name="config"/>.</summary>
    public static void EnsureSupported(ModelConfig config, EngineOptions options, BackendKind backend)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        int n = options.TensorParallel;
        if (TensorParallelPlan.Check(config, n) is { } error) throw new OptionException(error);
        if (n == 1 || backend != BackendKind.Cpu) return;
        throw new OptionException($"--tensor-parallel {n}: the CPU reference backend runs on one device; use --tensor-parallel 1 with --backend cpu");
    }
}

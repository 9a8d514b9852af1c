using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

// Inside namespace QwQ.*, a bare `Cuda` means the namespace QwQ.Cuda; this alias picks the class.
using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>Shares one context per fixture; every test is skipped when there is no usable CUDA device.</summary>
public abstract class GpuTestBase
{
    private CudaContext? context;

    /// <summary>The device's primary context (only touched by tests that were not skipped).</summary>
    private protected CudaContext Context => context ?? throw new InvalidOperationException("no CUDA context");

    [OneTimeSetUp]
    public void CreateContext()
    {
        if (Cuda.IsAvailable(out _)) context = CudaContext.Create();
    }

    [SetUp]
    public void RequireGpu()
    {
        if (!Cuda.IsAvailable(out var reason) || context is null) Assert.Ignore($"no CUDA device ({reason})");
        context.MakeCurrent(); // NUnit may run a test on another thread than the one-time setup
    }

    [OneTimeTearDown]
    public void DisposeContext() => context?.Dispose();
}

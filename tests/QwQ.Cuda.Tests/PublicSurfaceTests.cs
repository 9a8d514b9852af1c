using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests;

/// <summary>The package's public API: what callers may depend on, and what stays ours to change.</summary>
public class PublicSurfaceTests
{
    [Test]
    public void KernelLaunchersAndCudaHandlesAreNotPublic()
    {
        // Exceptions stay public: callers catch them (out of memory, no CUDA device).
        var allowed = new[] { typeof(CudaException), typeof(CudaOutOfMemoryException), typeof(CudaUnavailableException) };
        var exposed = typeof(QwqModel).Assembly.GetExportedTypes()
            .Where(t => t.Namespace is "QwQ.Cuda.Kernels" or "QwQ.Cuda.Native" && !allowed.Contains(t))
            .Select(t => t.FullName)
            .ToList();
        Assert.That(exposed, Is.Empty, "kernel launchers and CUDA handles are implementation details; make them internal");
        // The check sees the namespaces at all: the allowed exceptions are exported from them.
        Assert.That(typeof(QwqModel).Assembly.GetExportedTypes().Count(t => t.Namespace == "QwQ.Cuda.Native"), Is.EqualTo(allowed.Length));
    }
}

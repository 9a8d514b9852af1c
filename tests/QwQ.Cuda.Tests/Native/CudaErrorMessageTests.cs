using QwQ.Cuda.Errors;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

public class CudaErrorMessageTests
{
    private static (string?, string?) NoDriver(int code) => throw new DllNotFoundException("libcuda.so.1");

    [Test]
    public void OutOfMemoryWithoutDriverUsesBuiltInNames()
    {
        var e = CudaErrors.Driver("cuMemAlloc_v2", 2, null, NoDriver);
        Assert.That(e, Is.InstanceOf<CudaOutOfMemoryException>());
        Assert.That(e, Is.InstanceOf<QwqException>());
        Assert.That(e.Message, Does.StartWith("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)"));
        Assert.That(e.Message, Does.Contain("--max-context"));
        Assert.That(e.Call, Is.EqualTo("cuMemAlloc_v2"));
        Assert.That(e.ErrorCode, Is.EqualTo(2));
    }

    [Test]
    public void OutOfMemoryWithWhateverDriverIsHere()
    {
        // Real cuGetErrorName/String when libcuda loads (it does not need a device), the built-in table otherwise.
        var e = CudaErrors.Driver("cuMemAlloc_v2", 2);
        Assert.That(e, Is.InstanceOf<CudaOutOfMemoryException>());
        Assert.That(e.Message, Does.StartWith("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)"));
    }

    [Test]
    public void DriverStringsWinOverTheTable()
    {
        var e = CudaErrors.Driver("cuLaunchKernel", 700, "kernel 'k'", _ => ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"));
        Assert.That(e.GetType(), Is.EqualTo(typeof(CudaException)));
        Assert.That(e.Message, Is.EqualTo("cuLaunchKernel failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered) — kernel 'k'"));
    }

    [Test]
    public void PartialDriverAnswerIsCompletedFromTheTable()
    {
        var e = CudaErrors.Driver("cuModuleLoadDataEx", 218, null, _ => (null, "custom text"));
        Assert.That(e.Message, Is.EqualTo("cuModuleLoadDataEx failed: CUDA_ERROR_INVALID_PTX (custom text)"));
    }

    [Test]
    public void UnknownCodeWithoutDriver()
    {
        var e = CudaErrors.Driver("cuFoo", 12345, null, NoDriver);
        Assert.That(e.Message, Is.EqualTo("cuFoo failed: CUDA_ERROR_12345 (unrecognized error code)"));
        Assert.That(e.ErrorCode, Is.EqualTo(12345));
    }

    [Test]
    public void InvalidContextExplainsHowToGetOne()
    {
        var e = CudaErrors.Driver("cuMemAlloc_v2", 201, null, NoDriver);
        Assert.That(e.Message, Does.StartWith("cuMemAlloc_v2 failed: CUDA_ERROR_INVALID_CONTEXT (invalid device context)"));
        Assert.That(e.Message, Does.Contain("CudaContext.Create()"));
    }

    [Test]
    public void CheckThrowsOnlyOnError()
    {
        Assert.DoesNotThrow(() => CudaErrors.Check(0, "cuInit"));
        var e = Assert.Throws<CudaOutOfMemoryException>(() => CudaErrors.Check(2, "cuMemAlloc_v2"));
        Assert.That(e!.Message, Does.StartWith("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY"));
        Assert.Throws<CudaException>(() => CudaErrors.Check(1, "cuMemcpyHtoD_v2"));
    }

    [Test]
    public void CublasStatusNames()
    {
        var e = CudaErrors.Cublas("cublasGemmEx", 7, "C[1,2]");
        Assert.That(e.GetType(), Is.EqualTo(typeof(CudaException)));
        Assert.That(e.Message, Does.StartWith("cublasGemmEx failed: CUBLAS_STATUS_INVALID_VALUE ("));
        Assert.That(e.Message, Does.Contain("— C[1,2]"));

        var oom = CudaErrors.Cublas("cublasCreate_v2", 3);
        Assert.That(oom, Is.InstanceOf<CudaOutOfMemoryException>());
        Assert.That(oom.Message, Does.StartWith("cublasCreate_v2 failed: CUBLAS_STATUS_ALLOC_FAILED (").And.Contain("--max-context"));

        Assert.That(CudaErrors.Cublas("x", 15).Message, Does.Contain("CUBLAS_STATUS_NOT_SUPPORTED"));
        Assert.That(CudaErrors.Cublas("x", 13).Message, Does.Contain("CUBLAS_STATUS_EXECUTION_FAILED"));
        Assert.That(CudaErrors.Cublas("x", 99).Message, Is.EqualTo("x failed: CUBLAS_STATUS_99 (unrecognized status code)"));
        Assert.Throws<CudaException>(() => CudaErrors.CheckCublas(14, "cublasLtMatmul"));
        Assert.DoesNotThrow(() => CudaErrors.CheckCublas(0, "cublasLtMatmul"));
    }

    [Test]
    public void UnavailableIsAQwqException() =>
        Assert.That(new CudaUnavailableException("no driver"), Is.InstanceOf<QwqException>());
}

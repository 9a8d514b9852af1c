using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Native;

/// <summary>A CUDA driver, cuBLAS or cuBLASLt call returned an error. The message names the call and the error.</summary>
public class CudaException : QwqException
{
    public CudaException(string call, int errorCode, string message) : base(message)
    {
        Call = call;
        ErrorCode = errorCode;
    }

    /// <summary>The native function that failed, e.g. "cuMemAlloc_v2".</summary>
    public string Call { get; }

    /// <summary>The raw CUresult or cublasStatus_t.</summary>
    public int ErrorCode { get; }
}

/// <summary>The GPU ran out of memory (CUDA_ERROR_OUT_OF_MEMORY or CUBLAS_STATUS_ALLOC_FAILED).</summary>
public sealed class CudaOutOfMemoryException(string call, int errorCode, string message)
    : CudaException(call, errorCode, message);

/// <summary>No usable CUDA: the driver or cuBLAS is missing, there is no device, or the driver is too old.</summary>
public sealed class CudaUnavailableException(string message) : QwqException(message);

using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace QwQ.Cuda.Native;

/// <summary>
/// Builds the exceptions for failed native calls. The message format is
/// "{call} failed: {ERROR_NAME} ({error string})[ — {detail}][. {hint}]", e.g.
/// "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
/// Pure string building is separated from the driver lookup so it can be tested without a GPU.
/// </summary>
internal static class CudaErrors
{
    internal const int CudaSuccess = 0;
    internal const int CudaErrorOutOfMemory = 2;
    internal const int CudaErrorInvalidContext = 201;
    internal const int CublasStatusAllocFailed = 3;

    internal const string OutOfMemoryHint =
        "The GPU ran out of memory: try a smaller --max-context (the KV cache grows with it), or free memory used by other processes.";

    internal const string NoContextHint =
        "No CUDA context is current on this thread: create one with CudaContext.Create() or call CudaContext.MakeCurrent().";

    /// <summary>Throws if <paramref name="result"/> is not CUDA_SUCCESS. Kept tiny so it inlines into every wrapper.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Check(int result, string call)
    {
        if (result != CudaSuccess) Throw(call, result, null);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CheckCublas(int status, string call)
    {
        if (status != 0) ThrowCublas(call, status, null);
    }

    [MethodImpl(MethodImplOptions.NoInlining), DoesNotReturn]
    internal static void Throw(string call, int result, string? detail) => throw Driver(call, result, detail);

    [MethodImpl(MethodImplOptions.NoInlining), DoesNotReturn]
    internal static void ThrowCublas(string call, int status, string? detail) => throw Cublas(call, status, detail);

    /// <summary>The exception for a failed driver call, with names/strings from the driver when it is loadable.</summary>
    internal static CudaException Driver(string call, int result, string? detail = null) =>
        Driver(call, result, detail, DriverLookup);

    internal static CudaException Driver(string call, int result, string? detail, Func<int, (string? Name, string? Text)> lookup)
    {
        var (name, text) = SafeLookup(lookup, result);
        name ??= FallbackDriverName(result);
        text ??= FallbackDriverText(result);
        string? hint = result switch
        {
            CudaErrorOutOfMemory => OutOfMemoryHint,
            CudaErrorInvalidContext => NoContextHint,
            _ => null,
        };
        var message = FormatMessage(call, name, text, detail, hint);
        return result == CudaErrorOutOfMemory
            ? new CudaOutOfMemoryException(call, result, message)
            : new CudaException(call, result, message);
    }

    /// <summary>The exception for a failed cuBLAS / cuBLASLt call (status names are a fixed table).</summary>
    internal static CudaException Cublas(string call, int status, string? detail = null)
    {
        var (name, text) = CublasStatus(status);
        var message = FormatMessage(call, name, text, detail, status == CublasStatusAllocFailed ? OutOfMemoryHint : null);
        return status == CublasStatusAllocFailed
            ? new CudaOutOfMemoryException(call, status, message)
            : new CudaException(call, status, message);
    }

    internal static string FormatMessage(string call, string name, string text, string? detail, string? hint)
    {
        var s = $"{call} failed: {name} ({text})";
        if (!string.IsNullOrEmpty(detail)) s += $" — {detail}";
        if (!string.IsNullOrEmpty(hint)) s += $". {hint}";
        return s;
    }

    private static (string?, string?) SafeLookup(Func<int, (string?, string?)> lookup, int code)
    {
        try { return lookup(code); }
        catch (Exception) { return (null, null); } // driver library absent or broken: use the built-in table
    }

    /// <summary>cuGetErrorName / cuGetErrorString; throws DllNotFoundException when the driver is absent.</summary>
    private static unsafe (string?, string?) DriverLookup(int code)
    {
        if (!NativeLibraries.TryLoad(NativeLib.Driver, out _, out _)) return (null, null);
        byte* n = null, t = null;
        string? name = CudaDriverApi.cuGetErrorName(code, &n) == CudaSuccess && n != null ? new string((sbyte*)n) : null;
        string? text = CudaDriverApi.cuGetErrorString(code, &t) == CudaSuccess && t != null ? new string((sbyte*)t) : null;
        return (name, text);
    }

    internal static string FallbackDriverName(int code) =>
        DriverNames.TryGetValue(code, out var e) ? e.Name : $"CUDA_ERROR_{code}";

    internal static string FallbackDriverText(int code) =>
        DriverNames.TryGetValue(code, out var e) ? e.Text : "unrecognized error code";

    // Used only when libcuda cannot be loaded (or does not know the code); texts follow the driver's wording.
    private static readonly Dictionary<int, (string Name, string Text)> DriverNames = new()
    {
        [0] = ("CUDA_SUCCESS", "no error"),
        [1] = ("CUDA_ERROR_INVALID_VALUE", "invalid argument"),
        [2] = ("CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
        [3] = ("CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
        [4] = ("CUDA_ERROR_DEINITIALIZED", "driver shutting down"),
        [34] = ("CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"),
        [46] = ("CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"),
        [100] = ("CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
        [101] = ("CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"),
        [200] = ("CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"),
        [201] = ("CUDA_ERROR_INVALID_CONTEXT", "invalid device context"),
        [209] = ("CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"),
        [218] = ("CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"),
        [221] = ("CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "PTX JIT compiler library not found"),
        [222] = ("CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."),
        [400] = ("CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"),
        [500] = ("CUDA_ERROR_NOT_FOUND", "named symbol not found"),
        [600] = ("CUDA_ERROR_NOT_READY", "device not ready"),
        [700] = ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"),
        [701] = ("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"),
        [702] = ("CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"),
        [709] = ("CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"),
        [710] = ("CUDA_ERROR_ASSERT", "device-side assert triggered"),
        [716] = ("CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"),
        [719] = ("CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"),
        [801] = ("CUDA_ERROR_NOT_SUPPORTED", "operation not supported"),
        [803] = ("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"),
        [804] = ("CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW"),
        [900] = ("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"),
        [901] = ("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"),
        [906] = ("CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream"),
        [908] = ("CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"),
        [999] = ("CUDA_ERROR_UNKNOWN", "unknown error"),
    };

    internal static (string Name, string Text) CublasStatus(int status) => status switch
    {
        0 => ("CUBLAS_STATUS_SUCCESS", "success"),
        1 => ("CUBLAS_STATUS_NOT_INITIALIZED", "the library was not initialized"),
        3 => ("CUBLAS_STATUS_ALLOC_FAILED", "the resource allocation failed"),
        7 => ("CUBLAS_STATUS_INVALID_VALUE", "an invalid numeric value was used as an argument"),
        8 => ("CUBLAS_STATUS_ARCH_MISMATCH", "an absent device architectural feature is required"),
        11 => ("CUBLAS_STATUS_MAPPING_ERROR", "an access to GPU memory space failed"),
        13 => ("CUBLAS_STATUS_EXECUTION_FAILED", "the GPU program failed to execute"),
        14 => ("CUBLAS_STATUS_INTERNAL_ERROR", "an internal operation failed"),
        15 => ("CUBLAS_STATUS_NOT_SUPPORTED", "the functionality requested is not supported"),
        16 => ("CUBLAS_STATUS_LICENSE_ERROR", "an error was detected when checking the current licensing"),
        _ => ($"CUBLAS_STATUS_{status}", "unrecognized status code"),
    };
}

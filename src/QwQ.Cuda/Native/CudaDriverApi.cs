using System.Runtime.InteropServices;

namespace QwQ.Cuda.Native;

/// <summary>
/// Raw CUDA driver API (libcuda.so.1 / nvcuda.dll). Every function returns a CUresult (0 = success);
/// wrap calls with <see cref="CudaErrors.Check"/>. Versioned (_v2) entry points are bound explicitly because
/// cuda.h maps the plain names to them with macros, and the plain symbols keep old (32-bit size) ABIs.
/// Handles (CUcontext, CUstream, ...) are IntPtr; device pointers (CUdeviceptr) are ulong.
/// </summary>
internal static unsafe partial class CudaDriverApi
{
    private const string Lib = NativeLibraries.DriverName;

    static CudaDriverApi() => NativeLibraries.EnsureRegistered();

    // --- enums / flags we use (values from cuda.h) ---
    internal const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    internal const int CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    internal const int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
    internal const int CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704;
    internal const int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    internal const uint CU_EVENT_DEFAULT = 0;
    internal const uint CU_EVENT_DISABLE_TIMING = 2;
    internal const uint CU_STREAM_DEFAULT = 0;
    internal const uint CU_MEMHOSTALLOC_PORTABLE = 1;
    internal const int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
    internal const int CU_JIT_INFO_LOG_BUFFER = 3;
    internal const int CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 4;
    internal const int CU_JIT_ERROR_LOG_BUFFER = 5;
    internal const int CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;

    // --- init / errors ---
    [LibraryImport(Lib)] internal static partial int cuInit(uint flags);
    [LibraryImport(Lib)] internal static partial int cuDriverGetVersion(out int version);
    [LibraryImport(Lib)] internal static partial int cuGetErrorName(int error, byte** str);
    [LibraryImport(Lib)] internal static partial int cuGetErrorString(int error, byte** str);

    // --- device ---
    [LibraryImport(Lib)] internal static partial int cuDeviceGetCount(out int count);
    [LibraryImport(Lib)] internal static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Lib)] internal static partial int cuDeviceGetName(byte* name, int len, int device);
    [LibraryImport(Lib)] internal static partial int cuDeviceTotalMem_v2(out nuint bytes, int device);
    [LibraryImport(Lib)] internal static partial int cuDeviceGetAttribute(out int value, int attribute, int device);

    // --- context (one primary context per process) ---
    [LibraryImport(Lib)] internal static partial int cuDevicePrimaryCtxRetain(out IntPtr ctx, int device);
    [LibraryImport(Lib)] internal static partial int cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Lib)] internal static partial int cuCtxSetCurrent(IntPtr ctx);
    [LibraryImport(Lib)] internal static partial int cuCtxGetCurrent(out IntPtr ctx);
    [LibraryImport(Lib)] internal static partial int cuCtxPushCurrent_v2(IntPtr ctx);
    [LibraryImport(Lib)] internal static partial int cuCtxPopCurrent_v2(out IntPtr ctx);
    [LibraryImport(Lib)] internal static partial int cuCtxSynchronize();
    [LibraryImport(Lib)] internal static partial int cuCtxDestroy_v2(IntPtr ctx);
    [LibraryImport(Lib)] internal static partial int cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Lib)] internal static partial int cuDeviceCanAccessPeer(out int canAccessPeer, int device, int peerDevice);
    [LibraryImport(Lib)] internal static partial int cuCtxEnablePeerAccess(IntPtr peerContext, uint flags);

    // --- memory ---
    [LibraryImport(Lib)] internal static partial int cuMemAlloc_v2(out ulong dptr, nuint bytes);
    [LibraryImport(Lib)] internal static partial int cuMemFree_v2(ulong dptr);
    [LibraryImport(Lib)] internal static partial int cuMemHostAlloc(out IntPtr p, nuint bytes, uint flags);
    [LibraryImport(Lib)] internal static partial int cuMemFreeHost(IntPtr p);
    [LibraryImport(Lib)] internal static partial int cuMemcpyHtoD_v2(ulong dst, void* src, nuint bytes);
    [LibraryImport(Lib)] internal static partial int cuMemcpyDtoH_v2(void* dst, ulong src, nuint bytes);
    [LibraryImport(Lib)] internal static partial int cuMemcpyHtoDAsync_v2(ulong dst, void* src, nuint bytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemcpyDtoHAsync_v2(void* dst, ulong src, nuint bytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemcpyDtoDAsync_v2(ulong dst, ulong src, nuint bytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemsetD32_v2(ulong dst, uint value, nuint count);
    [LibraryImport(Lib)] internal static partial int cuMemsetD32Async(ulong dst, uint value, nuint count, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuMemsetD8_v2(ulong dst, byte value, nuint count);
    [LibraryImport(Lib)] internal static partial int cuMemsetD8Async(ulong dst, byte value, nuint count, IntPtr stream);

    // --- streams / events ---
    [LibraryImport(Lib)] internal static partial int cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(Lib)] internal static partial int cuStreamDestroy_v2(IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuStreamSynchronize(IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuEventCreate(out IntPtr ev, uint flags);
    [LibraryImport(Lib)] internal static partial int cuEventDestroy_v2(IntPtr ev);
    [LibraryImport(Lib)] internal static partial int cuEventRecord(IntPtr ev, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuEventSynchronize(IntPtr ev);
    // cuEventElapsedTime_v2 (driver 12.8+) is looked up at run time; this is the fallback for older drivers.
    [LibraryImport(Lib)] internal static partial int cuEventElapsedTime(out float ms, IntPtr start, IntPtr end);

    // --- modules / kernels ---
    [LibraryImport(Lib)] internal static partial int cuModuleLoadDataEx(out IntPtr module, void* image, uint numOptions, int* options, void** optionValues);
    [LibraryImport(Lib)] internal static partial int cuModuleUnload(IntPtr module);
    [LibraryImport(Lib)] internal static partial int cuModuleGetFunction(out IntPtr function, IntPtr module, byte* name);
    [LibraryImport(Lib)] internal static partial int cuFuncSetAttribute(IntPtr function, int attribute, int value);
    [LibraryImport(Lib)] internal static partial int cuOccupancyMaxActiveBlocksPerMultiprocessor(out int numBlocks, IntPtr function, int blockSize, nuint dynamicSharedBytes);

    // --- tensor maps (TMA, compute capability 9.0+; host-only: no context needed) ---
    internal const int CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9;
    internal const int CU_TENSOR_MAP_INTERLEAVE_NONE = 0;
    internal const int CU_TENSOR_MAP_SWIZZLE_128B = 3;
    internal const int CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3;
    internal const int CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0;
    [LibraryImport(Lib)]
    internal static partial int cuTensorMapEncodeTiled(TensorMap* tensorMap, int dataType, uint rank, ulong globalAddress,
        ulong* globalDim, ulong* globalStrides, uint* boxDim, uint* elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill);
    [LibraryImport(Lib)]
    internal static partial int cuLaunchKernel(IntPtr f, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** kernelParams, void** extra);
    [LibraryImport(Lib)] internal static partial int cuLaunchKernelEx(LaunchConfig* config, IntPtr f, void** kernelParams, void** extra);

    /// <summary>CUlaunchConfig (cuda.h): the grid, block, shared bytes and stream of a launch, and its attributes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public IntPtr Stream;
        public LaunchAttribute* Attributes;
        public uint AttributeCount;
    }

    /// <summary>CUlaunchAttribute (cuda.h): an id, padding to 8 bytes, and a 64-byte value union whose first int we use.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 72)]
    internal struct LaunchAttribute
    {
        [FieldOffset(0)] public int Id;
        [FieldOffset(8)] public int Value;
    }

    /// <summary>CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: value 1 lets the kernel overlap the one before it in the stream.</summary>
    internal const int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;

    // --- graphs (stream capture) ---
    [LibraryImport(Lib)] internal static partial int cuStreamBeginCapture_v2(IntPtr stream, int mode);
    [LibraryImport(Lib)] internal static partial int cuStreamEndCapture(IntPtr stream, out IntPtr graph);
    [LibraryImport(Lib)] internal static partial int cuGraphInstantiateWithFlags(out IntPtr graphExec, IntPtr graph, ulong flags);
    [LibraryImport(Lib)] internal static partial int cuGraphLaunch(IntPtr graphExec, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cuGraphExecDestroy(IntPtr graphExec);
    [LibraryImport(Lib)] internal static partial int cuGraphDestroy(IntPtr graph);

    private static IntPtr elapsedV2;
    private static int elapsedResolved;

    /// <summary>cuEventElapsedTime_v2 when the driver has it (CUDA 12.8+ drivers), else the original entry point.</summary>
    internal static int EventElapsedTime(out float ms, IntPtr start, IntPtr end)
    {
        if (Volatile.Read(ref elapsedResolved) == 0)
        {
            elapsedV2 = NativeLibraries.TryGetExport(NativeLib.Driver, "cuEventElapsedTime_v2");
            Volatile.Write(ref elapsedResolved, 1);
        }
        if (elapsedV2 != IntPtr.Zero)
        {
            float r;
            var fn = (delegate* unmanaged<float*, IntPtr, IntPtr, int>)elapsedV2;
            int rc = fn(&r, start, end);
            ms = r;
            return rc;
        }
        return cuEventElapsedTime(out ms, start, end);
    }

    /// <summary>
    /// Makes <paramref name="ctx"/> current for the duration of a release call and restores the previous one,
    /// so destroying a handle from a finalizer or another thread happens in the context that owns it.
    /// Returns false when the context can't be pushed (e.g. already destroyed): the caller then skips the release,
    /// since the driver freed everything with the context.
    /// </summary>
    internal static bool PushContext(IntPtr ctx) => ctx != IntPtr.Zero && cuCtxPushCurrent_v2(ctx) == 0;

    internal static void PopContext() => cuCtxPopCurrent_v2(out _);

    /// <summary>The calling thread's current context; throws (with the "no context" hint) when there is none.</summary>
    internal static IntPtr RequireCurrentContext(string what)
    {
        CudaErrors.Check(cuCtxGetCurrent(out var ctx), "cuCtxGetCurrent");
        if (ctx == IntPtr.Zero) CudaErrors.Throw(what, CudaErrors.CudaErrorInvalidContext, null);
        return ctx;
    }
}

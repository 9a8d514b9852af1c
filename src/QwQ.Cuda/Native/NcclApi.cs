using System.Runtime.InteropServices;

namespace QwQ.Cuda.Native;

/// <summary>ncclResult_t (nccl.h). Older 2.x releases stop at <see cref="RemoteError"/> or <see cref="InProgress"/>.</summary>
internal enum NcclResult
{
    Success = 0,
    UnhandledCudaError = 1,
    SystemError = 2,
    InternalError = 3,
    InvalidArgument = 4,
    InvalidUsage = 5,
    RemoteError = 6,
    InProgress = 7,
    Timeout = 8,
}

/// <summary>ncclDataType_t (nccl.h); the aliases ncclChar/ncclInt/ncclHalf/ncclFloat/ncclDouble share these values.</summary>
internal enum NcclDataType
{
    Int8 = 0,
    Uint8 = 1,
    Int32 = 2,
    Uint32 = 3,
    Int64 = 4,
    Uint64 = 5,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

/// <summary>ncclRedOp_t (nccl.h), the built-in reductions.</summary>
internal enum NcclRedOp
{
    Sum = 0,
    Prod = 1,
    Max = 2,
    Min = 3,
    Avg = 4,
}

/// <summary>
/// ncclUniqueId: <c>typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;</c> with
/// NCCL_UNIQUE_ID_BYTES = 128. Opaque; passed by value to ncclCommInitRank.
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = Bytes)]
internal unsafe struct NcclUniqueId
{
    public const int Bytes = 128;
    public fixed byte Internal[Bytes];
}

/// <summary>
/// Raw NCCL 2 (libnccl.so.2). Every function but <see cref="ncclGetErrorString"/> returns ncclResult_t. Use
/// <see cref="Nccl"/> / <see cref="NcclCommunicator"/> instead: they load the library with a clear message, turn NVLS
/// off before the first communicator, check every result and own the communicators. Deliberately absent: anything
/// that creates NVLink multicast objects (NVLS, ncclCommWindowRegister, symmetric memory) — see docs/TENSOR_PARALLEL.md.
/// </summary>
internal static unsafe partial class NcclApi
{
    private const string Lib = NativeLibraries.NcclName;

    static NcclApi() => NativeLibraries.EnsureRegistered();

    [LibraryImport(Lib)] internal static partial NcclResult ncclGetVersion(out int version);
    [LibraryImport(Lib)] internal static partial NcclResult ncclGetUniqueId(NcclUniqueId* uniqueId);

    /// <summary><c>comms</c> has room for <paramref name="ndev"/> handles; <c>devlist</c> null means devices 0..ndev-1.</summary>
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommInitAll(IntPtr* comms, int ndev, int* devlist);

    /// <summary>Joins rank <paramref name="rank"/> of <paramref name="nranks"/> on the calling thread's current CUDA device.</summary>
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommInitRank(IntPtr* comm, int nranks, NcclUniqueId commId, int rank);

    [LibraryImport(Lib)] internal static partial NcclResult ncclCommDestroy(IntPtr comm);
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommAbort(IntPtr comm);
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommGetAsyncError(IntPtr comm, NcclResult* asyncError);
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommCount(IntPtr comm, int* count);
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommCuDevice(IntPtr comm, int* device);
    [LibraryImport(Lib)] internal static partial NcclResult ncclCommUserRank(IntPtr comm, int* rank);

    /// <summary>A static string; never freed.</summary>
    [LibraryImport(Lib)] internal static partial byte* ncclGetErrorString(NcclResult result);

    [LibraryImport(Lib)] internal static partial NcclResult ncclGroupStart();
    [LibraryImport(Lib)] internal static partial NcclResult ncclGroupEnd();

    /// <summary>In place when <paramref name="sendbuff"/> == <paramref name="recvbuff"/>. Counts are elements.</summary>
    [LibraryImport(Lib)]
    internal static partial NcclResult ncclAllReduce(void* sendbuff, void* recvbuff, nuint count, NcclDataType datatype,
        NcclRedOp op, IntPtr comm, IntPtr stream);

    /// <summary>Rank i's <paramref name="sendcount"/> elements land at recvbuff + i·sendcount.</summary>
    [LibraryImport(Lib)]
    internal static partial NcclResult ncclAllGather(void* sendbuff, void* recvbuff, nuint sendcount, NcclDataType datatype,
        IntPtr comm, IntPtr stream);

    // ncclGetLastError (NCCL 2.13+) is looked up by name where it is used (Nccl.LastError), so an older library still loads.
}

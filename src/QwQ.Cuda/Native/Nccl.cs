using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace QwQ.Cuda.Native;

/// <summary>
/// NCCL for tensor parallelism: loading the library, process-wide settings, unique ids, groups and error messages.
/// Communicators are <see cref="NcclCommunicator"/>s (one rank each) or an <see cref="NcclClique"/> (every rank of one
/// process). Only <c>--tensor-parallel</c> &gt; 1 needs NCCL; nothing here is touched on one GPU.
///
/// <para><b>NVLS is off.</b> Before the first communicator exists, <see cref="Initialize"/> sets
/// <c>NCCL_NVLS_ENABLE=0</c> in the C library's environment (where NCCL reads it) unless the variable is already set.
/// NVLS (NVLink SHARP) makes NCCL create NVLink multicast objects (cuMulticastCreate) for its all-reduce; multicast is
/// forbidden on the shared GPU hosts this engine is developed on, and it buys little at 2–4 GPUs and our message sizes
/// (one hidden-state row per token). NCCL reads its parameters once, at the first communicator, so later changes have
/// no effect; a value from ~/.nccl.conf or /etc/nccl.conf does not override ours (NCCL applies those files only to
/// variables that are unset). Setting <c>NCCL_NVLS_ENABLE</c> yourself is respected: on hardware you own you may turn
/// it back on. This binding never calls the multicast API itself.</para>
/// </summary>
internal static class Nccl
{
    internal const string NvlsEnableVariable = "NCCL_NVLS_ENABLE";

    private static readonly Lock Gate = new();
    private static bool initialized;

    /// <summary>True when libnccl loads; otherwise false with the message naming the library, the override and the fix. Never throws.</summary>
    public static bool IsAvailable(out string reason)
    {
        try
        {
            NativeLibraries.EnsureRegistered();
            if (NativeLibraries.TryLoad(NativeLib.Nccl, out _, out reason)) { reason = ""; return true; }
            return false;
        }
        catch (Exception e) // a broken install can fail in surprising ways; this method is a yes/no question
        {
            reason = $"NCCL is unavailable: {e.Message}";
            return false;
        }
    }

    /// <summary>
    /// Loads NCCL (<see cref="CudaUnavailableException"/> with <see cref="IsAvailable"/>'s message when it cannot) and
    /// turns NVLS off; idempotent. Everything that creates a communicator calls it first.
    /// </summary>
    internal static void Initialize()
    {
        if (Volatile.Read(ref initialized)) return;
        lock (Gate)
        {
            if (initialized) return;
            NativeLibraries.Require(NativeLib.Nccl);
            DisableNvls();
            // Connect every algorithm when a communicator is made, not at its first use: a first use can be inside a
            // CUDA graph capture (a decode step), where NCCL's connection setup (allocations, handshakes) must not run.
            NativeEnvironment.SetIfUnset("NCCL_RUNTIME_CONNECT", "0");
            Volatile.Write(ref initialized, true);
        }
    }

    /// <summary>Sets <c>NCCL_NVLS_ENABLE=0</c> unless it is set (see the class remarks). True when this call set it.</summary>
    internal static bool DisableNvls() => NativeEnvironment.SetIfUnset(NvlsEnableVariable, "0");

    /// <summary>The loaded library's NCCL_VERSION_CODE, e.g. 22705 for 2.27.5.</summary>
    public static int Version
    {
        get
        {
            Initialize();
            Check(NcclApi.ncclGetVersion(out int version), "ncclGetVersion");
            return version;
        }
    }

    /// <summary>NCCL_VERSION_CODE → (major, minor, patch): X·1000+Y·100+Z up to 2.8, X·10000+Y·100+Z since 2.9.</summary>
    internal static (int Major, int Minor, int Patch) DecodeVersion(int code) =>
        code >= 10000 ? (code / 10000, code / 100 % 100, code % 100) : (code / 1000, code / 100 % 10, code % 100);

    /// <summary>22705 → "2.27.5".</summary>
    internal static string FormatVersion(int code)
    {
        var (major, minor, patch) = DecodeVersion(code);
        return $"{major}.{minor}.{patch}";
    }

    /// <summary>A new id for <see cref="NcclCommunicator.InitRank"/>; every rank of the communicator must get the same one.</summary>
    public static unsafe NcclUniqueId GetUniqueId()
    {
        Initialize();
        NcclUniqueId id;
        Check(NcclApi.ncclGetUniqueId(&id), "ncclGetUniqueId");
        return id;
    }

    /// <summary>Starts a group: NCCL calls until <see cref="GroupEnd"/> only queue (one thread may then drive several ranks).</summary>
    public static void GroupStart() => Check(NcclApi.ncclGroupStart(), "ncclGroupStart");

    /// <summary>Ends a group: the queued operations are launched on their streams (not waited for).</summary>
    public static void GroupEnd() => Check(NcclApi.ncclGroupEnd(), "ncclGroupEnd");

    // ---- errors ---------------------------------------------------------------------------------------------------

    /// <summary>Throws <see cref="NcclException"/> unless <paramref name="result"/> is ncclSuccess. Tiny so it inlines.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Check(NcclResult result, string call)
    {
        if (result != NcclResult.Success) Throw(call, result, IntPtr.Zero, null);
    }

    [MethodImpl(MethodImplOptions.NoInlining), DoesNotReturn]
    internal static void Throw(string call, NcclResult result, IntPtr comm, string? detail) => throw Error(call, result, comm, detail);

    /// <summary>The exception for a failed call: NCCL's own string for the result, and its last error message when it has one.</summary>
    internal static NcclException Error(string call, NcclResult result, IntPtr comm, string? detail) =>
        NcclErrors.Create(call, result, SafeErrorString(result), SafeLastError(comm), detail);

    private static unsafe string? SafeErrorString(NcclResult result)
    {
        try
        {
            if (!NativeLibraries.TryLoad(NativeLib.Nccl, out _, out _)) return null;
            byte* s = NcclApi.ncclGetErrorString(result);
            return s == null ? null : Marshal.PtrToStringUTF8((IntPtr)s);
        }
        catch (Exception) { return null; } // library absent or broken: NcclErrors has the table
    }

    /// <summary>ncclGetLastError (2.13+): NCCL's description of what went wrong, often more specific than the result's string.</summary>
    private static unsafe string? SafeLastError(IntPtr comm)
    {
        try
        {
            var export = NativeLibraries.TryGetExport(NativeLib.Nccl, "ncclGetLastError");
            if (export == IntPtr.Zero) return null;
            byte* s = ((delegate* unmanaged<IntPtr, byte*>)export)(comm);
            var text = s == null ? null : Marshal.PtrToStringUTF8((IntPtr)s)?.Trim();
            return string.IsNullOrEmpty(text) ? null : text;
        }
        catch (Exception) { return null; }
    }
}

/// <summary>An NCCL call failed. <see cref="CudaException.Call"/> names it; the message carries NCCL's own text.</summary>
internal sealed class NcclException(string call, NcclResult result, string message)
    : CudaException(call, (int)result, message)
{
    public NcclResult Result { get; } = result;
}

/// <summary>
/// Message building for failed NCCL calls, separate from the library so it is testable without it. Format, as
/// <see cref="CudaErrors"/>: "{call} failed: {ncclResultName} ({NCCL's string})[ — {detail}][. NCCL: {last error}]",
/// e.g. "ncclAllReduce failed: ncclInvalidArgument (invalid argument (run with NCCL_DEBUG=WARN for details)) — 4096 × bfloat16".
/// </summary>
internal static class NcclErrors
{
    internal static NcclException Create(string call, NcclResult result, string? errorString, string? lastError, string? detail)
    {
        string text = string.IsNullOrWhiteSpace(errorString) ? FallbackText(result) : errorString;
        string? hint = lastError is null ? null : $"NCCL: {lastError}";
        return new NcclException(call, result, CudaErrors.FormatMessage(call, Name(result), text, detail, hint));
    }

    /// <summary>The enumerator's name in nccl.h, e.g. "ncclInvalidUsage".</summary>
    internal static string Name(NcclResult result) => result switch
    {
        NcclResult.Success => "ncclSuccess",
        NcclResult.UnhandledCudaError => "ncclUnhandledCudaError",
        NcclResult.SystemError => "ncclSystemError",
        NcclResult.InternalError => "ncclInternalError",
        NcclResult.InvalidArgument => "ncclInvalidArgument",
        NcclResult.InvalidUsage => "ncclInvalidUsage",
        NcclResult.RemoteError => "ncclRemoteError",
        NcclResult.InProgress => "ncclInProgress",
        NcclResult.Timeout => "ncclTimeout",
        _ => $"ncclResult_{(int)result}",
    };

    /// <summary>ncclGetErrorString's wording, for when the library cannot be asked.</summary>
    internal static string FallbackText(NcclResult result) => result switch
    {
        NcclResult.Success => "no error",
        NcclResult.UnhandledCudaError => "unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        NcclResult.SystemError => "unhandled system error (run with NCCL_DEBUG=INFO for details)",
        NcclResult.InternalError => "internal error - please report this issue to the NCCL developers",
        NcclResult.InvalidArgument => "invalid argument (run with NCCL_DEBUG=WARN for details)",
        NcclResult.InvalidUsage => "invalid usage (run with NCCL_DEBUG=WARN for details)",
        NcclResult.RemoteError => "remote process exited or there was a network error",
        NcclResult.InProgress => "NCCL operation in progress",
        NcclResult.Timeout => "timeout",
        _ => "unknown result code",
    };

    internal static string TypeName(NcclDataType type) => type switch
    {
        NcclDataType.Bfloat16 => "bfloat16",
        NcclDataType.Float16 => "float16",
        NcclDataType.Float32 => "float32",
        NcclDataType.Float64 => "float64",
        _ => type.ToString().ToLowerInvariant(),
    };
}

/// <summary>
/// One rank of an NCCL communicator. Released with ncclCommDestroy; once a call on it has failed (or
/// <see cref="Abort"/> was called) with ncclCommAbort instead, which does not wait for operations that may never
/// complete. Collectives are enqueued on the given stream and return at once; they allocate nothing.
/// Communicators are blocking (NCCL's default): an ncclInProgress result is reported as an error.
/// </summary>
internal sealed class NcclCommunicator : SafeHandle
{
    private int failed; // 1: release with ncclCommAbort

    private NcclCommunicator() : base(IntPtr.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>This communicator's rank, 0..<see cref="Size"/>-1.</summary>
    public int Rank { get; private init; }

    /// <summary>Ranks in the communicator.</summary>
    public int Size { get; private init; }

    /// <summary>The CUDA device ordinal this rank runs on.</summary>
    public int Device { get; private init; }

    /// <summary>A call on this communicator failed (or it was aborted): it can only be released, with ncclCommAbort.</summary>
    public bool Failed => Volatile.Read(ref failed) != 0;

    private IntPtr Comm
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return handle;
        }
    }

    /// <summary>
    /// One communicator per device, all in this process (ncclCommInitAll): rank i runs on <paramref name="devices"/>[i].
    /// Drive them from one thread inside <see cref="Nccl.GroupStart"/>/<see cref="Nccl.GroupEnd"/>, or one thread each.
    /// </summary>
    public static unsafe NcclCommunicator[] InitAll(ReadOnlySpan<int> devices)
    {
        if (devices.IsEmpty) throw new ArgumentException("need at least one device", nameof(devices));
        for (int i = 0; i < devices.Length; i++)
        {
            if (devices[i] < 0) throw new ArgumentOutOfRangeException(nameof(devices), $"device ordinal {devices[i]} is negative");
            // NCCL: the same device twice in one communicator is unsupported and may hang.
            if (devices[..i].Contains(devices[i])) throw new ArgumentException($"device {devices[i]} is listed twice", nameof(devices));
        }
        Nccl.Initialize();

        int n = devices.Length;
        var raw = new IntPtr[n];
        fixed (IntPtr* comms = raw)
        fixed (int* list = devices)
        {
            var rc = NcclApi.ncclCommInitAll(comms, n, list);
            if (rc != NcclResult.Success)
                Nccl.Throw("ncclCommInitAll", rc, IntPtr.Zero, $"{n} ranks on devices [{string.Join(", ", devices.ToArray())}]");
        }
        var result = new NcclCommunicator[n];
        for (int i = 0; i < n; i++)
        {
            result[i] = new NcclCommunicator { Rank = i, Size = n, Device = devices[i] };
            result[i].SetHandle(raw[i]);
        }
        return result;
    }

    /// <summary>
    /// Rank <paramref name="rank"/> of a communicator of <paramref name="size"/> ranks named by <paramref name="id"/>
    /// (ncclCommInitRank), on the CUDA device whose context is current on this thread. Blocks until every rank has
    /// joined, so ranks of one process join from separate threads (or inside a group).
    /// </summary>
    public static unsafe NcclCommunicator InitRank(int size, in NcclUniqueId id, int rank)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), "must be at least 1");
        if (rank < 0 || rank >= size) throw new ArgumentOutOfRangeException(nameof(rank), $"must be in [0, {size})");
        Nccl.Initialize();

        IntPtr comm = IntPtr.Zero;
        var rc = NcclApi.ncclCommInitRank(&comm, size, id, rank);
        if (rc != NcclResult.Success)
        {
            var e = Nccl.Error("ncclCommInitRank", rc, comm, $"rank {rank} of {size}");
            if (comm != IntPtr.Zero) NcclApi.ncclCommAbort(comm); // a half-made communicator: abort, never destroy
            throw e;
        }
        int device = -1;
        NcclApi.ncclCommCuDevice(comm, &device); // informational; -1 if NCCL cannot say
        var c = new NcclCommunicator { Rank = rank, Size = size, Device = device };
        c.SetHandle(comm);
        return c;
    }

    /// <summary>
    /// recv[i] = op over all ranks of send[i], for <paramref name="count"/> elements of <paramref name="type"/> (device
    /// pointers on this rank's device; in place when equal), enqueued on <paramref name="stream"/>. No allocation.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe void AllReduce(ulong sendBuffer, ulong recvBuffer, long count, NcclDataType type, NcclRedOp op, IntPtr stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var rc = NcclApi.ncclAllReduce((void*)sendBuffer, (void*)recvBuffer, (nuint)count, type, op, Comm, stream);
        if (rc != NcclResult.Success) Fail("ncclAllReduce", rc, count, type);
        GC.KeepAlive(this);
    }

    /// <summary>
    /// Rank i's <paramref name="sendCount"/> elements land at recv + i·sendCount on every rank (recv holds
    /// Size·sendCount elements), enqueued on <paramref name="stream"/>. No allocation.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe void AllGather(ulong sendBuffer, ulong recvBuffer, long sendCount, NcclDataType type, IntPtr stream)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sendCount);
        var rc = NcclApi.ncclAllGather((void*)sendBuffer, (void*)recvBuffer, (nuint)sendCount, type, Comm, stream);
        if (rc != NcclResult.Success) Fail("ncclAllGather", rc, sendCount, type);
        GC.KeepAlive(this);
    }

    /// <summary>An error NCCL met asynchronously (in a kernel or its proxy thread), or ncclSuccess.</summary>
    public unsafe NcclResult GetAsyncError()
    {
        NcclResult error;
        var rc = NcclApi.ncclCommGetAsyncError(Comm, &error);
        if (rc != NcclResult.Success) Fail("ncclCommGetAsyncError", rc, null);
        GC.KeepAlive(this);
        return error;
    }

    /// <summary>Throws (and marks this communicator failed) when NCCL reports an asynchronous error.</summary>
    public void ThrowIfAsyncError()
    {
        var error = GetAsyncError();
        if (error is not (NcclResult.Success or NcclResult.InProgress))
            Fail("ncclCommGetAsyncError", error, $"rank {Rank} of {Size} (device {Device}) hit an asynchronous error");
    }

    /// <summary>From now on release this communicator with ncclCommAbort (its peers or its device failed).</summary>
    internal void MarkFailed() => Volatile.Write(ref failed, 1);

    /// <summary>Aborts operations in flight and frees the communicator (ncclCommAbort). Idempotent.</summary>
    public void Abort()
    {
        MarkFailed();
        Dispose();
    }

    [MethodImpl(MethodImplOptions.NoInlining), DoesNotReturn]
    private void Fail(string call, NcclResult rc, long count, NcclDataType type) =>
        Fail(call, rc, $"{count} × {NcclErrors.TypeName(type)} on rank {Rank} of {Size} (device {Device})");

    [MethodImpl(MethodImplOptions.NoInlining), DoesNotReturn]
    private void Fail(string call, NcclResult rc, string? detail)
    {
        var e = Nccl.Error(call, rc, IsClosed ? IntPtr.Zero : handle, detail ?? $"rank {Rank} of {Size} (device {Device})");
        MarkFailed();
        throw e;
    }

    /// <summary>Results are ignored: nothing useful can be done with a failed teardown.</summary>
    protected override bool ReleaseHandle()
    {
        if (Volatile.Read(ref failed) != 0) NcclApi.ncclCommAbort(handle);
        else NcclApi.ncclCommDestroy(handle);
        return true;
    }

    public override string ToString() => $"NCCL rank {Rank} of {Size} on device {Device}{(Failed ? " (failed)" : "")}";
}

/// <summary>
/// Every rank of a single-process communicator (one per device, <see cref="NcclCommunicator.InitAll"/>), driven from
/// one thread: each collective is issued for all ranks inside one NCCL group. Span arguments are indexed by rank.
/// If any call fails, every rank is marked failed and <see cref="Dispose"/> aborts them all (a rank left behind would
/// wait for the others forever).
/// </summary>
internal sealed class NcclClique : IDisposable
{
    private readonly NcclCommunicator[] _ranks;
    private readonly int[] _devices;

    private NcclClique(NcclCommunicator[] ranks, int[] devices) => (_ranks, _devices) = (ranks, devices);

    /// <summary>One rank per device, rank i on <paramref name="devices"/>[i].</summary>
    public static NcclClique Create(ReadOnlySpan<int> devices) => new(NcclCommunicator.InitAll(devices), devices.ToArray());

    public int Size => _ranks.Length;

    /// <summary>Device ordinal of each rank.</summary>
    public ReadOnlySpan<int> Devices => _devices;

    public NcclCommunicator this[int rank] => _ranks[rank];

    /// <summary>All-reduce on every rank: rank r reduces send[r] into recv[r] (on its device) on streams[r]. No allocation.</summary>
    public void AllReduce(ReadOnlySpan<ulong> send, ReadOnlySpan<ulong> recv, long count, NcclDataType type, NcclRedOp op,
        ReadOnlySpan<IntPtr> streams)
    {
        CheckRankSpans(send.Length, recv.Length, streams.Length);
        Nccl.GroupStart();
        try
        {
            for (int r = 0; r < _ranks.Length; r++) _ranks[r].AllReduce(send[r], recv[r], count, type, op, streams[r]);
        }
        catch
        {
            AbandonGroup();
            throw;
        }
        EndGroup();
    }

    /// <summary>All-gather on every rank: rank r's send[r] (sendCount elements) lands at offset r·sendCount of every recv[·]. No allocation.</summary>
    public void AllGather(ReadOnlySpan<ulong> send, ReadOnlySpan<ulong> recv, long sendCount, NcclDataType type, ReadOnlySpan<IntPtr> streams)
    {
        CheckRankSpans(send.Length, recv.Length, streams.Length);
        Nccl.GroupStart();
        try
        {
            for (int r = 0; r < _ranks.Length; r++) _ranks[r].AllGather(send[r], recv[r], sendCount, type, streams[r]);
        }
        catch
        {
            AbandonGroup();
            throw;
        }
        EndGroup();
    }

    /// <summary>Throws if any rank reports an asynchronous error (all ranks are then marked failed).</summary>
    public void ThrowIfAsyncError()
    {
        try
        {
            foreach (var c in _ranks) c.ThrowIfAsyncError();
        }
        catch
        {
            MarkAllFailed();
            throw;
        }
    }

    /// <summary>Aborts every rank (ncclCommAbort). Idempotent.</summary>
    public void Abort()
    {
        MarkAllFailed();
        Dispose();
    }

    public void Dispose()
    {
        if (_ranks.Any(c => c.Failed)) MarkAllFailed();
        foreach (var c in _ranks) c.Dispose();
    }

    private void CheckRankSpans(int send, int recv, int streams)
    {
        if (send != _ranks.Length || recv != _ranks.Length || streams != _ranks.Length)
            throw new ArgumentException($"need one buffer pair and one stream per rank ({_ranks.Length}); got {send} send, {recv} recv, {streams} streams");
    }

    private void EndGroup()
    {
        var rc = NcclApi.ncclGroupEnd();
        if (rc != NcclResult.Success)
        {
            var e = Nccl.Error("ncclGroupEnd", rc, IntPtr.Zero, $"{_ranks.Length} ranks on devices [{string.Join(", ", _devices)}]");
            MarkAllFailed();
            throw e;
        }
    }

    /// <summary>A call inside the group threw: close the group (its result no longer matters) and mark every rank failed.</summary>
    private void AbandonGroup()
    {
        MarkAllFailed();
        try { NcclApi.ncclGroupEnd(); }
        catch (Exception) { } // keep the original exception
    }

    private void MarkAllFailed()
    {
        foreach (var c in _ranks) c.MarkFailed();
    }
}

/// <summary>
/// The C library's environment. .NET on Unix keeps a managed copy of the environment: Environment.SetEnvironmentVariable
/// never reaches the C library's <c>environ</c>, which is what native code (NCCL's getenv) reads. So getenv/setenv are
/// called directly (found in the process's global symbols, i.e. the C library the host links), and the managed copy is
/// updated too so both views agree.
/// </summary>
internal static unsafe class NativeEnvironment
{
    private static readonly delegate* unmanaged<byte*, byte*> GetEnv;
    private static readonly delegate* unmanaged<byte*, byte*, int, int> SetEnv;
    private static readonly Lock Gate = new();

    static NativeEnvironment()
    {
        if (OperatingSystem.IsWindows()) return; // the Win32 environment is the one Environment.* already uses
        IntPtr main = NativeLibrary.GetMainProgramHandle();
        if (NativeLibrary.TryGetExport(main, "getenv", out var g) && NativeLibrary.TryGetExport(main, "setenv", out var s))
        {
            GetEnv = (delegate* unmanaged<byte*, byte*>)g;
            SetEnv = (delegate* unmanaged<byte*, byte*, int, int>)s;
        }
    }

    /// <summary>True when the C library's environment is reachable (Linux, macOS); false on Windows.</summary>
    internal static bool IsNative => SetEnv != null;

    /// <summary>The variable as native code sees it, or null when unset.</summary>
    public static string? Get(string name)
    {
        if (GetEnv == null) return Environment.GetEnvironmentVariable(name);
        byte[] n = Utf8(name);
        fixed (byte* pn = n)
        {
            byte* v = GetEnv(pn);
            return v == null ? null : Marshal.PtrToStringUTF8((IntPtr)v);
        }
    }

    /// <summary>Sets the variable for native code and .NET alike unless it is already set; true when this call set it.</summary>
    public static bool SetIfUnset(string name, string value)
    {
        lock (Gate)
        {
            if (Get(name) is not null) return false;
            if (SetEnv != null)
            {
                byte[] n = Utf8(name), v = Utf8(value);
                fixed (byte* pn = n, pv = v)
                {
                    if (SetEnv(pn, pv, 0) != 0) throw new InvalidOperationException($"setenv({name}) failed");
                }
            }
            Environment.SetEnvironmentVariable(name, value);
            return true;
        }
    }

    private static byte[] Utf8(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1]; // NUL-terminated
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }
}

using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

/// <summary>The NCCL binding without NCCL: probing, the missing-library message, ABI sizes and values, error messages.</summary>
public class NcclTests
{
    private static Func<string, string?> Env(params (string Key, string Value)[] vars) =>
        name => vars.FirstOrDefault(v => v.Key == name).Value;

    private static IReadOnlyList<string> Linux(Func<string, string?>? env = null, Func<string, bool>? dirs = null) =>
        NativeLibraries.CandidatePaths(NativeLib.Nccl, isWindows: false, Architecture.X64, env ?? Env(), dirs ?? (_ => false));

    // ---- probing ------------------------------------------------------------------------------------------------

    [Test]
    public void ProbesTheSonameEverywhereThenTheDevSymlink()
    {
        Assert.That(Linux(), Is.EqualTo(new[]
        {
            "libnccl.so.2",
            "/usr/local/cuda/targets/x86_64-linux/lib/libnccl.so.2",
            "/usr/local/cuda/lib64/libnccl.so.2",
            "libnccl.so",
            "/usr/local/cuda/targets/x86_64-linux/lib/libnccl.so",
            "/usr/local/cuda/lib64/libnccl.so",
        }));
    }

    [Test]
    public void TheOverrideVariableIsAuthoritative()
    {
        Assert.That(NativeLibraries.NcclPathEnv, Is.EqualTo("QWQ_NCCL_PATH"));
        Assert.That(Linux(Env(("QWQ_NCCL_PATH", " /opt/nccl/lib/libnccl.so.2.27.5 "))), Is.EqualTo(new[] { "/opt/nccl/lib/libnccl.so.2.27.5" }));
        Assert.That(Linux(Env(("QWQ_NCCL_PATH", "/opt/nccl/lib")), d => d == "/opt/nccl/lib"),
            Is.EqualTo(new[] { Path.Join("/opt/nccl/lib", "libnccl.so.2"), Path.Join("/opt/nccl/lib", "libnccl.so") }));
        // ... and only for NCCL
        Assert.That(NativeLibraries.CandidatePaths(NativeLib.Cublas, false, Architecture.X64, Env(("QWQ_NCCL_PATH", "/x.so")), _ => false)[0],
            Is.EqualTo("libcublas.so.13"));
    }

    [Test]
    public void AMissingLibraryGivesOneClearMessage()
    {
        if (NativeLibraries.TryLoad(NativeLib.Nccl, out _, out _))
            Assert.Ignore("NCCL is already loaded in this process; the load is cached");
        var old = Environment.GetEnvironmentVariable(NativeLibraries.NcclPathEnv);
        try
        {
            Environment.SetEnvironmentVariable(NativeLibraries.NcclPathEnv, "/nonexistent/libnccl.so.2");
            Assert.That(NativeLibraries.TryLoad(NativeLib.Nccl, out var handle, out var error), Is.False);
            Assert.That(handle, Is.EqualTo(IntPtr.Zero));
            Assert.That(error, Does.StartWith("NCCL (libnccl.so.2) could not be loaded (tried: /nonexistent/libnccl.so.2)."));
            Assert.That(error, Does.Contain("QWQ_NCCL_PATH").And.Contain("needed only for --tensor-parallel > 1"));

            Assert.That(Nccl.IsAvailable(out var reason), Is.False);
            Assert.That(reason, Is.EqualTo(error));
            // Everything that needs the library fails with that message, before touching CUDA.
            Assert.That(Assert.Throws<CudaUnavailableException>(() => NativeLibraries.Require(NativeLib.Nccl))!.Message, Is.EqualTo(error));
            Assert.That(Assert.Throws<CudaUnavailableException>(() => NcclCommunicator.InitAll([0, 1]))!.Message, Is.EqualTo(error));
            Assert.That(Assert.Throws<CudaUnavailableException>(() => Nccl.GetUniqueId())!.Message, Is.EqualTo(error));
        }
        finally
        {
            Environment.SetEnvironmentVariable(NativeLibraries.NcclPathEnv, old);
        }
    }

    [Test]
    public void InitAllChecksItsDeviceListFirst()
    {
        Assert.Throws<ArgumentException>(() => NcclCommunicator.InitAll([]));
        Assert.Throws<ArgumentException>(() => NcclCommunicator.InitAll([0, 1, 0]), "a device twice may hang NCCL");
        Assert.Throws<ArgumentOutOfRangeException>(() => NcclCommunicator.InitAll([-1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => NcclCommunicator.InitRank(2, default, 2));
    }

    // ---- ABI ------------------------------------------------------------------------------------------------------

    [Test]
    public void UniqueIdIs128Bytes()
    {
        Assert.That(Unsafe.SizeOf<NcclUniqueId>(), Is.EqualTo(128));
        Assert.That(Marshal.SizeOf<NcclUniqueId>(), Is.EqualTo(128));
        Assert.That(NcclUniqueId.Bytes, Is.EqualTo(128));
    }

    [Test]
    public void EnumValuesAreNcclHs()
    {
        Assert.Multiple(() =>
        {
            Assert.That((int)NcclDataType.Int8, Is.EqualTo(0));
            Assert.That((int)NcclDataType.Uint8, Is.EqualTo(1));
            Assert.That((int)NcclDataType.Int32, Is.EqualTo(2));
            Assert.That((int)NcclDataType.Uint32, Is.EqualTo(3));
            Assert.That((int)NcclDataType.Int64, Is.EqualTo(4));
            Assert.That((int)NcclDataType.Uint64, Is.EqualTo(5));
            Assert.That((int)NcclDataType.Float16, Is.EqualTo(6));
            Assert.That((int)NcclDataType.Float32, Is.EqualTo(7));
            Assert.That((int)NcclDataType.Float64, Is.EqualTo(8));
            Assert.That((int)NcclDataType.Bfloat16, Is.EqualTo(9));

            Assert.That((int)NcclRedOp.Sum, Is.EqualTo(0));
            Assert.That((int)NcclRedOp.Prod, Is.EqualTo(1));
            Assert.That((int)NcclRedOp.Max, Is.EqualTo(2));
            Assert.That((int)NcclRedOp.Min, Is.EqualTo(3));
            Assert.That((int)NcclRedOp.Avg, Is.EqualTo(4));

            Assert.That((int)NcclResult.Success, Is.EqualTo(0));
            Assert.That((int)NcclResult.UnhandledCudaError, Is.EqualTo(1));
            Assert.That((int)NcclResult.InvalidArgument, Is.EqualTo(4));
            Assert.That((int)NcclResult.InvalidUsage, Is.EqualTo(5));
            Assert.That((int)NcclResult.RemoteError, Is.EqualTo(6));
            Assert.That((int)NcclResult.InProgress, Is.EqualTo(7));
            Assert.That((int)NcclResult.Timeout, Is.EqualTo(8));
        });
        // C enums are 4 bytes: the P/Invoke signatures pass these as int.
        Assert.That(Unsafe.SizeOf<NcclDataType>() + Unsafe.SizeOf<NcclRedOp>() + Unsafe.SizeOf<NcclResult>(), Is.EqualTo(12));
    }

    /// <summary>Every P/Invoke into the logical NCCL library, by entry point (LibraryImport compiles to DllImport stubs).</summary>
    private static IEnumerable<(string Library, string EntryPoint)> PInvokes() =>
        typeof(NcclApi).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Where(m => m.Attributes.HasFlag(MethodAttributes.PinvokeImpl))
            .Select(m => m.GetCustomAttribute<DllImportAttribute>())
            .OfType<DllImportAttribute>()
            .Select(a => (a.Value, a.EntryPoint ?? ""));

    [Test]
    public void BindsExactlyTheseNcclFunctions()
    {
        // Entry-point names must be NCCL's exactly: a typo would only show on a machine with NCCL.
        var nccl = PInvokes().Where(p => p.Library == NativeLibraries.NcclName).Select(p => p.EntryPoint).Order().ToArray();
        Assert.That(nccl, Is.EqualTo(new[]
        {
            "ncclAllGather", "ncclAllReduce", "ncclCommAbort", "ncclCommCount", "ncclCommCuDevice", "ncclCommDestroy",
            "ncclCommGetAsyncError", "ncclCommInitAll", "ncclCommInitRank", "ncclCommUserRank", "ncclGetErrorString",
            "ncclGetUniqueId", "ncclGetVersion", "ncclGroupEnd", "ncclGroupStart",
        }));
    }

    [Test]
    public void NothingBindsNvlinkMulticast()
    {
        // Multicast (cuMulticastCreate, NVLS, NCCL's symmetric windows) is forbidden on the shared GPU hosts.
        var all = PInvokes().Select(p => p.EntryPoint).ToArray();
        Assert.That(all, Is.Not.Empty, "the scan sees the P/Invokes");
        Assert.That(all.Where(e => e.Contains("Multicast", StringComparison.OrdinalIgnoreCase)
                                   || e.Contains("Nvls", StringComparison.OrdinalIgnoreCase)
                                   || e.Contains("Window", StringComparison.OrdinalIgnoreCase)
                                   || e.StartsWith("ncclMem", StringComparison.Ordinal)), Is.Empty);
    }

    // ---- NVLS off -------------------------------------------------------------------------------------------------

    [Test]
    public void NativeEnvironmentSetsOnlyWhenUnset()
    {
        string name = "QWQ_TEST_NATIVE_ENV_" + Guid.NewGuid().ToString("N")[..8].ToUpperInvariant();
        Assert.That(NativeEnvironment.Get(name), Is.Null);
        Assert.That(NativeEnvironment.SetIfUnset(name, "first"), Is.True);
        Assert.That(NativeEnvironment.Get(name), Is.EqualTo("first"), "visible to native getenv");
        Assert.That(Environment.GetEnvironmentVariable(name), Is.EqualTo("first"), "and to .NET");
        Assert.That(NativeEnvironment.SetIfUnset(name, "second"), Is.False);
        Assert.That(NativeEnvironment.Get(name), Is.EqualTo("first"));
        if (!OperatingSystem.IsWindows()) Assert.That(NativeEnvironment.IsNative, Is.True, "getenv/setenv found in the process");
    }

    [Test]
    public void NvlsIsTurnedOffUnlessSomeoneSetIt()
    {
        string? before = NativeEnvironment.Get(Nccl.NvlsEnableVariable);
        bool set = Nccl.DisableNvls();
        Assert.That(set, Is.EqualTo(before is null));
        Assert.That(NativeEnvironment.Get(Nccl.NvlsEnableVariable), Is.EqualTo(before ?? "0"));
        Assert.That(Nccl.DisableNvls(), Is.False, "idempotent");
    }

    // ---- errors ---------------------------------------------------------------------------------------------------

    [Test]
    public void ErrorsNameTheCallAndNcclsMessage()
    {
        var e = NcclErrors.Create("ncclAllReduce", NcclResult.InvalidArgument, null, null, "4096 × bfloat16 on rank 1 of 2 (device 1)");
        Assert.That(e.Message, Is.EqualTo("ncclAllReduce failed: ncclInvalidArgument (invalid argument (run with NCCL_DEBUG=WARN for details))" +
                                          " — 4096 × bfloat16 on rank 1 of 2 (device 1)"));
        Assert.That((e.Call, e.ErrorCode, e.Result), Is.EqualTo(("ncclAllReduce", 4, NcclResult.InvalidArgument)));
        Assert.That(e, Is.InstanceOf<CudaException>(), "callers catch GPU failures as CudaException");

        var fromLibrary = NcclErrors.Create("ncclCommInitAll", NcclResult.UnhandledCudaError, "unhandled cuda error", "Cuda failure 'out of memory'", null);
        Assert.That(fromLibrary.Message, Is.EqualTo("ncclCommInitAll failed: ncclUnhandledCudaError (unhandled cuda error). NCCL: Cuda failure 'out of memory'"));

        Assert.That(NcclErrors.Create("ncclGroupEnd", (NcclResult)42, "", null, null).Message,
            Is.EqualTo("ncclGroupEnd failed: ncclResult_42 (unknown result code)"));
    }

    [Test]
    public void WithoutTheLibraryTheBuiltInTextsAreUsed()
    {
        if (NativeLibraries.TryLoad(NativeLib.Nccl, out _, out _)) Assert.Ignore("NCCL loads here: its own strings are used");
        var e = Nccl.Error("ncclCommInitRank", NcclResult.RemoteError, IntPtr.Zero, "rank 0 of 2");
        Assert.That(e.Message, Is.EqualTo("ncclCommInitRank failed: ncclRemoteError (remote process exited or there was a network error) — rank 0 of 2"));
        Assert.Throws<NcclException>(() => Nccl.Check(NcclResult.InvalidUsage, "ncclGroupEnd"));
        Assert.DoesNotThrow(() => Nccl.Check(NcclResult.Success, "ncclGroupEnd"));
    }

    [TestCase(22705, "2.27.5")]
    [TestCase(21003, "2.10.3")]
    [TestCase(2804, "2.8.4")]
    [TestCase(2406, "2.4.6")]
    public void VersionCodes(int code, string version) => Assert.That(Nccl.FormatVersion(code), Is.EqualTo(version));
}

using System.Text;

namespace QwQ.Cuda.Native;

/// <summary>
/// The device's primary context, retained for the lifetime of this object and made current on the creating
/// thread. The engine uses exactly one context per process (the primary one), which is also what the CUDA
/// runtime inside cuBLAS uses, so cuBLAS and our kernels share streams and memory without any context switching.
/// Other threads that touch CUDA call <see cref="MakeCurrent"/> first.
/// </summary>
internal sealed class CudaContext : IDisposable
{
    private int disposed;

    private CudaContext(int device, IntPtr handle)
    {
        Device = device;
        Handle = handle;
    }

    /// <summary>Device ordinal (CUdevice).</summary>
    public int Device { get; }

    /// <summary>The CUcontext.</summary>
    internal IntPtr Handle { get; }

    public string DeviceName { get; private init; } = "";
    public long TotalMemory { get; private init; }
    public int MultiprocessorCount { get; private init; }
    public (int Major, int Minor) ComputeCapability { get; private init; }

    /// <summary>cuDriverGetVersion encoding, e.g. 13000 for CUDA 13.0.</summary>
    public int DriverVersion { get; private init; }

    public long L2CacheBytes { get; private init; }

    /// <summary>Largest dynamic shared memory a kernel may opt into (see <see cref="CudaKernel.SetMaxDynamicSharedMemory"/>).</summary>
    public int MaxSharedMemoryPerBlockOptin { get; private init; }

    /// <summary>Retains device <paramref name="device"/>'s primary context and makes it current on this thread.</summary>
    public static unsafe CudaContext Create(int device = 0)
    {
        Cuda.EnsureInitialized();
        CudaErrors.Check(CudaDriverApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (device < 0 || device >= count)
            throw new CudaUnavailableException($"CUDA device {device} does not exist: {count} device(s) visible (ordinals 0..{count - 1}).");

        CudaErrors.Check(CudaDriverApi.cuDeviceGet(out int dev, device), "cuDeviceGet");
        CudaErrors.Check(CudaDriverApi.cuDevicePrimaryCtxRetain(out var ctx, dev), "cuDevicePrimaryCtxRetain");
        try
        {
            CudaErrors.Check(CudaDriverApi.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");

            byte* name = stackalloc byte[256];
            CudaErrors.Check(CudaDriverApi.cuDeviceGetName(name, 256, dev), "cuDeviceGetName");
            CudaErrors.Check(CudaDriverApi.cuDeviceTotalMem_v2(out nuint total, dev), "cuDeviceTotalMem_v2");
            CudaErrors.Check(CudaDriverApi.cuDriverGetVersion(out int driver), "cuDriverGetVersion");
            return new CudaContext(dev, ctx)
            {
                DeviceName = Encoding.UTF8.GetString(new ReadOnlySpan<byte>(name, 256).TrimNullTerminated()),
                TotalMemory = (long)total,
                MultiprocessorCount = Attribute(CudaDriverApi.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev),
                ComputeCapability = (Attribute(CudaDriverApi.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
                                     Attribute(CudaDriverApi.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)),
                DriverVersion = driver,
                L2CacheBytes = Attribute(CudaDriverApi.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev),
                MaxSharedMemoryPerBlockOptin = Attribute(CudaDriverApi.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev),
            };
        }
        catch
        {
            CudaDriverApi.cuDevicePrimaryCtxRelease_v2(dev);
            throw;
        }
    }

    private static int Attribute(int attribute, int dev)
    {
        CudaErrors.Check(CudaDriverApi.cuDeviceGetAttribute(out int v, attribute, dev), "cuDeviceGetAttribute");
        return v;
    }

    /// <summary>Free and total device memory in bytes.</summary>
    public (long Free, long Total) GetMemoryInfo()
    {
        MakeCurrent();
        CudaErrors.Check(CudaDriverApi.cuMemGetInfo_v2(out nuint free, out nuint total), "cuMemGetInfo_v2");
        return ((long)free, (long)total);
    }

    /// <summary>Makes this context current on the calling thread (needed once per thread that uses CUDA).</summary>
    public void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        CudaErrors.Check(CudaDriverApi.cuCtxSetCurrent(Handle), "cuCtxSetCurrent");
    }

    /// <summary>Whether kernels of this context can read and write <paramref name="peer"/>'s memory (NVLink or PCIe P2P).</summary>
    public bool CanAccessPeer(CudaContext peer)
    {
        CudaErrors.Check(CudaDriverApi.cuDeviceCanAccessPeer(out int can, Device, peer.Device), "cuDeviceCanAccessPeer");
        return can != 0;
    }

    /// <summary>
    /// Lets kernels of this context address every allocation of <paramref name="peer"/>'s (tensor parallel reads the
    /// peers' partial sums directly). Makes this context current. Enabling it twice is not an error.
    /// </summary>
    public void EnablePeerAccess(CudaContext peer)
    {
        MakeCurrent();
        int rc = CudaDriverApi.cuCtxEnablePeerAccess(peer.Handle, 0);
        if (rc != CudaErrors.CudaSuccess && rc != CudaDriverApi.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED)
            CudaErrors.Throw("cuCtxEnablePeerAccess", rc, $"device {Device} → device {peer.Device}");
    }

    /// <summary>Waits for all work in the context; surfaces asynchronous kernel errors.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaErrors.Check(CudaDriverApi.cuCtxSynchronize(), "cuCtxSynchronize");
    }

    /// <summary>
    /// Releases our reference on the primary context. Resources (buffers, streams, ...) should be disposed first:
    /// when the last reference goes, the driver destroys the context and everything in it.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        CudaDriverApi.cuDevicePrimaryCtxRelease_v2(Device); // nothing useful to do with an error while tearing down
    }

    public override string ToString() =>
        $"{DeviceName} (sm_{ComputeCapability.Major}{ComputeCapability.Minor}, {MultiprocessorCount} SMs, " +
        $"{TotalMemory / (1024.0 * 1024 * 1024):F1} GiB, driver CUDA {Cuda.FormatVersion(DriverVersion)})";
}

internal static class SpanNullTerminator
{
    /// <summary>The bytes before the first NUL.</summary>
    internal static ReadOnlySpan<byte> TrimNullTerminated(this ReadOnlySpan<byte> s)
    {
        int i = s.IndexOf((byte)0);
        return i < 0 ? s : s[..i];
    }
}

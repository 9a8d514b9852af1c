namespace QwQ.Cuda.Native;

/// <summary>
/// Process-wide CUDA probing: is there a driver, a new enough one, and a device.
/// Note: inside any namespace under <c>QwQ</c> a bare <c>Cuda</c> binds to the namespace <c>QwQ.Cuda</c>, not to this
/// class; write <c>Native.Cuda.IsAvailable(...)</c> (from QwQ.Cuda.*) or add
/// <c>using Cuda = global::QwQ.Cuda.Native.Cuda;</c> after the file-scoped namespace declaration.
/// </summary>
internal static class Cuda
{
    /// <summary>Oldest driver API version we accept (cuDriverGetVersion encoding: 1000*major + 10*minor).</summary>
    internal const int MinDriverVersion = 12000;

    /// <summary>
    /// True when CUDA can be used: libcuda loads, cuInit(0) succeeds, the driver is CUDA 12.0+ and there is at
    /// least one device. Otherwise false with a user-readable reason. Never throws.
    /// </summary>
    public static bool IsAvailable(out string reason)
    {
        try
        {
            reason = Probe();
            return reason.Length == 0;
        }
        catch (Exception e) // a broken install can fail in surprising ways; this method is a yes/no question
        {
            reason = $"CUDA is unavailable: {e.Message}";
            return false;
        }
    }

    /// <summary>Throws <see cref="CudaUnavailableException"/> with the reason unless CUDA is usable.</summary>
    internal static void EnsureInitialized()
    {
        string reason;
        try { reason = Probe(); }
        catch (Exception e) { reason = $"CUDA is unavailable: {e.Message}"; }
        if (reason.Length != 0) throw new CudaUnavailableException(reason);
    }

    /// <summary>Empty string when usable, else why not (with the fix).</summary>
    private static string Probe()
    {
        NativeLibraries.EnsureRegistered();
        if (!NativeLibraries.TryLoad(NativeLib.Driver, out _, out var loadError))
            return $"No NVIDIA driver found. {loadError}";

        int rc = CudaDriverApi.cuInit(0);
        if (rc != CudaErrors.CudaSuccess)
        {
            var e = CudaErrors.Driver("cuInit", rc);
            return rc == 100 // CUDA_ERROR_NO_DEVICE
                ? $"No CUDA-capable GPU was detected ({e.Message}). Check that the GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES)."
                : $"The CUDA driver failed to initialize ({e.Message}). Check the NVIDIA driver installation with nvidia-smi.";
        }

        CudaErrors.Check(CudaDriverApi.cuDriverGetVersion(out int version), "cuDriverGetVersion");
        if (version < MinDriverVersion)
            return $"The NVIDIA driver supports CUDA {FormatVersion(version)}, but CUDA {FormatVersion(MinDriverVersion)} or newer is required. " +
                   "Update the NVIDIA driver (R525 or newer; R580 for CUDA 13).";

        CudaErrors.Check(CudaDriverApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (count <= 0)
            return "No CUDA-capable GPU was detected. Check that the GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES).";
        return "";
    }

    /// <summary>CUDA devices visible to this process (CUDA must be available: <see cref="EnsureInitialized"/> runs first).</summary>
    public static int DeviceCount
    {
        get
        {
            EnsureInitialized();
            CudaErrors.Check(CudaDriverApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
            return count;
        }
    }

    /// <summary>12020 → "12.2".</summary>
    internal static string FormatVersion(int v) => $"{v / 1000}.{v % 1000 / 10}";
}

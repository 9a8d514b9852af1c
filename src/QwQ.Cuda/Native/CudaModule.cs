using System.Text;

namespace QwQ.Cuda.Native;

/// <summary>A module JIT-compiled from PTX text into the current context (cuModuleLoadDataEx).</summary>
internal sealed class CudaModule : IDisposable
{
    private const int LogBytes = 16 * 1024;
    private readonly ModuleHandle handle;

    private CudaModule(ModuleHandle handle, string name)
    {
        this.handle = handle;
        Name = name;
    }

    /// <summary>The name given at load (e.g. the resource name), for error messages.</summary>
    public string Name { get; }

    /// <summary>
    /// JIT-compiles <paramref name="ptx"/> (NUL termination optional) for the current device. On failure the
    /// exception message includes the JIT error log.
    /// </summary>
    public static unsafe CudaModule LoadPtx(ReadOnlySpan<byte> ptx, string name)
    {
        var ctx = CudaDriverApi.RequireCurrentContext("cuModuleLoadDataEx");

        // The driver reads the image as a C string: make sure it is NUL-terminated.
        byte[] image = new byte[ptx.Length + 1];
        ptx.CopyTo(image);

        byte[] errorLog = new byte[LogBytes];
        byte[] infoLog = new byte[LogBytes];
        int* options = stackalloc int[4];
        void** values = stackalloc void*[4];
        int rc;
        IntPtr module;
        fixed (byte* img = image)
        fixed (byte* err = errorLog)
        fixed (byte* info = infoLog)
        {
            options[0] = CudaDriverApi.CU_JIT_ERROR_LOG_BUFFER;
            values[0] = err;
            options[1] = CudaDriverApi.CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
            values[1] = (void*)(nuint)LogBytes; // size options pass the value itself in the pointer slot
            options[2] = CudaDriverApi.CU_JIT_INFO_LOG_BUFFER;
            values[2] = info;
            options[3] = CudaDriverApi.CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES;
            values[3] = (void*)(nuint)LogBytes;
            rc = CudaDriverApi.cuModuleLoadDataEx(out module, img, 4, options, values);
        }
        if (rc != CudaErrors.CudaSuccess)
        {
            var log = Decode(errorLog);
            if (log.Length == 0) log = Decode(infoLog);
            CudaErrors.Throw("cuModuleLoadDataEx", rc,
                $"module '{name}'" + (log.Length > 0 ? $"; JIT log:{Environment.NewLine}{log}" : " (empty JIT log)"));
        }
        var h = new ModuleHandle();
        h.Initialize(module, ctx);
        return new CudaModule(h, name);
    }

    private static string Decode(byte[] log) => Encoding.UTF8.GetString(((ReadOnlySpan<byte>)log).TrimNullTerminated()).Trim();

    /// <summary>
    /// Resolves kernel <paramref name="entry"/>; throws naming it (and this module) if absent.
    /// <paramref name="programmaticLaunch"/>: see <see cref="CudaKernel.ProgrammaticLaunch"/>.
    /// </summary>
    public unsafe CudaKernel GetKernel(string entry, bool programmaticLaunch = false)
    {
        ArgumentNullException.ThrowIfNull(entry);
        ObjectDisposedException.ThrowIf(handle.IsClosed, this);
        int len = Encoding.UTF8.GetByteCount(entry);
        Span<byte> utf8 = len < 512 ? stackalloc byte[len + 1] : new byte[len + 1];
        Encoding.UTF8.GetBytes(entry, utf8);
        utf8[len] = 0;
        int rc;
        IntPtr f;
        fixed (byte* p = utf8)
            rc = CudaDriverApi.cuModuleGetFunction(out f, handle.DangerousGetHandle(), p);
        if (rc != CudaErrors.CudaSuccess) CudaErrors.Throw("cuModuleGetFunction", rc, $"kernel '{entry}' in module '{Name}'");
        GC.KeepAlive(this);
        return new CudaKernel(f, entry, programmaticLaunch);
    }

    public void Dispose() => handle.Dispose();
}

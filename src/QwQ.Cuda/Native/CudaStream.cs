namespace QwQ.Cuda.Native;

/// <summary>
/// A CUDA stream in the current context. Created as a blocking stream (not CU_STREAM_NON_BLOCKING) on purpose:
/// the synchronous copies in <see cref="DeviceBuffer"/> run on the legacy default stream, and a blocking
/// stream orders with it, so "launch on stream, then CopyToHost" is correct without an explicit sync.
/// (Do not use the synchronous copies while the stream is being captured into a graph.)
/// </summary>
internal sealed class CudaStream : IDisposable
{
    private readonly StreamHandle handle;

    private CudaStream(StreamHandle handle) => this.handle = handle;

    /// <summary>Creates a stream in the context current on this thread.</summary>
    public static CudaStream Create()
    {
        var ctx = CudaDriverApi.RequireCurrentContext("cuStreamCreate");
        var h = new StreamHandle();
        CudaErrors.Check(CudaDriverApi.cuStreamCreate(out var s, CudaDriverApi.CU_STREAM_DEFAULT), "cuStreamCreate");
        h.Initialize(s, ctx);
        return new CudaStream(h);
    }

    /// <summary>The CUstream (also usable as a cudaStream_t for cuBLAS).</summary>
    public IntPtr Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            return handle.DangerousGetHandle();
        }
    }

    /// <summary>While set, every kernel launched on this stream is timed (a diagnostic; null in normal runs).</summary>
    internal LaunchTimer? Timer { get; set; }

    /// <summary>Waits for all work queued on the stream; surfaces asynchronous kernel errors.</summary>
    public void Synchronize()
    {
        CudaErrors.Check(CudaDriverApi.cuStreamSynchronize(Handle), "cuStreamSynchronize");
        GC.KeepAlive(this);
    }

    public void Dispose() => handle.Dispose();
}

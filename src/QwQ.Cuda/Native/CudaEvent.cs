namespace QwQ.Cuda.Native;

/// <summary>A CUDA event, for timing (default) or for cross-stream ordering (timing disabled, cheaper).</summary>
internal sealed class CudaEvent : IDisposable
{
    private readonly EventHandle handle;

    private CudaEvent(EventHandle handle) => this.handle = handle;

    public static CudaEvent Create(bool timing = true)
    {
        var ctx = CudaDriverApi.RequireCurrentContext("cuEventCreate");
        var h = new EventHandle();
        uint flags = timing ? CudaDriverApi.CU_EVENT_DEFAULT : CudaDriverApi.CU_EVENT_DISABLE_TIMING;
        CudaErrors.Check(CudaDriverApi.cuEventCreate(out var e, flags), "cuEventCreate");
        h.Initialize(e, ctx);
        return new CudaEvent(h);
    }

    internal IntPtr Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            return handle.DangerousGetHandle();
        }
    }

    /// <summary>Records the event at the current end of <paramref name="s"/>'s queue.</summary>
    public void Record(CudaStream s)
    {
        CudaErrors.Check(CudaDriverApi.cuEventRecord(Handle, s.Handle), "cuEventRecord");
        GC.KeepAlive(s);
        GC.KeepAlive(this);
    }

    /// <summary>Blocks until the recorded work has completed.</summary>
    public void Synchronize()
    {
        CudaErrors.Check(CudaDriverApi.cuEventSynchronize(Handle), "cuEventSynchronize");
        GC.KeepAlive(this);
    }

    /// <summary>Milliseconds between two completed timing events (synchronize <paramref name="end"/> first).</summary>
    public static float ElapsedMilliseconds(CudaEvent start, CudaEvent end)
    {
        CudaErrors.Check(CudaDriverApi.EventElapsedTime(out float ms, start.Handle, end.Handle), "cuEventElapsedTime");
        GC.KeepAlive(start);
        GC.KeepAlive(end);
        return ms;
    }

    public void Dispose() => handle.Dispose();
}

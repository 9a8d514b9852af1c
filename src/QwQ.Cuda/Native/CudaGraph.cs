namespace QwQ.Cuda.Native;

/// <summary>
/// A CUDA graph recorded by stream capture and instantiated once, for replaying a fixed sequence of
/// launches (e.g. one decode step) with a single launch call. Captured work must keep using the same device
/// pointers; the sequence is not re-recorded when data changes, only when shapes or pointers change.
/// </summary>
internal sealed class CudaGraph : IDisposable
{
    private readonly GraphHandle graph;
    private readonly GraphExecHandle exec;

    private CudaGraph(GraphHandle graph, GraphExecHandle exec)
    {
        this.graph = graph;
        this.exec = exec;
    }

    /// <summary>
    /// Runs <paramref name="record"/> with <paramref name="stream"/> in capture mode (thread-local: other
    /// threads' CUDA calls are unaffected) and instantiates the result. Work queued on the stream inside
    /// <paramref name="record"/> is recorded, not executed. Synchronous copies and allocations are not allowed
    /// inside. If <paramref name="record"/> throws, capture is ended and the partial graph discarded.
    /// </summary>
    public static CudaGraph Capture(CudaStream stream, Action record)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(record);
        var ctx = CudaDriverApi.RequireCurrentContext("cuStreamBeginCapture_v2");
        var s = stream.Handle;
        CudaErrors.Check(CudaDriverApi.cuStreamBeginCapture_v2(s, CudaDriverApi.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture_v2");

        IntPtr rawGraph;
        try
        {
            record();
        }
        catch
        {
            // Leave the stream usable: end the capture and drop whatever was recorded.
            if (CudaDriverApi.cuStreamEndCapture(s, out var partial) == CudaErrors.CudaSuccess && partial != IntPtr.Zero)
                CudaDriverApi.cuGraphDestroy(partial);
            throw;
        }
        CudaErrors.Check(CudaDriverApi.cuStreamEndCapture(s, out rawGraph), "cuStreamEndCapture");

        var g = new GraphHandle();
        g.Initialize(rawGraph, ctx);
        int rc = CudaDriverApi.cuGraphInstantiateWithFlags(out var rawExec, rawGraph, 0);
        if (rc != CudaErrors.CudaSuccess)
        {
            g.Dispose();
            CudaErrors.Throw("cuGraphInstantiateWithFlags", rc, null);
        }
        var e = new GraphExecHandle();
        e.Initialize(rawExec, ctx);
        GC.KeepAlive(stream);
        return new CudaGraph(g, e);
    }

    /// <summary>Queues one replay of the captured work on <paramref name="stream"/>.</summary>
    public void Launch(CudaStream stream)
    {
        ObjectDisposedException.ThrowIf(exec.IsClosed, this);
        CudaErrors.Check(CudaDriverApi.cuGraphLaunch(exec.DangerousGetHandle(), stream.Handle), "cuGraphLaunch");
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    public void Dispose()
    {
        exec.Dispose(); // the executable first: it was instantiated from the graph
        graph.Dispose();
    }
}

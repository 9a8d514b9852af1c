namespace QwQ.Cuda.Native;

/// <summary>Page-locked host memory (cuMemHostAlloc), the source/target for truly asynchronous copies.</summary>
internal sealed class PinnedHostBuffer : IDisposable
{
    private readonly HostMemoryHandle handle;

    private PinnedHostBuffer(HostMemoryHandle handle, long bytes)
    {
        this.handle = handle;
        Bytes = bytes;
    }

    public static PinnedHostBuffer Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        var ctx = CudaDriverApi.RequireCurrentContext("cuMemHostAlloc");
        var h = new HostMemoryHandle();
        int rc = CudaDriverApi.cuMemHostAlloc(out var p, (nuint)bytes, CudaDriverApi.CU_MEMHOSTALLOC_PORTABLE);
        if (rc != CudaErrors.CudaSuccess) CudaErrors.Throw("cuMemHostAlloc", rc, $"requested {DeviceBuffer.FormatBytes(bytes)} of pinned host memory");
        h.Initialize(p, ctx);
        return new PinnedHostBuffer(h, bytes);
    }

    public IntPtr Ptr
    {
        get
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            return handle.DangerousGetHandle();
        }
    }

    public long Bytes { get; }

    /// <summary>The buffer as a span of whole <typeparamref name="T"/>s. Valid only until Dispose.</summary>
    public unsafe Span<T> AsSpan<T>() where T : unmanaged
    {
        long count = Bytes / sizeof(T);
        if (count > int.MaxValue) throw new InvalidOperationException($"Pinned buffer of {Bytes} bytes is too large for one span of {typeof(T).Name}.");
        return new Span<T>((void*)Ptr, (int)count);
    }

    public void Dispose() => handle.Dispose();
}

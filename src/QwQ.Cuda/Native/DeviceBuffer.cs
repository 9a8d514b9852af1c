namespace QwQ.Cuda.Native;

/// <summary>
/// A linear device allocation (cuMemAlloc_v2; 256-byte aligned). The synchronous copies run on the legacy
/// default stream, which orders with our (blocking) <see cref="CudaStream"/>s; the Async ones are ordered on the
/// given stream only. A zero-byte buffer is allowed and has <see cref="Ptr"/> == 0.
/// </summary>
internal sealed class DeviceBuffer : IDisposable
{
    private readonly DeviceMemoryHandle handle;

    private DeviceBuffer(DeviceMemoryHandle handle, long bytes)
    {
        this.handle = handle;
        Bytes = bytes;
    }

    /// <summary>Allocates <paramref name="bytes"/> of device memory in the current context (contents undefined).</summary>
    public static DeviceBuffer Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        var h = new DeviceMemoryHandle();
        if (bytes == 0) return new DeviceBuffer(h, 0);
        var ctx = CudaDriverApi.RequireCurrentContext("cuMemAlloc_v2");
        int rc = CudaDriverApi.cuMemAlloc_v2(out ulong p, (nuint)bytes);
        if (rc != CudaErrors.CudaSuccess) CudaErrors.Throw("cuMemAlloc_v2", rc, $"requested {FormatBytes(bytes)}");
        h.Initialize((IntPtr)(long)p, ctx);
        return new DeviceBuffer(h, bytes);
    }

    /// <summary>Allocates a buffer of exactly <paramref name="src"/>'s size and copies it in.</summary>
    public static DeviceBuffer FromHost<T>(ReadOnlySpan<T> src) where T : unmanaged
    {
        var b = Allocate(SpanBytes(src.Length, SizeOf<T>()));
        try
        {
            b.CopyFromHost(src);
            return b;
        }
        catch
        {
            b.Dispose();
            throw;
        }
    }

    /// <summary>The device address (CUdeviceptr).</summary>
    public ulong Ptr
    {
        get
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            return handle.Ptr;
        }
    }

    public long Bytes { get; }

    /// <summary>Copies <paramref name="src"/> to this buffer at <paramref name="byteOffset"/>; returns when the source may be reused.</summary>
    public unsafe void CopyFromHost<T>(ReadOnlySpan<T> src, long byteOffset = 0) where T : unmanaged
    {
        long n = SpanBytes(src.Length, SizeOf<T>());
        ulong dst = Range(byteOffset, n);
        if (n == 0) return;
        fixed (T* p = src)
            CudaErrors.Check(CudaDriverApi.cuMemcpyHtoD_v2(dst, p, (nuint)n), "cuMemcpyHtoD_v2");
        GC.KeepAlive(this);
    }

    /// <summary>Copies from this buffer at <paramref name="byteOffset"/> into <paramref name="dst"/>; returns when done.</summary>
    public unsafe void CopyToHost<T>(Span<T> dst, long byteOffset = 0) where T : unmanaged
    {
        long n = SpanBytes(dst.Length, SizeOf<T>());
        ulong src = Range(byteOffset, n);
        if (n == 0) return;
        fixed (T* p = dst)
            CudaErrors.Check(CudaDriverApi.cuMemcpyDtoH_v2(p, src, (nuint)n), "cuMemcpyDtoH_v2");
        GC.KeepAlive(this);
    }

    /// <summary>The whole buffer as an array of <typeparamref name="T"/> (size must be a multiple of sizeof(T)).</summary>
    public T[] ToArray<T>() where T : unmanaged
    {
        int size = SizeOf<T>();
        if (Bytes % size != 0)
            throw new InvalidOperationException($"Buffer of {Bytes} bytes is not a whole number of {typeof(T).Name} ({size} bytes).");
        long count = Bytes / size;
        if (count > Array.MaxLength) throw new InvalidOperationException($"Buffer of {Bytes} bytes is too large for one array.");
        var result = new T[count];
        CopyToHost<T>(result);
        return result;
    }

    /// <summary>Queues a host→device copy on <paramref name="stream"/>. <paramref name="src"/> should be pinned
    /// (<see cref="PinnedHostBuffer"/>) for a truly asynchronous copy and must stay valid until the stream reaches it.</summary>
    public unsafe void CopyFromHostAsync(IntPtr src, long bytes, long byteOffset, CudaStream stream)
    {
        ulong dst = Range(byteOffset, bytes);
        if (bytes == 0) return;
        ArgumentNullException.ThrowIfNull(stream);
        CudaErrors.Check(CudaDriverApi.cuMemcpyHtoDAsync_v2(dst, (void*)src, (nuint)bytes, stream.Handle), "cuMemcpyHtoDAsync_v2");
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    /// <summary>Queues a device→host copy on <paramref name="stream"/> (see <see cref="CopyFromHostAsync"/>).</summary>
    public unsafe void CopyToHostAsync(IntPtr dst, long bytes, long byteOffset, CudaStream stream)
    {
        ulong src = Range(byteOffset, bytes);
        if (bytes == 0) return;
        ArgumentNullException.ThrowIfNull(stream);
        CudaErrors.Check(CudaDriverApi.cuMemcpyDtoHAsync_v2((void*)dst, src, (nuint)bytes, stream.Handle), "cuMemcpyDtoHAsync_v2");
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    /// <summary>Queues a device→device copy of <paramref name="bytes"/> from <paramref name="srcPtr"/> into this buffer at <paramref name="byteOffset"/>.</summary>
    public void CopyFromDevice(ulong srcPtr, long bytes, long byteOffset, CudaStream stream)
    {
        ulong dst = Range(byteOffset, bytes);
        if (bytes == 0) return;
        ArgumentNullException.ThrowIfNull(stream);
        CudaErrors.Check(CudaDriverApi.cuMemcpyDtoDAsync_v2(dst, srcPtr, (nuint)bytes, stream.Handle), "cuMemcpyDtoDAsync_v2");
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    /// <summary>
    /// Fills the whole buffer with the 4-byte little-endian pattern <paramref name="value"/> (e.g. 0x7FC00000, an
    /// fp32 NaN, to poison scratch memory). A trailing partial word gets the pattern's low bytes. With no stream the
    /// fill runs on the legacy default stream; with one it is queued there.
    /// </summary>
    public void Memset32(uint value, CudaStream? stream = null)
    {
        ulong p = Ptr;
        if (Bytes == 0) return;
        long words = Bytes / 4;
        int tail = (int)(Bytes % 4);
        if (stream is null)
        {
            if (words > 0) CudaErrors.Check(CudaDriverApi.cuMemsetD32_v2(p, value, (nuint)words), "cuMemsetD32_v2");
            for (int i = 0; i < tail; i++)
                CudaErrors.Check(CudaDriverApi.cuMemsetD8_v2(p + (ulong)(words * 4 + i), (byte)(value >> (8 * i)), 1), "cuMemsetD8_v2");
        }
        else
        {
            var s = stream.Handle;
            if (words > 0) CudaErrors.Check(CudaDriverApi.cuMemsetD32Async(p, value, (nuint)words, s), "cuMemsetD32Async");
            for (int i = 0; i < tail; i++)
                CudaErrors.Check(CudaDriverApi.cuMemsetD8Async(p + (ulong)(words * 4 + i), (byte)(value >> (8 * i)), 1, s), "cuMemsetD8Async");
            GC.KeepAlive(stream);
        }
        GC.KeepAlive(this);
    }

    public void Dispose() => handle.Dispose();

    public override string ToString() => handle.IsClosed ? "DeviceBuffer(disposed)" : $"DeviceBuffer(0x{handle.Ptr:x}, {Bytes} bytes)";

    /// <summary>Checks [offset, offset+bytes) lies inside the buffer and returns the device address of offset.</summary>
    private ulong Range(long byteOffset, long bytes)
    {
        ulong p = Ptr;
        if (byteOffset < 0 || bytes < 0 || byteOffset > Bytes || bytes > Bytes - byteOffset)
            throw new ArgumentOutOfRangeException(nameof(byteOffset),
                $"Range [{byteOffset}, {byteOffset}+{bytes}) is outside the {Bytes}-byte device buffer.");
        return p + (ulong)byteOffset;
    }

    private static unsafe int SizeOf<T>() where T : unmanaged => sizeof(T);

    private static long SpanBytes(int length, int size) => (long)length * size;

    internal static string FormatBytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        _ => $"{bytes} bytes",
    };
}

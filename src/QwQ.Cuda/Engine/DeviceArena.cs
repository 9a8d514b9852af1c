using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One device allocation carved into aligned sub-buffers. The weights live in one arena (65.5 GB for QwQ-32B):
/// one cuMemAlloc instead of ~450, no fragmentation, and the layout is decided before any byte moves.
/// </summary>
internal sealed class DeviceArena : IDisposable
{
    private const long Alignment = 256; // 16-byte vector loads need 16; 256 keeps every tensor on its own cache lines
    private readonly DeviceBuffer _buffer;
    private long _used;

    public DeviceArena(long bytes) => _buffer = DeviceBuffer.Allocate(Math.Max(bytes, Alignment));

    public long Capacity => _buffer.Bytes;
    public long Used => _used;

    /// <summary>Bytes an arena needs for the given sub-buffer sizes, with alignment padding.</summary>
    public static long SizeFor(IEnumerable<long> sizes) => sizes.Sum(Align);

    public static long Align(long bytes) => (bytes + Alignment - 1) / Alignment * Alignment;

    /// <summary>Reserves <paramref name="bytes"/> and returns the device pointer.</summary>
    public ulong Take(long bytes)
    {
        long aligned = Align(bytes);
        if (_used + aligned > _buffer.Bytes)
            throw new InvalidOperationException($"DeviceArena overflow: {_used} + {aligned} > {_buffer.Bytes}");
        ulong ptr = _buffer.Ptr + (ulong)_used;
        _used += aligned;
        return ptr;
    }

    /// <summary>Asynchronous host-to-device copy into memory this arena handed out.</summary>
    public void CopyFromHostAsync(ulong dst, IntPtr src, long bytes, CudaStream stream)
    {
        if (dst < _buffer.Ptr || dst + (ulong)bytes > _buffer.Ptr + (ulong)_buffer.Bytes)
            throw new ArgumentOutOfRangeException(nameof(dst), "copy outside the arena");
        _buffer.CopyFromHostAsync(src, bytes, (long)(dst - _buffer.Ptr), stream);
    }

    public void Dispose() => _buffer.Dispose();
}

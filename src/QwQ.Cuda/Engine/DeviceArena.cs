using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One device allocation carved into aligned sub-buffers. The weights live in one arena (65.5 GB for QwQ-32B):
/// one cuMemAlloc instead of ~450, no fragmentation, and the layout is decided before any byte moves.
/// </summary>
internal sealed class DeviceArena : IDisposable
{
    private const long Alignment = 256; // 16-byte vector loads need 16; 256 keeps every tensor on its own cache lines
    private readonly DeviceBuffer? _buffer; // null: a layout only
    private readonly ulong _base;
    private readonly long _capacity;
    private long _used;

    public DeviceArena(long bytes)
    {
        _buffer = DeviceBuffer.Allocate(Math.Max(bytes, Alignment));
        (_base, _capacity) = (_buffer.Ptr, _buffer.Bytes);
    }

    private DeviceArena(ulong baseAddress, long bytes) => (_base, _capacity) = (baseAddress, Math.Max(bytes, Alignment));

    /// <summary>
    /// An arena that hands out addresses from <paramref name="baseAddress"/> without any device memory: the same layout
    /// as a real one, for checking layouts where there is no GPU. Nothing can be copied into it.
    /// </summary>
    public static DeviceArena LayoutOnly(long bytes, ulong baseAddress = 1UL << 40) => new(baseAddress, bytes);

    public long Capacity => _capacity;
    public long Used => _used;

    /// <summary>Bytes an arena needs for the given sub-buffer sizes, with alignment padding.</summary>
    public static long SizeFor(IEnumerable<long> sizes) => sizes.Sum(Align);

    public static long Align(long bytes) => (bytes + Alignment - 1) / Alignment * Alignment;

    /// <summary>Reserves <paramref name="bytes"/> and returns the device pointer.</summary>
    public ulong Take(long bytes)
    {
        long aligned = Align(bytes);
        if (_used + aligned > _capacity)
            throw new InvalidOperationException($"DeviceArena overflow: {_used} + {aligned} > {_capacity}");
        ulong ptr = _base + (ulong)_used;
        _used += aligned;
        return ptr;
    }

    /// <summary>Asynchronous host-to-device copy into memory this arena handed out.</summary>
    public void CopyFromHostAsync(ulong dst, IntPtr src, long bytes, CudaStream stream)
    {
        if (_buffer is null) throw new InvalidOperationException("a layout-only arena has no device memory");
        if (dst < _base || dst + (ulong)bytes > _base + (ulong)_capacity)
            throw new ArgumentOutOfRangeException(nameof(dst), "copy outside the arena");
        _buffer.CopyFromHostAsync(src, bytes, (long)(dst - _base), stream);
    }

    public void Dispose() => _buffer?.Dispose();
}

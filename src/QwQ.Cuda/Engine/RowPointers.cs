using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Per-sequence device pointers that one launch over many sequences needs (their logits and penalty-count buffers),
/// written by the host into pinned memory and uploaded before the launch, and the batch's sampled tokens coming
/// back. Regions: the logits copy's destinations, the greedy sampler's logits and counts, and its tokens.
/// </summary>
internal sealed class RowPointers : IDisposable
{
    private readonly PinnedHostBuffer _host;
    private readonly DeviceBuffer _device;
    private readonly int _rows;

    /// <summary>Rows one launch can serve.</summary>
    public int Capacity => _rows;

    public RowPointers(int rows)
    {
        _rows = rows;
        long bytes = 8L * 3 * rows + 4L * rows;
        _host = PinnedHostBuffer.Allocate(bytes);
        try { _device = DeviceBuffer.Allocate(bytes); }
        catch { _host.Dispose(); throw; }
    }

    private Span<ulong> HostPointers(int region) => _host.AsSpan<ulong>().Slice(region * _rows, _rows);

    public Span<ulong> LogitsDestinationsHost => HostPointers(0); // [rows]  where each step row's logits go
    public Span<ulong> SampleLogitsHost => HostPointers(1);       // [rows]  logits each greedy row reads
    public Span<ulong> SampleCountsHost => HostPointers(2);       // [rows]  penalty counts each greedy row updates
    public Span<int> TokensHost => _host.AsSpan<int>().Slice(6 * _rows, _rows); // [rows]  sampled tokens

    public ulong LogitsDestinations => _device.Ptr;
    public ulong SampleLogits => _device.Ptr + 8UL * (ulong)_rows;
    public ulong SampleCounts => _device.Ptr + 16UL * (ulong)_rows;
    public ulong Tokens => _device.Ptr + 24UL * (ulong)_rows;

    /// <summary>Queues the upload of the first <paramref name="count"/> pointers of a region (0, 1 or 2).</summary>
    public void Upload(CudaStream s, int region, int count) =>
        _device.CopyFromHostAsync(_host.Ptr + region * 8 * _rows, 8L * count, 8L * region * _rows, s);

    /// <summary>Queues the download of the first <paramref name="count"/> sampled tokens into <see cref="TokensHost"/>.</summary>
    public void DownloadTokens(CudaStream s, int count) =>
        _device.CopyToHostAsync(_host.Ptr + 24 * _rows, 4L * count, 24L * _rows, s);

    public void Dispose()
    {
        _device.Dispose();
        _host.Dispose();
    }
}

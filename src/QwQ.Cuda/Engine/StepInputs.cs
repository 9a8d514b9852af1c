using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// What one forward step needs to know about its rows and sequences, written by the host into pinned memory and
/// uploaded in two copies at the start of the step (they are the first nodes of a captured decode graph, so a
/// replay reads whatever the host wrote since). Every region is int32; row and sequence order are the step's:
/// decode sequences (one row each) first, then prefill sequences.
/// </summary>
internal sealed class StepInputs : IDisposable
{
    private readonly PinnedHostBuffer _host;
    private readonly DeviceBuffer _device;
    private readonly long _headerBytes;

    public int MaxRows { get; }
    public int MaxSequences { get; }
    public int MaxLogitRows { get; }
    public int MaxBlocks { get; }
    public int MaxSplitSlots { get; }

    // Offsets in int32 elements; every region starts on a 16-byte boundary (SeqInfo, SplitRows and SplitWork are read as int4).
    private readonly int _positions, _slots, _ropeRows, _seqInfo, _ctxLens, _splitRows, _splitWork, _logitRows, _tables;

    public StepInputs(int maxRows, int maxSequences, int maxLogitRows, int maxBlocks, int maxSplitSlots)
    {
        (MaxRows, MaxSequences, MaxLogitRows, MaxBlocks, MaxSplitSlots) = (maxRows, maxSequences, maxLogitRows, maxBlocks, maxSplitSlots);
        static int Up4(int n) => (n + 3) & ~3;
        _positions = Up4(maxRows);
        _slots = _positions + Up4(maxRows);
        _ropeRows = _slots + Up4(maxRows);
        _seqInfo = _ropeRows + Up4(maxRows);
        _ctxLens = _seqInfo + 4 * maxSequences;
        _splitRows = _ctxLens + Up4(maxSequences);
        _splitWork = _splitRows + 4 * maxSequences;
        _logitRows = _splitWork + 4 * maxSplitSlots;
        _tables = _logitRows + Up4(maxLogitRows);
        _headerBytes = 4L * _tables;
        long total = 4L * _tables + 4L * maxSequences * maxBlocks;
        _host = PinnedHostBuffer.Allocate(total);
        try { _device = DeviceBuffer.Allocate(total); }
        catch { _host.Dispose(); throw; }
        _host.AsSpan<int>().Clear();
    }

    private Span<int> Host(int offset, int length) => _host.AsSpan<int>().Slice(offset, length);
    private ulong Dev(int offset) => _device.Ptr + 4UL * (ulong)offset;

    public Span<int> IdsHost => Host(0, MaxRows);               // [rows]  token ids
    public Span<int> PositionsHost => Host(_positions, MaxRows); // [rows]  absolute positions
    public Span<int> SlotsHost => Host(_slots, MaxRows);         // [rows]  KV pool slot (block * 64 + offset), −1 = padding
    public Span<int> RopeRowsHost => Host(_ropeRows, MaxRows);   // [rows]  the engine's rope each row runs (adaptive: 0 plain, 1 YaRN)
    public Span<int> SeqInfoHost => Host(_seqInfo, 4 * MaxSequences); // [seqs, 4] first row, rows, cached positions, 0
    public Span<int> CtxLensHost => Host(_ctxLens, MaxSequences);     // [seqs]  positions attended to by a decode row (the plan's input)
    public Span<int> SplitRowsHost => Host(_splitRows, 4 * MaxSequences); // [decode seqs, 4]  the decode attention's plan (AttentionOps.PlanDecodeSplits)
    public Span<int> SplitWorkHost => Host(_splitWork, 4 * MaxSplitSlots); // [slots, 4]  each decode split slot's row (−1 unused), split, keys, context
    public Span<int> LogitRowsHost => Host(_logitRows, MaxLogitRows); // [logit_rows]  rows whose logits are computed
    public Span<int> TableHost(int seq) => Host(_tables + seq * MaxBlocks, MaxBlocks); // [max_blocks] block ids

    public ulong Ids => Dev(0);
    public ulong Positions => Dev(_positions);
    public ulong Slots => Dev(_slots);
    public ulong RopeRows => Dev(_ropeRows);
    public ulong SeqInfo(int firstSeq) => Dev(_seqInfo + 4 * firstSeq);
    public ulong SplitRows => Dev(_splitRows);
    public ulong SplitWork => Dev(_splitWork);
    public ulong LogitRows => Dev(_logitRows);
    public ulong Tables(int firstSeq) => Dev(_tables + firstSeq * MaxBlocks);

    /// <summary>
    /// Copies what the host wrote into <paramref name="source"/> (same sizes) for a step of <paramref name="sequences"/>
    /// sequences: the header and their block tables. Tensor-parallel ranks run the same step from the same inputs.
    /// </summary>
    public void CopyHostFrom(StepInputs source, int sequences)
    {
        if (source._headerBytes != _headerBytes || source.MaxBlocks != MaxBlocks) throw new ArgumentException("step inputs of another size", nameof(source));
        int ints = _tables + sequences * MaxBlocks;
        source._host.AsSpan<int>()[..ints].CopyTo(_host.AsSpan<int>());
    }

    /// <summary>Queues the upload of the header and the first <paramref name="sequences"/> block tables.</summary>
    public void Upload(CudaStream s, int sequences)
    {
        _device.CopyFromHostAsync(_host.Ptr, _headerBytes, 0, s);
        _device.CopyFromHostAsync(_host.Ptr + (nint)_headerBytes, 4L * sequences * MaxBlocks, _headerBytes, s);
    }

    public void Dispose()
    {
        _device.Dispose();
        _host.Dispose();
    }
}

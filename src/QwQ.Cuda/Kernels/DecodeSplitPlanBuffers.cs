using QwQ.Cuda.Engine;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// A paged decode launch's split plan (<see cref="AttentionOps.PlanDecodeSplits"/>) in device memory of its own, for
/// callers outside the engine: kernel tests and micro-benchmarks. The engine writes its plan into the step's inputs
/// (<see cref="StepInputs"/>) instead, uploaded with the context lengths.
/// </summary>
internal sealed class DecodeSplitPlanBuffers : IDisposable
{
    private readonly DeviceBuffer _rows;  // int32 [max batch, 4]
    private readonly DeviceBuffer _work;  // int32 [slots, 4]

    public DecodeSplitPlanBuffers(int maxBatch)
    {
        _rows = DeviceBuffer.Allocate(16L * maxBatch);
        try { _work = DeviceBuffer.Allocate(16L * AttentionOps.MaxDecodeSplitSlots(multiprocessors: 1024, nkv: 1, maxBatch)); }
        catch { _rows.Dispose(); throw; }
    }

    public ulong Rows => _rows.Ptr;
    public ulong Work => _work.Ptr;

    /// <summary>
    /// Plans a launch of <paramref name="contextLengths"/>.Length rows as <see cref="AttentionOps.DecodePaged(CudaStream, ulong, KvLayer, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, float)"/>
    /// will run it, and uploads the plan (synchronously: call it between launches, as the engine writes a step's inputs).
    /// </summary>
    public void Plan(AttentionOps ops, ReadOnlySpan<int> contextLengths, int maxBlocks, int nkv, int headDim, KvCacheKind kind)
    {
        int slots = ops.DecodeSplitSlots(nkv, contextLengths.Length, headDim, kind);
        var rows = new int[4 * contextLengths.Length];
        var work = new int[4 * slots];
        AttentionOps.PlanDecodeSplits(contextLengths, maxBlocks * AttentionOps.KvBlockSize, slots, rows, work);
        _rows.CopyFromHost<int>(rows);
        _work.CopyFromHost<int>(work);
    }

    public void Dispose()
    {
        _rows.Dispose();
        _work.Dispose();
    }
}

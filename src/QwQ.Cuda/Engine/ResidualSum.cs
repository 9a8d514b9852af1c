using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Engine;

/// <summary>How tensor-parallel ranks complete their partial sums (<see cref="EngineOptions.AllReduce"/>).</summary>
public enum AllReduceKind
{
    /// <summary>Our one-shot kernel for decode-sized steps (peer reads over NVLink), NCCL for larger ones. The default.</summary>
    Custom,
    /// <summary>NCCL's all-reduce for every step (the fallback, and the baseline the one-shot kernel is measured against).</summary>
    Nccl,
}

/// <summary>
/// How a layer's output product reaches the residual stream x, together with the RMSNorm of x that follows:
/// x += o_proj(attn), then the MLP's norm of x; x += down_proj(act), then the next layer's input norm (or the final
/// norm), each into the workspace's Normed. On one GPU the product accumulates straight into x and the norm kernel
/// follows. With tensor parallel each rank's product is a partial sum (its heads' share of o_proj, its slice of the
/// MLP), and x += Σ over ranks completes it on every rank:
/// <list type="bullet">
/// <item>up to <see cref="OneShotMaxRows"/> rows with <see cref="AllReduceKind.Custom"/>: the rank writes its partial
/// to its own buffer, and the one-shot kernel (kernels/allreduce.cu) adds every rank's, read over NVLink, into x and
/// writes the norm in the same kernel;</item>
/// <item>otherwise NCCL, in place on x: rank 0 accumulates its partial into x, the others overwrite x with theirs, and
/// the sum over ranks is x + every partial; the norm kernel follows.</item>
/// </list>
/// Both sum in the same order on every rank, so the ranks' residual streams stay identical. The lm_head's vocabulary
/// shards are all-gathered (<see cref="GatherLogits"/>) into <see cref="GatheredLogits"/> [ranks, rows, lm_head_rows].
/// </summary>
internal sealed class ResidualSum : IDisposable
{
    /// <summary>Most rows the one-shot kernel takes: past that its N − 1 remote reads per element lose to NCCL's ring.</summary>
    public const int OneShotMaxRows = Workspace.MaxSequences;

    /// <summary>Which partial buffer a product uses; attention and MLP alternate (kernels/allreduce.cu says why).</summary>
    public const int Attention = 0, Mlp = 1;

    private readonly LinearOps _linear;
    private readonly NormOps _norm;
    private readonly ulong _residual, _normed;  // the workspace's fp32 [rows, hidden] residual stream and bf16 [rows, hidden] norm of it
    private readonly float _eps;
    private readonly int _rank, _ranks, _hidden, _logitsWidth;
    private readonly NcclCommunicator? _comm;
    private readonly AllReduceOps? _oneShot;
    private readonly DeviceBuffer? _partials;  // fp32 [2, max_rows, hidden]  this rank's partial products (one-shot)
    private readonly DeviceBuffer? _signal;    // uint32 flags and epochs of the one-shot barrier
    private readonly DeviceBuffer? _gathered;  // fp32 [ranks, logit_rows, lm_head_rows]
    private readonly long _partialStride;      // bytes of one partial buffer
    private AllReduceOps.PeerPointers[] _peers = []; // per partial buffer: every rank's partial and flags

    /// <summary>The sum on one GPU: the product accumulates into <paramref name="ws"/>'s residual stream.</summary>
    public ResidualSum(LinearOps linear, NormOps norm, Workspace ws, ModelConfig c)
    {
        (_linear, _norm, _residual, _normed, _ranks) = (linear, norm, ws.Residual, ws.Normed, 1);
        (_hidden, _eps) = (c.HiddenSize, (float)c.RmsNormEps);
    }

    /// <summary>Rank <paramref name="rank"/>'s side; <see cref="Connect"/> every rank's before the first step.</summary>
    public ResidualSum(LinearOps linear, NormOps norm, Workspace ws, RankShape shape, int rank, NcclCommunicator comm, AllReduceOps? oneShot)
        : this(linear, norm, ws, shape.Config)
    {
        (_rank, _ranks, _comm, _oneShot, _logitsWidth) = (rank, shape.Ranks, comm, oneShot, shape.LmHeadRows);
        try
        {
            _gathered = DeviceBuffer.Allocate(4L * _ranks * ws.LogitRows * _logitsWidth);
            if (oneShot is null) return;
            _partialStride = 4L * Math.Min(ws.MaxRows, OneShotMaxRows) * _hidden;
            _partials = DeviceBuffer.Allocate(2 * _partialStride);
            _signal = DeviceBuffer.Allocate(AllReduceOps.SignalBytes);
            _signal.Memset32(0);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Device bytes one rank's sum needs besides the workspace (the planner counts them).</summary>
    public static long DeviceBytes(RankShape shape, int maxRows, int logitRows) => !shape.IsSharded ? 0 :
        4L * shape.Ranks * logitRows * shape.LmHeadRows + 2 * 4L * Math.Min(maxRows, OneShotMaxRows) * shape.Config.HiddenSize + AllReduceOps.SignalBytes;

    /// <summary>fp32 [ranks, rows, lm_head_rows]: every rank's logits of the last <see cref="GatherLogits"/>.</summary>
    public ulong GatheredLogits => _gathered?.Ptr ?? 0;

    /// <summary>Copies the first destination.Length floats of <see cref="GatheredLogits"/> to the host (after a synchronize).</summary>
    public void CopyGatheredLogits(Span<float> destination) => _gathered!.CopyToHost(destination);

    public bool UsesOneShot(int rows) => _oneShot is not null && rows <= OneShotMaxRows;

    /// <summary>Gives every rank the addresses of every rank's partial buffers and flags (peer access must be on).</summary>
    public static unsafe void Connect(IReadOnlyList<ResidualSum> ranks)
    {
        if (ranks.Any(r => r._oneShot is null)) return;
        var peers = new AllReduceOps.PeerPointers[2];
        for (int slot = 0; slot < 2; slot++)
            for (int p = 0; p < ranks.Count; p++)
            {
                peers[slot].Partial[p] = ranks[p]._partials!.Ptr + (ulong)(slot * ranks[p]._partialStride);
                peers[slot].Flags[p] = ranks[p]._signal!.Ptr;
            }
        foreach (var r in ranks) r._peers = peers;
    }

    /// <summary>
    /// x [rows, hidden] += <paramref name="w"/> · <paramref name="input"/> over every rank's share of the product, then
    /// Normed [rows, hidden] = bf16(x / rms(x) · <paramref name="normWeight"/>), the input of the next product.
    /// <paramref name="slot"/>: <see cref="Attention"/> or <see cref="Mlp"/>.
    /// </summary>
    public void AddProductThenNorm(CudaStream s, LinearWeight w, LinearInput input, int rows, int slot, ulong normWeight)
    {
        if (UsesOneShot(rows))
        {
            AllReduceOps.PeerPointers peers = _peers[slot];
            ulong partial;
            unsafe { partial = peers.Partial[_rank]; }
            _linear.Apply(s, w, input, partial, rows);
            // The sum and the norm in one kernel: no launch gap between them.
            _oneShot!.AllReduceAddRmsNorm(s, peers, _rank, _ranks, _signal!.Ptr, _residual, normWeight, _normed, rows, _hidden, _eps);
            return;
        }
        if (_ranks == 1)
        {
            _linear.Apply(s, w, input, _residual, rows, accumulate: true);
        }
        else
        {
            _linear.Apply(s, w, input, _residual, rows, accumulate: _rank == 0);
            _comm!.AllReduce(_residual, _residual, (long)rows * _hidden, NcclDataType.Float32, NcclRedOp.Sum, s.Handle);
        }
        _norm.ResidualAddRmsNorm(s, _residual, 0, normWeight, _normed, rows, _hidden, _eps);
    }

    /// <summary>Every rank's logits [rows, lm_head_rows] → <see cref="GatheredLogits"/> [ranks, rows, lm_head_rows] on every rank.</summary>
    public void GatherLogits(CudaStream s, ulong logits, int rows)
    {
        if (_ranks == 1) return;
        _comm!.AllGather(logits, _gathered!.Ptr, (long)rows * _logitsWidth, NcclDataType.Float32, s.Handle);
    }

    /// <summary>
    /// One all-reduce of <paramref name="rows"/> rows into a scratch <paramref name="residual"/>, for warm-up and timing.
    /// One-shot calls must alternate their partial buffers like a forward pass does (attention, MLP): make them in pairs,
    /// <paramref name="slot"/> <see cref="Attention"/> then <see cref="Mlp"/>, so the next step's first call alternates too.
    /// </summary>
    internal void AllReduceOnly(CudaStream s, ulong residual, int rows, bool oneShot, int slot)
    {
        long count = (long)rows * _hidden;
        if (oneShot && UsesOneShot(rows)) _oneShot!.AllReduceAdd(s, _peers[slot], _rank, _ranks, _signal!.Ptr, residual, count);
        else _comm!.AllReduce(residual, residual, count, NcclDataType.Float32, NcclRedOp.Sum, s.Handle);
    }

    public void Dispose()
    {
        _gathered?.Dispose();
        _partials?.Dispose();
        _signal?.Dispose();
    }
}

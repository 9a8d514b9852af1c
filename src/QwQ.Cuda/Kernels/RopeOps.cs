using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Attention input preparation (kernels/rope.cu): QKV bias + RoPE (HF rotate_half), with K and V written to the
/// layer's paged KV pool. Layouts (docs/CONTRACTS.md, docs/ENGINE_V2.md): qkv fp32 [rows, (nq+2*nkv)*D] (q, k, v
/// heads), q out bf16 [rows, nq, D], K and V pools bf16 [blocks, nkv, 64, D].
/// </summary>
internal sealed class RopeOps
{
    [KernelEntry] public const string QkvBiasRopePagedEntry = "qkv_bias_rope_paged_f32_bf16";

    private readonly CudaKernel _qkvBiasRopePaged;

    public RopeOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _qkvBiasRopePaged = lib.GetKernel(QkvBiasRopePagedEntry);
    }

    /// <summary>
    /// A batch of rows from many sequences (docs/ENGINE_V2.md): x = qkv + bias; q and k heads rotated with
    /// angle = pos * invFreq[i] (cos/sin scaled by <paramref name="attentionFactor"/>), where row t sits at position
    /// <paramref name="positions"/>[t] (int32 [rows], device); q → <paramref name="qOut"/> bf16 [rows, nq, D]; k and v
    /// → pool slot <paramref name="slots"/>[t] (block * 64 + offset; −1: a padding row that writes nothing) of this
    /// layer's <paramref name="kPool"/> / <paramref name="vPool"/> bf16 [blocks, nkv, 64, D].
    /// <paramref name="bias"/> bf16 [(nq+2*nkv)*D], <paramref name="invFreq"/> fp32 [D/2]. Every per-row input is
    /// read on the device: graph-capture safe.
    /// </summary>
    public unsafe void QkvBiasRopePaged(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        ulong positions, ulong slots, int rows, int nq, int nkv, int headDim, ulong qOut, ulong kPool, ulong vPool)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(qkv, 4, nameof(qkv));
        LaunchChecks.Aligned(bias, 2, nameof(bias));
        LaunchChecks.Aligned(invFreq, 4, nameof(invFreq));
        LaunchChecks.Aligned(qOut, 2, nameof(qOut));
        LaunchChecks.Aligned(kPool, 2, nameof(kPool));
        LaunchChecks.Aligned(vPool, 2, nameof(vPool));
        LaunchChecks.Positive(nq, nameof(nq));
        LaunchChecks.Positive(nkv, nameof(nkv));
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"headDim must be positive and even (got {headDim}).", nameof(headDim));
        if (nq % nkv != 0) throw new ArgumentException($"nq ({nq}) must be a multiple of nkv ({nkv}).", nameof(nq));
        if (nq + 2L * nkv > 65535) throw new ArgumentException($"nq + 2*nkv ({nq + 2L * nkv}) exceeds the grid's y limit 65535.", nameof(nq));
        if (!float.IsFinite(attentionFactor)) throw new ArgumentException($"attentionFactor must be finite (got {attentionFactor}).", nameof(attentionFactor));
        LaunchChecks.Positive(rows, nameof(rows));
        LaunchChecks.Aligned(positions, 4, nameof(positions));
        LaunchChecks.Aligned(slots, 4, nameof(slots));
        uint threads = LaunchChecks.WarpMultiple(headDim / 2, 256);
        void** args = stackalloc void*[]
        {
            &qkv, &bias, &invFreq, &attentionFactor, &positions, &slots, &nq, &nkv, &headDim, &qOut, &kPool, &vPool,
        };
        _qkvBiasRopePaged.Launch(new Dim3((uint)rows, (uint)(nq + 2 * nkv)), new Dim3(threads), 0, s, args);
    }
}

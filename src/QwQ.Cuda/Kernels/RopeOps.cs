using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Attention input preparation (kernels/rope.cu): QKV bias + RoPE (HF rotate_half) + append of K/V to the layer's
/// cache, and a plain K/V append. Layouts (docs/CONTRACTS.md): qkv fp32 [tokens, (nq+2*nkv)*D] (q, k, v heads),
/// q out bf16 [tokens, nq, D], caches bf16 [nkv, maxCtx, D].
/// </summary>
internal sealed class RopeOps
{
    [KernelEntry] public const string QkvBiasRopeAppendEntry = "qkv_bias_rope_append_f32_bf16";
    [KernelEntry] public const string KvAppendEntry = "kv_append_bf16";
    [KernelEntry] public const string QkvBiasRopePagedEntry = "qkv_bias_rope_paged_f32_bf16";

    private readonly CudaKernel _qkvBiasRopePaged;
    private readonly CudaKernel _qkvBiasRopeAppend, _kvAppend;

    public RopeOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _qkvBiasRopeAppend = lib.GetKernel(QkvBiasRopeAppendEntry);
        _qkvBiasRopePaged = lib.GetKernel(QkvBiasRopePagedEntry);
        _kvAppend = lib.GetKernel(KvAppendEntry);
    }

    /// <summary>
    /// Tokens t at positions <paramref name="startPos"/> + t: x = qkv + bias; q and k heads rotated with
    /// angle = pos * invFreq[i] (cos/sin scaled by <paramref name="attentionFactor"/>); q → <paramref name="qOut"/>,
    /// k and v → the caches at their positions. <paramref name="bias"/> bf16 [(nq+2*nkv)*D],
    /// <paramref name="invFreq"/> fp32 [D/2].
    /// </summary>
    public void QkvBiasRopeAppend(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        int startPos, int tokens, int nq, int nkv, int headDim, ulong qOut, ulong kCache, ulong vCache, int maxCtx)
    {
        LaunchChecks.NonNegative(startPos, nameof(startPos));
        LaunchChecks.Positive(tokens, nameof(tokens));
        if ((long)startPos + tokens > maxCtx)
            throw new ArgumentException($"startPos ({startPos}) + tokens ({tokens}) exceeds maxCtx ({maxCtx}).", nameof(startPos));
        Launch(s, qkv, bias, invFreq, attentionFactor, startPos, 0, tokens, nq, nkv, headDim, qOut, kCache, vCache, maxCtx);
    }

    /// <summary>
    /// As <see cref="QkvBiasRopeAppend"/>, but the start position is the int32 at device address
    /// <paramref name="positionPtr"/>, read by the kernel: a decode step captured once in a CUDA graph replays with
    /// the position updated in device memory. The kernel cannot be checked from the host, so a position outside
    /// [0, maxCtx - tokens] writes nothing to the caches and NaN to q.
    /// </summary>
    public void QkvBiasRopeAppendAt(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        ulong positionPtr, int nq, int nkv, int headDim, ulong qOut, ulong kCache, ulong vCache, int maxCtx, int tokens = 1)
    {
        LaunchChecks.Aligned(positionPtr, 4, nameof(positionPtr));
        LaunchChecks.Positive(tokens, nameof(tokens));
        Launch(s, qkv, bias, invFreq, attentionFactor, 0, positionPtr, tokens, nq, nkv, headDim, qOut, kCache, vCache, maxCtx);
    }

    /// <summary>
    /// Paged form over a batch of rows from many sequences (docs/ENGINE_V2.md): row t at position
    /// <paramref name="positions"/>[t] (int32 [rows], device) writes its k and v to pool slot
    /// <paramref name="slots"/>[t] (block * 64 + offset; −1: a padding row that writes nothing) of this layer's
    /// <paramref name="kPool"/> / <paramref name="vPool"/> bf16 [blocks, nkv, 64, D]; q → <paramref name="qOut"/>
    /// bf16 [rows, nq, D]. Every per-row input is read on the device: graph-capture safe.
    /// </summary>
    public unsafe void QkvBiasRopePaged(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        ulong positions, ulong slots, int rows, int nq, int nkv, int headDim, ulong qOut, ulong kPool, ulong vPool)
    {
        CheckShape(s, qkv, bias, invFreq, attentionFactor, nq, nkv, headDim, qOut, kPool, vPool);
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

    private unsafe void Launch(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor, int startPos,
        ulong positionPtr, int tokens, int nq, int nkv, int headDim, ulong qOut, ulong kCache, ulong vCache, int maxCtx)
    {
        CheckShape(s, qkv, bias, invFreq, attentionFactor, nq, nkv, headDim, qOut, kCache, vCache);
        LaunchChecks.Positive(maxCtx, nameof(maxCtx));
        uint threads = LaunchChecks.WarpMultiple(headDim / 2, 256);
        void** args = stackalloc void*[]
        {
            &qkv, &bias, &invFreq, &attentionFactor, &startPos, &positionPtr, &nq, &nkv, &headDim, &qOut, &kCache, &vCache, &maxCtx,
        };
        _qkvBiasRopeAppend.Launch(new Dim3((uint)tokens, (uint)(nq + 2 * nkv)), new Dim3(threads), 0, s, args);
    }

    private static void CheckShape(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        int nq, int nkv, int headDim, ulong qOut, ulong kCache, ulong vCache)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(qkv, 4, nameof(qkv));
        LaunchChecks.Aligned(bias, 2, nameof(bias));
        LaunchChecks.Aligned(invFreq, 4, nameof(invFreq));
        LaunchChecks.Aligned(qOut, 2, nameof(qOut));
        LaunchChecks.Aligned(kCache, 2, nameof(kCache));
        LaunchChecks.Aligned(vCache, 2, nameof(vCache));
        LaunchChecks.Positive(nq, nameof(nq));
        LaunchChecks.Positive(nkv, nameof(nkv));
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"headDim must be positive and even (got {headDim}).", nameof(headDim));
        if (nq % nkv != 0) throw new ArgumentException($"nq ({nq}) must be a multiple of nkv ({nkv}).", nameof(nq));
        if (nq + 2L * nkv > 65535) throw new ArgumentException($"nq + 2*nkv ({nq + 2L * nkv}) exceeds the grid's y limit 65535.", nameof(nq));
        if (!float.IsFinite(attentionFactor)) throw new ArgumentException($"attentionFactor must be finite (got {attentionFactor}).", nameof(attentionFactor));
    }

    /// <summary>
    /// Copies <paramref name="k"/> and <paramref name="v"/> bf16 [tokens, nkv, D] into the caches bf16
    /// [nkv, maxCtx, D] at positions <paramref name="startPos"/> + t.
    /// </summary>
    public unsafe void KvAppend(CudaStream s, ulong k, ulong v, ulong kCache, ulong vCache, int startPos, int tokens,
        int nkv, int headDim, int maxCtx)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(k, 2, nameof(k));
        LaunchChecks.Aligned(v, 2, nameof(v));
        LaunchChecks.Aligned(kCache, 2, nameof(kCache));
        LaunchChecks.Aligned(vCache, 2, nameof(vCache));
        LaunchChecks.NonNegative(startPos, nameof(startPos));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(nkv, nameof(nkv));
        LaunchChecks.Positive(headDim, nameof(headDim));
        LaunchChecks.Positive(maxCtx, nameof(maxCtx));
        if ((long)startPos + tokens > maxCtx)
            throw new ArgumentException($"startPos ({startPos}) + tokens ({tokens}) exceeds maxCtx ({maxCtx}).", nameof(startPos));
        if (nkv > 65535) throw new ArgumentException($"nkv ({nkv}) exceeds the grid's y limit 65535.", nameof(nkv));
        uint threads = LaunchChecks.WarpMultiple(headDim % 8 == 0 ? headDim / 8 : headDim, 256);
        void** args = stackalloc void*[] { &k, &v, &kCache, &vCache, &startPos, &nkv, &headDim, &maxCtx };
        _kvAppend.Launch(new Dim3((uint)tokens, (uint)nkv), new Dim3(threads), 0, s, args);
    }
}

using QwQ.Cuda.Engine;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Attention input preparation (kernels/rope.cu): QKV bias + RoPE (HF rotate_half), with K and V written to the
/// layer's paged KV pool. Layouts (docs/CONTRACTS.md, docs/ENGINE_V2.md): qkv fp32 [rows, (nq+2*nkv)*D] (q, k, v
/// heads), q out bf16 [rows, nq, D], K and V pools bf16 [blocks, nkv, 64, D], or for the fp8 cache e4m3 codes
/// [blocks, nkv, 64, D] and one fp32 scale per slot and head [blocks, nkv, 64] (<see cref="KvLayer"/>, docs/KV_CACHE.md).
/// </summary>
internal sealed class RopeOps
{
    [KernelEntry] public const string QkvBiasRopePagedEntry = "qkv_bias_rope_paged_f32_bf16";
    [KernelEntry] public const string QkvBiasRopePagedFp8Entry = "qkv_bias_rope_paged_f32_fp8";
    [KernelEntry] public const string QkvBf16BiasRopePagedEntry = "qkv_bias_rope_paged_bf16_bf16";
    [KernelEntry] public const string QkvBf16BiasRopePagedFp8Entry = "qkv_bias_rope_paged_bf16_fp8";
    [KernelEntry] public const string QkvBf16BiasRopePagedVectorEntry = "qkv_bias_rope_paged_bf16_bf16_v8";
    [KernelEntry] public const string KvRerotatePagedEntry = "kv_rerotate_paged_bf16";
    [KernelEntry] public const string KvRerotatePagedFp8Entry = "kv_rerotate_paged_fp8";

    /// <summary>The largest head_dim <see cref="RerotateKeys"/> takes: one KV block's coefficients in 32 KB of shared memory.</summary>
    public const int MaxRerotateHeadDim = 128;

    /// <summary>Layers one block of the re-rotation kernels takes (kernels/rope.cu, RR_LAYERS).</summary>
    private const int RerotateLayersPerBlock = 8;

    /// <summary>
    /// The largest head_dim of the fp8 variant: one thread per pair of a head (256 per block), which keeps the pair in
    /// registers across the head's max-reduction.
    /// </summary>
    public const int MaxFp8HeadDim = 512;

    private readonly CudaKernel _qkvBiasRopePaged, _qkvBiasRopePagedFp8, _qkvBf16BiasRopePaged, _qkvBf16BiasRopePagedFp8,
        _qkvBf16BiasRopePagedVector, _kvRerotatePaged, _kvRerotatePagedFp8;

    public RopeOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _qkvBiasRopePaged = lib.GetKernel(QkvBiasRopePagedEntry);
        _qkvBiasRopePagedFp8 = lib.GetKernel(QkvBiasRopePagedFp8Entry);
        _qkvBf16BiasRopePaged = lib.GetKernel(QkvBf16BiasRopePagedEntry);
        _qkvBf16BiasRopePagedFp8 = lib.GetKernel(QkvBf16BiasRopePagedFp8Entry);
        _qkvBf16BiasRopePagedVector = lib.GetKernel(QkvBf16BiasRopePagedVectorEntry);
        _kvRerotatePaged = lib.GetKernel(KvRerotatePagedEntry);
        _kvRerotatePagedFp8 = lib.GetKernel(KvRerotatePagedFp8Entry);
    }

    /// <summary>
    /// Turns the cached keys of one sequence, positions 0 .. <paramref name="positions"/>−1 of every layer, from the rope
    /// (<paramref name="invFrom"/>, <paramref name="factorFrom"/>) into the keys (<paramref name="invTo"/>,
    /// <paramref name="factorTo"/>) would have written: per pair a rotation by the angle difference and the factors' ratio
    /// (<see cref="Model.AdaptiveYarn"/>); the fp8 cache decodes, turns and quantizes each key again with a new scale.
    /// <paramref name="layer0"/>: the pool's first layer (<see cref="Engine.KvPool.Layer"/>), the others
    /// <paramref name="layerBytes"/> apart; <paramref name="blockTable"/> int32 [ceil(positions / 64)] on the device, the
    /// sequence's blocks (which must be its own: shared blocks are copied first). inv_freq fp32 [D/2] on the device.
    /// </summary>
    public unsafe void RerotateKeys(CudaStream s, KvLayer layer0, long layerBytes, int layers, ulong blockTable, int positions,
        int nkv, int headDim, ulong invFrom, float factorFrom, ulong invTo, float factorTo)
    {
        LaunchChecks.Stream(s, nameof(s));
        layer0.Check();
        LaunchChecks.Aligned(blockTable, 4, nameof(blockTable));
        LaunchChecks.Aligned(invFrom, 4, nameof(invFrom));
        LaunchChecks.Aligned(invTo, 4, nameof(invTo));
        LaunchChecks.Positive(positions, nameof(positions));
        LaunchChecks.Positive(layers, nameof(layers));
        LaunchChecks.Positive(nkv, nameof(nkv));
        if (headDim < 2 || headDim % 2 != 0 || headDim > MaxRerotateHeadDim)
            throw new ArgumentException($"head_dim must be even and at most {MaxRerotateHeadDim} (got {headDim}).", nameof(headDim));
        if (layer0.Kind != KvCacheKind.Fp8 && headDim % 8 != 0)
            throw new ArgumentException($"the bf16 re-rotation takes 4 pairs at a time: head_dim must be a multiple of 8 (got {headDim}).", nameof(headDim));
        if (!(factorFrom > 0) || !(factorTo > 0)) throw new ArgumentException("attention factors must be positive");
        // a block per (KV block, RerotateLayersPerBlock layers)
        var grid = new Dim3((uint)((positions + AttentionOps.KvBlockSize - 1) / AttentionOps.KvBlockSize),
            (uint)((layers + RerotateLayersPerBlock - 1) / RerotateLayersPerBlock));
        if (layer0.Kind == KvCacheKind.Fp8)
        {
            ulong codes = layer0.K, scales = layer0.KScales;
            void** args = stackalloc void*[] { &codes, &scales, &layerBytes, &layers, &blockTable, &positions, &nkv, &headDim, &invFrom, &factorFrom, &invTo, &factorTo };
            _kvRerotatePagedFp8.Launch(grid, new Dim3(256), 0, s, args);
        }
        else
        {
            ulong k = layer0.K;
            void** args = stackalloc void*[] { &k, &layerBytes, &layers, &blockTable, &positions, &nkv, &headDim, &invFrom, &factorFrom, &invTo, &factorTo };
            _kvRerotatePaged.Launch(grid, new Dim3(256), 0, s, args);
        }
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
    public void QkvBiasRopePaged(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        ulong positions, ulong slots, int rows, int nq, int nkv, int headDim, ulong qOut, ulong kPool, ulong vPool,
        int headsPerBlock = 0) =>
        QkvBiasRopePaged(s, qkv, bias, invFreq, attentionFactor, positions, slots, rows, nq, nkv, headDim, qOut, KvLayer.Bf16(kPool, vPool),
            headsPerBlock);

    /// <summary>
    /// Heads one block takes (both entries): every head of its row once a step has enough rows to fill the GPU
    /// (a prefill chunk: one block per row, the angles computed once per pair), 4 for decode-sized steps (as many
    /// blocks per row as there are groups of 4 heads, so a batch of one still spreads over the multiprocessors).
    /// </summary>
    internal static int HeadsPerBlock(int rows, int heads) => rows >= 512 ? heads : Math.Min(4, heads);

    /// <summary>
    /// <see cref="QkvBiasRopePaged(CudaStream, ulong, ulong, ulong, float, ulong, ulong, int, int, int, int, ulong, ulong, ulong, int)"/>
    /// into one layer of a bf16 or fp8 pool. fp8: each K and V head of a row is quantized from its fp32 values after bias
    /// and RoPE, with one scale amax / 448 (<see cref="Model.KvCacheFp8.Quantize"/> bit for bit); head_dim at most
    /// <see cref="MaxFp8HeadDim"/>. <paramref name="headsPerBlock"/>: the heads of a row one block takes, 0 for
    /// <see cref="HeadsPerBlock"/>'s choice (tests set it to cover every split). <paramref name="ropeRows"/> (adaptive rope
    /// scaling): int32 [rows] on the device, 1 where a row runs the other rope (<paramref name="invFreqAlt"/>,
    /// <paramref name="factorAlt"/>), 0 where it runs (<paramref name="invFreq"/>, <paramref name="attentionFactor"/>); 0
    /// (null): every row the first. One launch for a step whose sequences sit on both sides of the switch.
    /// <paramref name="qkvBf16"/>: <paramref name="qkv"/> is bf16 [rows, (nq+2*nkv)*D] (a prefill chunk's product on any GEMM,
    /// <see cref="Engine.LinearOps.TryApplyBf16Out"/>), not fp32; the bias and RoPE still run in fp32. With the bf16 pool
    /// that runs the vectorised entry where <see cref="Vectorises"/> says so (<paramref name="vectorised"/> false: the
    /// scalar one always, for tests).
    /// </summary>
    public unsafe void QkvBiasRopePaged(CudaStream s, ulong qkv, ulong bias, ulong invFreq, float attentionFactor,
        ulong positions, ulong slots, int rows, int nq, int nkv, int headDim, ulong qOut, KvLayer kv, int headsPerBlock = 0,
        ulong invFreqAlt = 0, float factorAlt = 1f, ulong ropeRows = 0, bool qkvBf16 = false, bool vectorised = true)
    {
        if (ropeRows != 0)
        {
            LaunchChecks.Aligned(ropeRows, 4, nameof(ropeRows));
            LaunchChecks.Aligned(invFreqAlt, 4, nameof(invFreqAlt));
            if (invFreqAlt == 0) throw new ArgumentException("per-row ropes need the second rope's inv_freq", nameof(invFreqAlt));
            if (!float.IsFinite(factorAlt)) throw new ArgumentException($"factorAlt must be finite (got {factorAlt}).", nameof(factorAlt));
        }
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(qkv, qkvBf16 ? 2 : 4, nameof(qkv));
        LaunchChecks.Aligned(bias, 2, nameof(bias));
        LaunchChecks.Aligned(invFreq, 4, nameof(invFreq));
        LaunchChecks.Aligned(qOut, 2, nameof(qOut));
        bool fp8 = kv.Kind == KvCacheKind.Fp8;
        if (!fp8 && kv.Kind != KvCacheKind.Bf16) throw new ArgumentOutOfRangeException(nameof(kv), kv.Kind, "bf16 or fp8");
        // bf16 elements, or fp8 codes (bytes) with fp32 scales
        LaunchChecks.Aligned(kv.K, fp8 ? 1 : 2, "kPool");
        LaunchChecks.Aligned(kv.V, fp8 ? 1 : 2, "vPool");
        if (fp8)
        {
            LaunchChecks.Aligned(kv.KScales, 4, "kScales");
            LaunchChecks.Aligned(kv.VScales, 4, "vScales");
            if (headDim > MaxFp8HeadDim) throw new ArgumentException($"the fp8 KV cache takes head_dim up to {MaxFp8HeadDim} (got {headDim}).", nameof(headDim));
        }
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
        int heads = nq + 2 * nkv;
        if (headsPerBlock < 0 || headsPerBlock > heads)
            throw new ArgumentOutOfRangeException(nameof(headsPerBlock), headsPerBlock, $"0 (automatic) or 1 .. {heads} (nq + 2*nkv)");
        if (headsPerBlock == 0) headsPerBlock = HeadsPerBlock(rows, heads);
        ulong kPool = kv.K, vPool = kv.V, kScales = kv.KScales, vScales = kv.VScales;
        // 4 head slots of `threads` lanes, heads_per_block heads of a row per block (kernels/rope.cu)
        var grid = new Dim3((uint)rows, (uint)((heads + headsPerBlock - 1) / headsPerBlock));
        if (fp8)
        {
            void** args = stackalloc void*[]
            {
                &qkv, &bias, &invFreq, &attentionFactor, &invFreqAlt, &factorAlt, &ropeRows, &positions, &slots, &nq, &nkv, &headDim, &headsPerBlock, &qOut, &kPool, &vPool, &kScales, &vScales,
            };
            (qkvBf16 ? _qkvBf16BiasRopePagedFp8 : _qkvBiasRopePagedFp8).Launch(grid, new Dim3(4 * threads), 0, s, args);
        }
        else
        {
            void** args = stackalloc void*[]
            {
                &qkv, &bias, &invFreq, &attentionFactor, &invFreqAlt, &factorAlt, &ropeRows, &positions, &slots, &nq, &nkv, &headDim, &headsPerBlock, &qOut, &kPool, &vPool,
            };
            if (qkvBf16 && vectorised && Vectorises(headDim, qkv, bias, qOut, kPool, vPool))
            {
                // heads_per_block heads of D/16 threads (8 pairs each), in whole warps
                uint vectorThreads = (uint)Math.Min(1024, (headsPerBlock * (headDim / 16) + 31) / 32 * 32);
                _qkvBf16BiasRopePagedVector.Launch(grid, new Dim3(vectorThreads), 0, s, args);
            }
            else
                (qkvBf16 ? _qkvBf16BiasRopePaged : _qkvBiasRopePaged).Launch(grid, new Dim3(4 * threads), 0, s, args);
        }
    }

    /// <summary>
    /// Whether a bf16 product can run the vectorised entry (kernels/rope.cu, <c>qkv_bias_rope_paged_bf16_bf16_v8</c>):
    /// 8 pairs a thread in 16-byte loads and stores, so head_dim a multiple of 16 (at most 512, its shared cos/sin) and
    /// every row of qkv, bias, q and the pools on a 16-byte boundary.
    /// </summary>
    internal static bool Vectorises(int headDim, params ReadOnlySpan<ulong> pointers)
    {
        if (headDim % 16 != 0 || headDim > 512) return false;
        foreach (ulong p in pointers)
            if (p % 16 != 0) return false;
        return true;
    }
}

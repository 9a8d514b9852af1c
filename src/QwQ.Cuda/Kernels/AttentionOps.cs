using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Causal GQA attention over the KV cache (kernels/attention_prefill.cu, kernels/attention_decode.cu).
/// Layouts (docs/CONTRACTS.md): q bf16 [tokens, nq, D]; per-layer K and V bf16 [nkv, maxCtx, D]; output bf16
/// [tokens, nq, D]. Supported head_dim: 32, 64, 128.
/// <list type="bullet">
/// <item><see cref="Prefill"/>: flash-attention on tensor cores for any tokens ≥ 1 on top of startPos cached
/// positions (chunked prefill); the K/V of the new tokens must already be in the cache.</item>
/// <item><see cref="DecodeDevice"/>: one token, split across blocks (flash-decoding) and merged by a second
/// kernel. The context length is read on the device and the grid depends only on maxCtx, so the call can be
/// captured once into a CUDA graph and replayed while the context grows.</item>
/// </list>
/// </summary>
internal sealed class AttentionOps
{
    [KernelEntry] public const string PrefillD32 = "attention_prefill_bf16_d32";
    [KernelEntry] public const string PrefillD64 = "attention_prefill_bf16_d64";
    [KernelEntry] public const string PrefillD128 = "attention_prefill_bf16_d128";
    [KernelEntry] public const string DecodeSplitD32 = "attention_decode_split_bf16_d32";
    [KernelEntry] public const string DecodeSplitD64 = "attention_decode_split_bf16_d64";
    [KernelEntry] public const string DecodeSplitD128 = "attention_decode_split_bf16_d128";
    [KernelEntry] public const string DecodeCombine = "attention_decode_combine_bf16";
    [KernelEntry] public const string PrefillPagedD32 = "attention_prefill_paged_bf16_d32";
    [KernelEntry] public const string PrefillPagedD64 = "attention_prefill_paged_bf16_d64";
    [KernelEntry] public const string PrefillPagedD128 = "attention_prefill_paged_bf16_d128";
    [KernelEntry] public const string DecodePagedD32 = "attention_decode_paged_bf16_d32";
    [KernelEntry] public const string DecodePagedD64 = "attention_decode_paged_bf16_d64";
    [KernelEntry] public const string DecodePagedD128 = "attention_decode_paged_bf16_d128";

    /// <summary>Positions per block of the paged KV pool: one key tile of both kernels (docs/ENGINE_V2.md).</summary>
    public const int KvBlockSize = KeyTile;

    // Must match kernels/attention_prefill.cu: 8 warps x 16 query rows per block, 64-key tiles, 2 stages.
    private const int PrefillWarps = 8;
    private const int PrefillRowsPerBlock = 16 * PrefillWarps;
    private const int PrefillStages = 2;
    // Must match kernels/attention_decode.cu: 4 warps, 64-key tiles, 3-stage ring.
    private const int DecodeThreads = 128;
    private const int DecodeStages = 3;
    private const int KeyTile = 64;
    /// <summary>Most query heads per KV head the decode kernel handles (one m16 tensor-core tile of rows).</summary>
    public const int MaxDecodeGroup = 16;
    /// <summary>Upper bound on decode splits, whatever the GPU (keeps the combine loop and workspace small).</summary>
    public const int MaxDecodeSplits = 256;
    /// <summary>Bytes at the end of the decode workspace reserved for the context length used by <see cref="Decode"/>.</summary>
    private const int CtxSlotBytes = 16;

    private readonly CudaKernel _prefill32, _prefill64, _prefill128;
    private readonly CudaKernel _split32, _split64, _split128, _combine;
    private readonly CudaKernel _prefillPaged32, _prefillPaged64, _prefillPaged128, _decodePaged32, _decodePaged64, _decodePaged128;
    private readonly int _multiprocessors;

    public AttentionOps(PtxLibrary lib, int multiprocessorCount)
    {
        ArgumentNullException.ThrowIfNull(lib);
        ArgumentOutOfRangeException.ThrowIfLessThan(multiprocessorCount, 1);
        _multiprocessors = multiprocessorCount;
        _prefill32 = lib.GetKernel(PrefillD32);
        _prefill64 = lib.GetKernel(PrefillD64);
        _prefill128 = lib.GetKernel(PrefillD128);
        _split32 = lib.GetKernel(DecodeSplitD32);
        _split64 = lib.GetKernel(DecodeSplitD64);
        _split128 = lib.GetKernel(DecodeSplitD128);
        _combine = lib.GetKernel(DecodeCombine);
        _prefillPaged32 = lib.GetKernel(PrefillPagedD32);
        _prefillPaged64 = lib.GetKernel(PrefillPagedD64);
        _prefillPaged128 = lib.GetKernel(PrefillPagedD128);
        _decodePaged32 = lib.GetKernel(DecodePagedD32);
        _decodePaged64 = lib.GetKernel(DecodePagedD64);
        _decodePaged128 = lib.GetKernel(DecodePagedD128);
        // Opt in once to the dynamic shared memory each variant uses (needed above 48 KiB).
        _prefill32.SetMaxDynamicSharedMemory(PrefillSmemBytes(32));
        _prefill64.SetMaxDynamicSharedMemory(PrefillSmemBytes(64));
        _prefill128.SetMaxDynamicSharedMemory(PrefillSmemBytes(128));
        _split32.SetMaxDynamicSharedMemory(DecodeSmemBytes(32));
        _split64.SetMaxDynamicSharedMemory(DecodeSmemBytes(64));
        _split128.SetMaxDynamicSharedMemory(DecodeSmemBytes(128));
        _prefillPaged32.SetMaxDynamicSharedMemory(PrefillSmemBytes(32));
        _prefillPaged64.SetMaxDynamicSharedMemory(PrefillSmemBytes(64));
        _prefillPaged128.SetMaxDynamicSharedMemory(PrefillSmemBytes(128));
        _decodePaged32.SetMaxDynamicSharedMemory(DecodeSmemBytes(32));
        _decodePaged64.SetMaxDynamicSharedMemory(DecodeSmemBytes(64));
        _decodePaged128.SetMaxDynamicSharedMemory(DecodeSmemBytes(128));
    }

    /// <summary>Shared memory of the prefill kernel: 2 stages of K and V tiles, rows padded by 16 bytes.</summary>
    internal static int PrefillSmemBytes(int headDim) => PrefillStages * 2 * KeyTile * (headDim + 8) * 2;

    /// <summary>Shared memory of the decode split kernel: the 3-stage K/V ring, or the cross-warp merge if larger.</summary>
    internal static int DecodeSmemBytes(int headDim)
    {
        int ring = DecodeStages * 2 * KeyTile * (headDim + 8) * 2;
        int merge = 4 * 16 * headDim * 4 + 4 * 16 * 2 * 4;
        return Math.Max(ring, merge);
    }

    /// <summary>Largest split count any launch for <paramref name="maxCtx"/> can use (sizes the workspace).</summary>
    internal static int MaxSplitsFor(int maxCtx) => Math.Clamp((maxCtx + KeyTile - 1) / KeyTile, 1, MaxDecodeSplits);

    /// <summary>
    /// Splits per KV head for a decode launch: about 4 blocks per SM over all KV heads (2 resident blocks per SM,
    /// 2 waves) once the context is long; the kernels themselves use fewer (down to 1) while the context is short.
    /// Depends on maxCtx only, so a captured graph stays valid as the context grows.
    /// </summary>
    internal int DecodeSplits(int nkv, int maxCtx)
    {
        int target = (4 * _multiprocessors + nkv - 1) / nkv;
        return Math.Clamp(target, 1, MaxSplitsFor(maxCtx));
    }

    /// <summary>
    /// Bytes of decode workspace for any launch with this shape: partial outputs fp32 [nq, splits, D], partial
    /// (max, sum) fp32 [nq, splits, 2], and a 16-byte slot holding the context length for <see cref="Decode"/>.
    /// </summary>
    public static long DecodeWorkspaceBytes(int nq, int headDim, int maxCtx)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nq, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCtx, 1);
        long splits = MaxSplitsFor(maxCtx);
        return PartialOutBytes(nq, splits, headDim) + 8L * nq * splits + CtxSlotBytes;
    }

    private static long PartialOutBytes(int nq, long splits, int headDim) => 4L * nq * splits * headDim;

    /// <summary>
    /// Causal attention for <paramref name="tokens"/> queries at positions startPos .. startPos+tokens-1 over cache
    /// positions 0 .. startPos+tokens-1. q: bf16 [tokens, nq, D]; kCache, vCache: bf16 [nkv, maxCtx, D];
    /// output: bf16 [tokens, nq, D].
    /// </summary>
    public unsafe void Prefill(CudaStream s, ulong q, ulong kCache, ulong vCache, ulong output, int tokens, int startPos,
        int nq, int nkv, int headDim, int maxCtx, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxCtx, scale);
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(startPos);
        if ((long)startPos + tokens > maxCtx)
            throw new ArgumentOutOfRangeException(nameof(tokens),
                $"startPos {startPos} + tokens {tokens} exceeds the cache capacity maxCtx {maxCtx}.");
        CheckPointers(q, kCache, vCache, output);

        CudaKernel k = headDim switch { 32 => _prefill32, 64 => _prefill64, _ => _prefill128 };
        uint mTiles = (uint)((tokens + PrefillRowsPerBlock - 1) / PrefillRowsPerBlock);
        int t = tokens, sp = startPos, hq = nq, hkv = nkv, mc = maxCtx;
        float sc = scale;
        void** args = stackalloc void*[] { &q, &kCache, &vCache, &output, &t, &sp, &hq, &hkv, &mc, &sc };
        k.Launch(new Dim3((uint)nq, mTiles), new Dim3(PrefillWarps * 32), PrefillSmemBytes(headDim), s, args);
    }

    /// <summary>
    /// Decode attention for one token (q: bf16 [1, nq, D]; output: bf16 [1, nq, D]) over cache positions
    /// 0 .. ctx_len-1, where ctx_len is the int32 at <paramref name="ctxLenDevice"/>, read when the kernels run.
    /// <paramref name="workspace"/> needs <see cref="DecodeWorkspaceBytes"/>(nq, headDim, maxCtx) bytes
    /// (8-byte aligned). The launch configuration depends only on the shape and maxCtx: graph-capture safe.
    /// </summary>
    public unsafe void DecodeDevice(CudaStream s, ulong q, ulong kCache, ulong vCache, ulong output, ulong workspace,
        ulong ctxLenDevice, int nq, int nkv, int headDim, int maxCtx, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxCtx, scale);
        if (nq / nkv > MaxDecodeGroup)
            throw new ArgumentException(
                $"Decode attention supports at most {MaxDecodeGroup} query heads per KV head; got nq {nq} / nkv {nkv} = {nq / nkv}.");
        CheckPointers(q, kCache, vCache, output);
        if (workspace == 0 || (workspace & 7) != 0)
            throw new ArgumentException($"Decode workspace pointer 0x{workspace:x} must be non-null and 8-byte aligned.", nameof(workspace));
        if (ctxLenDevice == 0 || (ctxLenDevice & 3) != 0)
            throw new ArgumentException($"ctx_len device pointer 0x{ctxLenDevice:x} must be non-null and 4-byte aligned.", nameof(ctxLenDevice));

        int splits = DecodeSplits(nkv, maxCtx);
        ulong partO = workspace;                                             // fp32 [nq, splits, D]
        ulong partMl = workspace + (ulong)PartialOutBytes(nq, splits, headDim); // fp32 [nq, splits, 2]
        int hq = nq, hkv = nkv, d = headDim, mc = maxCtx, ns = splits;
        float sc = scale;

        CudaKernel split = headDim switch { 32 => _split32, 64 => _split64, _ => _split128 };
        void** a1 = stackalloc void*[] { &q, &kCache, &vCache, &partO, &partMl, &output, &ctxLenDevice, &hq, &hkv, &mc, &ns, &sc };
        split.Launch(new Dim3((uint)splits, (uint)nkv), new Dim3(DecodeThreads), DecodeSmemBytes(headDim), s, a1);

        void** a2 = stackalloc void*[] { &partO, &partMl, &output, &ctxLenDevice, &hq, &d, &mc, &ns };
        _combine.Launch(new Dim3((uint)nq), new Dim3((uint)headDim), 0, s, a2);
    }

    /// <summary>
    /// Convenience for tests and one-off calls: stores <paramref name="ctxLen"/> in the workspace's context slot
    /// (a memset queued on <paramref name="s"/>) and runs <see cref="DecodeDevice"/> with it. Not for graphs:
    /// a captured memset would freeze the value.
    /// </summary>
    public void Decode(CudaStream s, ulong q, ulong kCache, ulong vCache, ulong output, ulong workspace, int ctxLen,
        int nq, int nkv, int headDim, int maxCtx, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxCtx, scale);
        if (ctxLen < 1 || ctxLen > maxCtx)
            throw new ArgumentOutOfRangeException(nameof(ctxLen), $"ctxLen {ctxLen} must be in 1..maxCtx ({maxCtx}).");
        if (workspace == 0 || (workspace & 7) != 0)
            throw new ArgumentException($"Decode workspace pointer 0x{workspace:x} must be non-null and 8-byte aligned.", nameof(workspace));
        ulong slot = workspace + (ulong)(DecodeWorkspaceBytes(nq, headDim, maxCtx) - CtxSlotBytes);
        CudaErrors.Check(CudaDriverApi.cuMemsetD32Async(slot, (uint)ctxLen, 1, s.Handle), "cuMemsetD32Async");
        DecodeDevice(s, q, kCache, vCache, output, workspace, slot, nq, nkv, headDim, maxCtx, scale);
    }

    /// <summary>
    /// Paged prefill over <paramref name="sequences"/> sequences in one launch (docs/ENGINE_V2.md).
    /// <paramref name="seqInfo"/> int32 [sequences, 4] = {first query row, query rows, cached positions before them, 0};
    /// <paramref name="blockTables"/> int32 [sequences, maxBlocks]; q and output bf16 [rows, nq, D];
    /// <paramref name="kPool"/>/<paramref name="vPool"/>: one layer of the pool, bf16 [blocks, nkv, 64, D], with every
    /// query row's own K/V already written. <paramref name="maxQueryRows"/> bounds every sequence's query rows.
    /// </summary>
    public unsafe void PrefillPaged(CudaStream s, ulong q, ulong kPool, ulong vPool, ulong output, ulong seqInfo,
        ulong blockTables, int sequences, int maxQueryRows, int maxBlocks, int nq, int nkv, int headDim, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxBlocks * KvBlockSize, scale);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequences, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxQueryRows, 1);
        CheckPointers(q, kPool, vPool, output);
        if (seqInfo == 0 || (seqInfo & 15) != 0) throw new ArgumentException("seqInfo must be non-null and 16-byte aligned.", nameof(seqInfo));
        if (blockTables == 0 || (blockTables & 3) != 0) throw new ArgumentException("blockTables must be non-null and 4-byte aligned.", nameof(blockTables));
        CudaKernel k = headDim switch { 32 => _prefillPaged32, 64 => _prefillPaged64, _ => _prefillPaged128 };
        uint mTiles = (uint)((maxQueryRows + PrefillRowsPerBlock - 1) / PrefillRowsPerBlock);
        int mb = maxBlocks, hq = nq, hkv = nkv;
        float sc = scale;
        void** args = stackalloc void*[] { &q, &kPool, &vPool, &output, &seqInfo, &blockTables, &mb, &hq, &hkv, &sc };
        k.Launch(new Dim3((uint)nq, mTiles, (uint)sequences), new Dim3(PrefillWarps * 32), PrefillSmemBytes(headDim), s, args);
    }

    /// <summary>
    /// Splits per KV head of a paged decode launch of <paramref name="batch"/> rows: about 4 blocks per SM over all
    /// rows and KV heads. Fixed by the batch and the table width, so a graph captured for a batch size stays valid.
    /// </summary>
    internal int DecodePagedSplits(int nkv, int batch, int maxBlocks) => DecodePagedSplits(_multiprocessors, nkv, batch, maxBlocks);

    private static int DecodePagedSplits(int multiprocessors, int nkv, int batch, int maxBlocks)
    {
        int target = (4 * multiprocessors + nkv * batch - 1) / (nkv * batch);
        return Math.Clamp(target, 1, Math.Min(MaxDecodeSplits, maxBlocks));
    }

    /// <summary>Bytes of paged decode workspace for any batch up to <paramref name="maxBatch"/>: partials [batch, nq, splits, D + 2] fp32.</summary>
    public static long DecodePagedWorkspaceBytes(int multiprocessors, int nq, int nkv, int headDim, int maxBatch, int maxBlocks)
    {
        long most = 0;
        for (int b = 1; b <= maxBatch; b++) most = Math.Max(most, (long)b * DecodePagedSplits(multiprocessors, nkv, b, maxBlocks));
        return 4L * nq * most * headDim + 8L * nq * most;
    }

    /// <summary>
    /// Paged decode attention for <paramref name="batch"/> rows, one per sequence: row b's q (bf16 [batch, nq, D])
    /// attends to the first <paramref name="ctxLens"/>[b] positions of its block table row (int32 [batch, maxBlocks]);
    /// a row with ctx_len 0 (padding) outputs zeros. Every per-row input is read on the device: graph-capture safe.
    /// <paramref name="workspace"/>: <see cref="DecodePagedWorkspaceBytes"/> bytes, 8-byte aligned.
    /// </summary>
    public unsafe void DecodePaged(CudaStream s, ulong q, ulong kPool, ulong vPool, ulong output, ulong workspace,
        ulong ctxLens, ulong blockTables, int batch, int maxBlocks, int nq, int nkv, int headDim, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxBlocks * KvBlockSize, scale);
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        if (nq / nkv > MaxDecodeGroup)
            throw new ArgumentException($"Decode attention supports at most {MaxDecodeGroup} query heads per KV head; got {nq / nkv}.");
        CheckPointers(q, kPool, vPool, output);
        if (workspace == 0 || (workspace & 7) != 0) throw new ArgumentException("Decode workspace must be non-null and 8-byte aligned.", nameof(workspace));
        if (ctxLens == 0 || (ctxLens & 3) != 0) throw new ArgumentException("ctxLens must be non-null and 4-byte aligned.", nameof(ctxLens));
        if (blockTables == 0 || (blockTables & 3) != 0) throw new ArgumentException("blockTables must be non-null and 4-byte aligned.", nameof(blockTables));
        int splits = DecodePagedSplits(nkv, batch, maxBlocks);
        ulong partO = workspace;                                                          // fp32 [batch, nq, splits, D]
        ulong partMl = workspace + (ulong)(4L * batch * nq * splits * headDim);           // fp32 [batch, nq, splits, 2]
        int mb = maxBlocks, hq = nq, hkv = nkv, d = headDim, ns = splits, maxCtx = maxBlocks * KvBlockSize;
        float sc = scale;
        CudaKernel split = headDim switch { 32 => _decodePaged32, 64 => _decodePaged64, _ => _decodePaged128 };
        void** a1 = stackalloc void*[] { &q, &kPool, &vPool, &partO, &partMl, &output, &ctxLens, &blockTables, &mb, &hq, &hkv, &ns, &sc };
        split.Launch(new Dim3((uint)splits, (uint)nkv, (uint)batch), new Dim3(DecodeThreads), DecodeSmemBytes(headDim), s, a1);
        void** a2 = stackalloc void*[] { &partO, &partMl, &output, &ctxLens, &hq, &d, &maxCtx, &ns };
        _combine.Launch(new Dim3((uint)nq, (uint)batch), new Dim3((uint)headDim), 0, s, a2);
    }

    private static void ValidateShape(int nq, int nkv, int headDim, int maxCtx, float scale)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nq, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(nkv, 1);
        if (nq % nkv != 0)
            throw new ArgumentException($"Attention needs nq divisible by nkv (GQA); got nq {nq}, nkv {nkv}.");
        if (headDim is not (32 or 64 or 128))
            throw new ArgumentException($"Attention kernels support head_dim 32, 64 or 128; got {headDim}.", nameof(headDim));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCtx, 1);
        if (!float.IsFinite(scale) || scale <= 0f)
            throw new ArgumentOutOfRangeException(nameof(scale), $"Attention scale must be finite and positive; got {scale}.");
    }

    private static void CheckPointers(ulong q, ulong kCache, ulong vCache, ulong output)
    {
        // K/V tiles are copied in 16-byte chunks; q and out are accessed as bf16 pairs.
        if (kCache == 0 || (kCache & 15) != 0) throw new ArgumentException($"K cache pointer 0x{kCache:x} must be non-null and 16-byte aligned.", nameof(kCache));
        if (vCache == 0 || (vCache & 15) != 0) throw new ArgumentException($"V cache pointer 0x{vCache:x} must be non-null and 16-byte aligned.", nameof(vCache));
        if (q == 0 || (q & 3) != 0) throw new ArgumentException($"q pointer 0x{q:x} must be non-null and 4-byte aligned.", nameof(q));
        if (output == 0 || (output & 3) != 0) throw new ArgumentException($"Output pointer 0x{output:x} must be non-null and 4-byte aligned.", nameof(output));
    }
}

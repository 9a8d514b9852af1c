using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Causal GQA attention over the paged KV pool (kernels/attention_prefill.cu, kernels/attention_decode.cu;
/// docs/ENGINE_V2.md). Layouts: q bf16 [rows, nq, D]; per-layer K and V pools bf16 [blocks, nkv, 64, D], a sequence's
/// block table (int32) naming the block of each 64 positions; output bf16 [rows, nq, D]. Supported head_dim: 32, 64, 128.
/// The fp8 KV cache (<see cref="KvLayer"/>, docs/KV_CACHE.md) has its own variant of each kernel: a tile of e4m3 codes
/// and scales is staged the same way. Decode's tensor cores read the codes in place (e4m3 → bf16 is exact), each score
/// multiplied by its key's K scale and each softmax weight by its key's V scale in fp32; prefill expands each tile to
/// bf16 once per block, since its 8 warps would each convert the whole tile again (kernels/attention.cuh).
/// <list type="bullet">
/// <item><see cref="PrefillPaged(CudaStream, ulong, KvLayer, ulong, ulong, ulong, int, int, int, int, int, int, float)">PrefillPaged</see>: flash-attention on tensor cores for many sequences in one launch, each any
/// query rows ≥ 1 on top of its cached positions (chunked prefill); the K/V of the new rows must already be in the pool.
/// On compute capability 9.0 the bf16 cache at head_dim 128 (QwQ) runs the Hopper kernel instead
/// (kernels/sm90a/attention_prefill_sm90a.cu: wgmma, same arguments and results) when its PTX is embedded and
/// <see cref="HopperPrefill"/> is on; everything else runs the portable mma.sync kernel.</item>
/// <item><see cref="DecodePaged(CudaStream, ulong, KvLayer, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, float)">DecodePaged</see>: one query row per sequence, split across blocks (flash-decoding) and merged by a
/// second kernel; the splits are dealt to the rows by their lengths each step (<see cref="PlanDecodeSplits"/>). The
/// plan (with the context lengths) and block tables are read on the device and the grid depends only on the batch size, so the call
/// can be captured once into a CUDA graph and replayed while contexts grow.</item>
/// </list>
/// </summary>
internal sealed class AttentionOps
{
    [KernelEntry] public const string DecodeCombine = "attention_decode_combine_bf16";
    [KernelEntry] public const string PrefillPagedD32 = "attention_prefill_paged_bf16_d32";
    [KernelEntry] public const string PrefillPagedD64 = "attention_prefill_paged_bf16_d64";
    [KernelEntry] public const string PrefillPagedD128 = "attention_prefill_paged_bf16_d128";
    [KernelEntry] public const string DecodePagedD32 = "attention_decode_paged_bf16_d32";
    [KernelEntry] public const string DecodePagedD64 = "attention_decode_paged_bf16_d64";
    [KernelEntry] public const string DecodePagedD128 = "attention_decode_paged_bf16_d128";
    [KernelEntry] public const string PrefillPagedFp8D32 = "attention_prefill_paged_fp8_d32";
    [KernelEntry] public const string PrefillPagedFp8D64 = "attention_prefill_paged_fp8_d64";
    [KernelEntry] public const string PrefillPagedFp8D128 = "attention_prefill_paged_fp8_d128";
    [KernelEntry] public const string DecodePagedFp8D32 = "attention_decode_paged_fp8_d32";
    [KernelEntry] public const string DecodePagedFp8D64 = "attention_decode_paged_fp8_d64";
    [KernelEntry] public const string DecodePagedFp8D128 = "attention_decode_paged_fp8_d128";
    [KernelEntry(ArchSpecific = true)] public const string PrefillPagedD128Sm90a = "attention_prefill_paged_bf16_d128_sm90a";
    /// <summary>The same with K and V tiles by TMA (two tensor maps as its last arguments); preferred where the PTX has it.</summary>
    [KernelEntry(ArchSpecific = true)] public const string PrefillPagedD128Sm90aTma = "attention_prefill_paged_bf16_d128_sm90a_tma";
    /// <summary>
    /// The TMA entry with a producer warpgroup and the two consumer warpgroups' products in turns over 128-key tiles
    /// (FlashAttention-3's ping-pong; the TMA entry's arguments, 384 threads); preferred where the PTX has it.
    /// </summary>
    [KernelEntry(ArchSpecific = true)] public const string PrefillPagedD128Sm90aPingPong = "attention_prefill_paged_bf16_d128_sm90a_pingpong";

    /// <summary>Positions per block of the paged KV pool: one key tile of both kernels (docs/ENGINE_V2.md).</summary>
    public const int KvBlockSize = KeyTile;

    // Must match kernels/attention_prefill.cu: 8 warps x 16 query rows per block, 64-key tiles, 2 stages.
    private const int PrefillWarps = 8;
    private const int PrefillRowsPerBlock = 16 * PrefillWarps;
    private const int PrefillStages = 2;
    // Must match kernels/sm90a/attention_prefill_sm90a.cu (ENGINE_WGS, ENGINE_STAGES): one warpgroup of 128 threads owns
    // the block's 64 query rows; a 2-stage ring of K and V tiles.
    private const int HopperPrefillThreads = 128;
    private const int HopperPrefillRowsPerBlock = 64;
    private const int HopperPrefillStages = 2;
    private const int HopperPrefillHeadDim = 128;
    // Must match its TMA entry (ENGINE_TMA_WGS, ENGINE_TMA_STAGES): two warpgroups, 128 query rows per block, 3 stages.
    private const int HopperPrefillTmaThreads = 256;
    private const int HopperPrefillTmaRowsPerBlock = 128;
    private const int HopperPrefillTmaStages = 3;
    // Must match its ping-pong entry (ENGINE_PP_*): the TMA entry's two warpgroups and rows, a producer warpgroup, a
    // 3-stage ring of 128-key tiles.
    private const int HopperPrefillPingPongThreads = 256 + 128;
    private const int HopperPrefillPingPongKeys = 128;
    // Must match kernels/attention_decode.cu: 4 warps, 64-key tiles, 3-stage ring; the combine's thread groups over the
    // splits (COMBINE_GROUPS: a block of head_dim x 4 threads).
    private const int DecodeThreads = 128;
    private const int DecodeStages = 3;
    private const int KeyTile = 64;
    private const uint CombineGroups = 4;
    /// <summary>Most query heads per KV head the decode kernel handles (one m16 tensor-core tile of rows).</summary>
    public const int MaxDecodeGroup = 16;
    /// <summary>Upper bound on decode splits, whatever the GPU (keeps the combine loop and workspace small).</summary>
    public const int MaxDecodeSplits = 256;

    private readonly CudaKernel _combine;
    // Every prefill and decode variant by cache kind and head_dim, each opted in once to its dynamic shared memory.
    private readonly Dictionary<(bool Prefill, KvCacheKind Kind, int HeadDim), CudaKernel> _variants = [];
    private readonly int _multiprocessors;
    // EngineOptions.DecodeBlocksPerSm; null: by the loaded split kernel's occupancy (_decodeResident)
    private readonly int? _decodeBlocksPerSm;
    // Per decode variant: the split blocks one multiprocessor holds at once, as the driver counts them for the loaded
    // build (registers and shared memory), within DecodeBlocksPerSm's shared-memory bound.
    private readonly Dictionary<(KvCacheKind Kind, int HeadDim), int> _decodeResident = [];
    // The sm_90a prefill kernel for the bf16 cache at head_dim 128; null: the portable kernel runs every prefill.
    private readonly CudaKernel? _hopperPrefill;
    // Its TMA build (kernels/sm90a: K and V by tensor maps); null where the PTX predates it, and the cp.async one runs.
    private readonly CudaKernel? _hopperPrefillTma;
    // Its ping-pong build (the TMA entry's shared memory and arguments); null where the PTX predates it or it is off.
    private readonly CudaKernel? _hopperPrefillPingPong;
    // The tensor maps' row count: past any pool. TMA reads only the boxes a kernel asks for (rows of the sequences'
    // blocks), so the count only bounds them, and one need not know the pool's size here.
    private const ulong TmaRows = 1UL << 31;

    /// <summary>Every portable prefill and decode entry, by cache kind and head_dim (each loaded by the constructor).</summary>
    internal static readonly (string Entry, bool Prefill, KvCacheKind Kind, int HeadDim)[] Variants =
    [
        (PrefillPagedD32, true, KvCacheKind.Bf16, 32), (PrefillPagedD64, true, KvCacheKind.Bf16, 64), (PrefillPagedD128, true, KvCacheKind.Bf16, 128),
        (DecodePagedD32, false, KvCacheKind.Bf16, 32), (DecodePagedD64, false, KvCacheKind.Bf16, 64), (DecodePagedD128, false, KvCacheKind.Bf16, 128),
        (PrefillPagedFp8D32, true, KvCacheKind.Fp8, 32), (PrefillPagedFp8D64, true, KvCacheKind.Fp8, 64), (PrefillPagedFp8D128, true, KvCacheKind.Fp8, 128),
        (DecodePagedFp8D32, false, KvCacheKind.Fp8, 32), (DecodePagedFp8D64, false, KvCacheKind.Fp8, 64), (DecodePagedFp8D128, false, KvCacheKind.Fp8, 128),
    ];

    /// <summary>
    /// <paramref name="hopperPrefill"/>: run the sm_90a prefill kernel where it applies, if <paramref name="lib"/> has it
    /// (<see cref="PtxLibrary.ArchSpecific"/>); off: the portable kernel everywhere (A/B comparisons, tests).
    /// <paramref name="decodeBlocksPerSm"/>: <see cref="EngineOptions.DecodeBlocksPerSm"/> (null: by occupancy).
    /// <paramref name="hopperTma"/>: of the sm_90a kernel, the TMA entry where the PTX has it; off: the cp.async entry
    /// (the fallback for a PTX set without the TMA entry, which tests compare against the portable kernel too).
    /// <paramref name="hopperPingPong"/>: of the TMA entries, the ping-pong one where the PTX has it; off: the plain one.
    /// </summary>
    public AttentionOps(PtxLibrary lib, int multiprocessorCount, bool hopperPrefill = true, int? decodeBlocksPerSm = null,
        bool hopperTma = true, bool hopperPingPong = true)
    {
        ArgumentNullException.ThrowIfNull(lib);
        ArgumentOutOfRangeException.ThrowIfLessThan(multiprocessorCount, 1);
        if (decodeBlocksPerSm is int n) CheckDecodeBlocksPerSm(n);
        _multiprocessors = multiprocessorCount;
        _decodeBlocksPerSm = decodeBlocksPerSm;
        _combine = lib.GetKernel(DecodeCombine);
        foreach (var (entry, prefill, kind, d) in Variants)
        {
            CudaKernel k = lib.GetKernel(entry);
            // Opt in once to the dynamic shared memory the variant uses (needed above 48 KiB).
            k.SetMaxDynamicSharedMemory(prefill ? PrefillSmemBytes(d, kind) : DecodeSmemBytes(d, kind));
            _variants[(prefill, kind, d)] = k;
            if (!prefill)
                _decodeResident[(kind, d)] = Math.Clamp(k.MaxActiveBlocksPerMultiprocessor(DecodeThreads, DecodeSmemBytes(d, kind)),
                    1, DecodeBlocksPerSm(d, kind));
        }
        if (hopperPrefill && lib.ArchSpecific)
        {
            CudaKernel k = lib.GetKernel(PrefillPagedD128Sm90a);
            k.SetMaxDynamicSharedMemory(HopperPrefillSmemBytes);
            _hopperPrefill = k;
            if (hopperTma && lib.Has(PrefillPagedD128Sm90aTma))
            {
                CudaKernel t = lib.GetKernel(PrefillPagedD128Sm90aTma);
                t.SetMaxDynamicSharedMemory(HopperPrefillTmaSmemBytes);
                _hopperPrefillTma = t;
                if (hopperPingPong && lib.Has(PrefillPagedD128Sm90aPingPong))
                {
                    CudaKernel p = lib.GetKernel(PrefillPagedD128Sm90aPingPong);
                    p.SetMaxDynamicSharedMemory(HopperPrefillPingPongSmemBytes);
                    _hopperPrefillPingPong = p;
                }
            }
        }
    }

    /// <summary>Whether bf16 prefill at head_dim 128 runs the sm_90a kernel (kernels/sm90a/attention_prefill_sm90a.cu).</summary>
    public bool HopperPrefill => _hopperPrefill is not null;

    /// <summary>
    /// Shared memory of the sm_90a prefill kernel (attn_prefill_sm90a::smem_bytes(1, 2), 82,944 B): the warpgroup's Q
    /// tile [64, 128] bf16, 2 stages of K and V tiles [64, 128] bf16 (unpadded: the 128-byte swizzle keeps wgmma and
    /// cp.async free of bank conflicts), and 1 KiB so the kernel can align its base to 1024 bytes, as the swizzle needs.
    /// </summary>
    internal static readonly int HopperPrefillSmemBytes = HopperSmemBytes(HopperPrefillRowsPerBlock, HopperPrefillStages, KeyTile);

    /// <summary>
    /// Shared memory of the sm_90a TMA entry (attn_prefill_sm90a::smem_bytes(2, 3), 132,096 B): two warpgroups' Q tiles
    /// [128, 128] bf16, 3 stages of K and V tiles [64, 128] bf16, and the 1 KiB of alignment slack.
    /// </summary>
    internal static readonly int HopperPrefillTmaSmemBytes = HopperSmemBytes(HopperPrefillTmaRowsPerBlock, HopperPrefillTmaStages, KeyTile);

    /// <summary>
    /// Shared memory of the ping-pong entry (attn_prefill_sm90a::smem_bytes(2, 3, 128), 230,400 B): the TMA entry's Q
    /// tiles, 3 stages of 128-key K and V tiles [128, 128] bf16, and the alignment slack; within the 232,448 B a block
    /// may opt into on compute capability 9.0.
    /// </summary>
    internal static readonly int HopperPrefillPingPongSmemBytes =
        HopperSmemBytes(HopperPrefillTmaRowsPerBlock, HopperPrefillTmaStages, HopperPrefillPingPongKeys);

    /// <summary>
    /// attn_prefill_sm90a::smem_bytes(warpgroups, stages, keys) on the C# side: Q [queryRows, 128] bf16, a ring of
    /// <paramref name="stages"/> K and V tiles [keys, 128] bf16, and 1 KiB for the kernel to align its base to 1024.
    /// </summary>
    private static int HopperSmemBytes(int queryRows, int stages, int keys) =>
        queryRows * HopperPrefillHeadDim * 2 + stages * 2 * keys * HopperPrefillHeadDim * 2 + 1024;

    /// <summary>
    /// Which prefill kernel runs: the portable mma.sync one, the sm_90a one with K/V by cp.async, by TMA, or by TMA with
    /// the warpgroups in ping-pong.
    /// </summary>
    internal enum PrefillKernel { Portable, Hopper, HopperTma, HopperPingPong }

    /// <summary>How one prefill launch runs: which kernel, query rows per block (the grid's y), threads and dynamic shared memory.</summary>
    internal readonly record struct PrefillLaunch(PrefillKernel Kernel, int RowsPerBlock, int Threads, int SmemBytes)
    {
        /// <summary>The path's name, as bench records it beside each prefill figure.</summary>
        public string Path => Kernel switch
        {
            PrefillKernel.HopperPingPong => "wgmma+TMA ping-pong sm_90a",
            PrefillKernel.HopperTma => "wgmma+TMA sm_90a",
            PrefillKernel.Hopper => "wgmma sm_90a",
            _ => "mma.sync",
        };
    }

    /// <summary>
    /// The launch of a prefill over a <paramref name="kind"/> cache at <paramref name="headDim"/>: the best sm_90a kernel
    /// loaded (<paramref name="loaded"/>: <see cref="PrefillKernel.Portable"/> when none) where the shape is its one
    /// (bf16, 128), else the portable kernel.
    /// </summary>
    internal static PrefillLaunch PrefillLaunchFor(PrefillKernel loaded, KvCacheKind kind, int headDim) =>
        kind != KvCacheKind.Bf16 || headDim != HopperPrefillHeadDim ? Portable(kind, headDim) : loaded switch
        {
            PrefillKernel.HopperPingPong => new PrefillLaunch(loaded, HopperPrefillTmaRowsPerBlock, HopperPrefillPingPongThreads, HopperPrefillPingPongSmemBytes),
            PrefillKernel.HopperTma => new PrefillLaunch(loaded, HopperPrefillTmaRowsPerBlock, HopperPrefillTmaThreads, HopperPrefillTmaSmemBytes),
            PrefillKernel.Hopper => new PrefillLaunch(loaded, HopperPrefillRowsPerBlock, HopperPrefillThreads, HopperPrefillSmemBytes),
            _ => Portable(kind, headDim),
        };

    private static PrefillLaunch Portable(KvCacheKind kind, int headDim) =>
        new(PrefillKernel.Portable, PrefillRowsPerBlock, PrefillWarps * 32, PrefillSmemBytes(headDim, kind));

    /// <summary>The best prefill kernel this instance loaded (<see cref="PrefillLaunchFor"/>'s first argument).</summary>
    internal PrefillKernel LoadedPrefill =>
        _hopperPrefillPingPong is not null ? PrefillKernel.HopperPingPong
        : _hopperPrefillTma is not null ? PrefillKernel.HopperTma
        : _hopperPrefill is not null ? PrefillKernel.Hopper : PrefillKernel.Portable;

    /// <summary>
    /// Shared memory of the prefill kernel: 2 stages of K and V tiles, rows padded by 16 bytes. fp8: one such bf16 tile
    /// pair (the expanded one) and 2 stages of staged codes and scales (kernels/attention.cuh, fp8_stage_bytes).
    /// </summary>
    internal static int PrefillSmemBytes(int headDim, KvCacheKind kind = KvCacheKind.Bf16) => kind == KvCacheKind.Fp8
        ? 2 * KeyTile * (headDim + 8) * 2 + PrefillStages * Fp8StageBytes(headDim)
        : PrefillStages * 2 * KeyTile * (headDim + 8) * 2;

    /// <summary>
    /// Shared memory of the decode split kernel: the 3-stage K/V ring (fp8: 3 stages of staged codes and scales, which
    /// the mma reads in place), or the cross-warp merge if larger.
    /// </summary>
    internal static int DecodeSmemBytes(int headDim, KvCacheKind kind = KvCacheKind.Bf16)
    {
        int ring = kind == KvCacheKind.Fp8
            ? DecodeStages * Fp8StageBytes(headDim)
            : DecodeStages * 2 * KeyTile * (headDim + 8) * 2;
        int merge = 4 * 16 * headDim * 4 + 4 * 16 * 2 * 4;
        return Math.Max(ring, merge);
    }

    /// <summary>
    /// One staged fp8 tile pair (kernels/attention.cuh, fp8_stage_bytes): K and V codes [2, 64, D + 16] bytes (rows padded
    /// by 16 bytes so that ldmatrix reads them without bank conflicts), then their scales [2, 64] fp32.
    /// </summary>
    internal static int Fp8StageBytes(int headDim) => 2 * KeyTile * (headDim + 16) + 2 * KeyTile * 4;

    /// <summary>
    /// Paged prefill over <paramref name="sequences"/> sequences in one launch (docs/ENGINE_V2.md).
    /// <paramref name="seqInfo"/> int32 [sequences, 4] = {first query row, query rows, cached positions before them, 0};
    /// <paramref name="blockTables"/> int32 [sequences, maxBlocks]; q and output bf16 [rows, nq, D];
    /// <paramref name="kPool"/>/<paramref name="vPool"/>: one layer of the pool, bf16 [blocks, nkv, 64, D], with every
    /// query row's own K/V already written. <paramref name="maxQueryRows"/> bounds every sequence's query rows.
    /// </summary>
    public void PrefillPaged(CudaStream s, ulong q, ulong kPool, ulong vPool, ulong output, ulong seqInfo,
        ulong blockTables, int sequences, int maxQueryRows, int maxBlocks, int nq, int nkv, int headDim, float scale) =>
        PrefillPaged(s, q, KvLayer.Bf16(kPool, vPool), output, seqInfo, blockTables, sequences, maxQueryRows, maxBlocks, nq, nkv, headDim, scale);

    /// <summary><see cref="PrefillPaged(CudaStream, ulong, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, int, float)"/> over one layer of a bf16 or fp8 pool.</summary>
    public unsafe void PrefillPaged(CudaStream s, ulong q, KvLayer kv, ulong output, ulong seqInfo,
        ulong blockTables, int sequences, int maxQueryRows, int maxBlocks, int nq, int nkv, int headDim, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxBlocks, scale);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequences, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxQueryRows, 1);
        CheckPointers(q, kv, output);
        if (seqInfo == 0 || (seqInfo & 15) != 0) throw new ArgumentException("seqInfo must be non-null and 16-byte aligned.", nameof(seqInfo));
        if (blockTables == 0 || (blockTables & 3) != 0) throw new ArgumentException("blockTables must be non-null and 4-byte aligned.", nameof(blockTables));
        bool fp8 = kv.Kind == KvCacheKind.Fp8;
        var launch = PrefillLaunchFor(LoadedPrefill, kv.Kind, headDim);
        // head_dim and kind checked above; the sm_90a kernels take the bf16 entry's arguments (the TMA one, two more)
        CudaKernel k = launch.Kernel switch
        {
            PrefillKernel.HopperPingPong => _hopperPrefillPingPong!.Value,
            PrefillKernel.HopperTma => _hopperPrefillTma!.Value,
            PrefillKernel.Hopper => _hopperPrefill!.Value,
            _ => _variants[(true, kv.Kind, headDim)],
        };
        uint mTiles = (uint)((maxQueryRows + launch.RowsPerBlock - 1) / launch.RowsPerBlock);
        int mb = maxBlocks, hq = nq, hkv = nkv;
        float sc = scale;
        ulong kPool = kv.K, vPool = kv.V, kScales = kv.KScales, vScales = kv.VScales;
        var grid = new Dim3((uint)nq, mTiles, (uint)sequences);
        if (fp8)
        {
            void** a = stackalloc void*[] { &q, &kPool, &vPool, &kScales, &vScales, &output, &seqInfo, &blockTables, &mb, &hq, &hkv, &sc };
            k.Launch(grid, new Dim3((uint)launch.Threads), launch.SmemBytes, s, a);
        }
        else if (launch.Kernel is PrefillKernel.HopperTma or PrefillKernel.HopperPingPong)
        {
            // this layer's K and V pools as rows of head_dim bf16, read in 64-key boxes (host-only encoding, per launch:
            // prefill is never graph-captured, so nothing is cached that a pool change could stale)
            TensorMap mapK = TensorMap.EncodeBf16Rows(kPool, TmaRows, headDim, KeyTile);
            TensorMap mapV = TensorMap.EncodeBf16Rows(vPool, TmaRows, headDim, KeyTile);
            void** a = stackalloc void*[] { &q, &kPool, &vPool, &output, &seqInfo, &blockTables, &mb, &hq, &hkv, &sc, &mapK, &mapV };
            k.Launch(grid, new Dim3((uint)launch.Threads), launch.SmemBytes, s, a);
        }
        else
        {
            void** a = stackalloc void*[] { &q, &kPool, &vPool, &output, &seqInfo, &blockTables, &mb, &hq, &hkv, &sc };
            k.Launch(grid, new Dim3((uint)launch.Threads), launch.SmemBytes, s, a);
        }
    }

    /// <summary>
    /// Grid slots per KV head of a paged decode launch of <paramref name="batch"/> rows: one wave of the blocks the GPU
    /// holds at once (<see cref="DecodeBlocksPerSmFor"/> per SM) over the KV heads, at most <see cref="MaxDecodeSplits"/>,
    /// and at least one per row. Fixed by the batch, so a graph captured for a batch size stays valid; the step's plan
    /// (<see cref="PlanDecodeSplits"/>) deals them to the rows.
    /// </summary>
    internal int DecodeSplitSlots(int nkv, int batch, int headDim, KvCacheKind kind) =>
        DecodeSplitSlots(_multiprocessors, nkv, batch, DecodeBlocksPerSmFor(headDim, kind));

    /// <summary>
    /// The decode split blocks counted per multiprocessor for this cache: the option, or the loaded split kernel's
    /// occupancy. Why the driver's count and not shared memory alone (<see cref="DecodeBlocksPerSm"/>): the fp8 cache's
    /// kernel uses ~160 registers a thread, so an H100 or H200 multiprocessor holds 3 of its 128-thread blocks, not the 4
    /// its 57 KB ring allows, and a plan for 4 ran a second, thin wave of blocks (the split kernel alone, H200, session
    /// 17: 31.5 µs a layer at 32k and batch 1 planned for 4, 29.8 for 3; at batch 8, 178 and 175).
    /// </summary>
    public int DecodeBlocksPerSmFor(int headDim, KvCacheKind kind) => _decodeBlocksPerSm ?? _decodeResident[(kind, headDim)];

    /// <summary>Throws the option's message unless <paramref name="blocksPerSm"/> is from 1 to 4 (the workspace's bound).</summary>
    public static void CheckDecodeBlocksPerSm(int blocksPerSm)
    {
        if (blocksPerSm < 1 || blocksPerSm > MaxDecodeBlocksPerSm)
            throw new OptionException($"--decode-blocks-per-sm must be from 1 to {MaxDecodeBlocksPerSm}, got {blocksPerSm}");
    }

    internal static int DecodeSplitSlots(int multiprocessors, int nkv, int batch, int blocksPerSm) =>
        // Rounded down: a few blocks past one wave make a second wave that takes as long as the first (at batch 8 and
        // 32k, 5 splits of 8 × 8 blocks = 320 on 264 slots ran 11% slower than 4).
        Math.Max(batch, Math.Clamp(blocksPerSm * multiprocessors / nkv, 1, MaxDecodeSplits));

    /// <summary>
    /// Deals <paramref name="slots"/> decode splits to the rows of a step by their context lengths: the fewest key tiles
    /// per split such that every row's splits fit (each row at least one), so every split reads about the same number of
    /// tiles and a long row beside short ones takes most of the slots. Writes what the decode kernels read
    /// (kernels/attention_decode.cu, RowSplits): <paramref name="splitRows"/> int32 [rows, 4] = {first slot, splits, keys
    /// per split, context length} and <paramref name="splitWork"/> int32 [slots, 4] = {row (−1: unused), split of the
    /// row, keys per split, the row's context length}. Lengths are clamped to [0, <paramref name="maxContext"/>]; a row
    /// of length 0 (padding) gets one split that writes zeros.
    /// </summary>
    public static void PlanDecodeSplits(ReadOnlySpan<int> contextLengths, int maxContext, int slots, Span<int> splitRows, Span<int> splitWork)
    {
        int rows = contextLengths.Length;
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1, nameof(contextLengths));
        if (slots < rows) throw new ArgumentOutOfRangeException(nameof(slots), $"{slots} slots cannot give each of {rows} rows a split");
        if (splitRows.Length < 4 * rows) throw new ArgumentException($"needs {4 * rows} ints", nameof(splitRows));
        if (splitWork.Length < 4 * slots) throw new ArgumentException($"needs {4 * slots} ints", nameof(splitWork));
        Span<int> tiles = rows <= 256 ? stackalloc int[rows] : new int[rows]; // key tiles of each row
        long total = 0;
        int longest = 1;
        for (int r = 0; r < rows; r++)
        {
            tiles[r] = (Math.Clamp(contextLengths[r], 0, maxContext) + KeyTile - 1) / KeyTile;
            (total, longest) = (total + tiles[r], Math.Max(longest, tiles[r]));
        }
        static int SplitsAt(ReadOnlySpan<int> tiles, int tilesPerSplit)
        {
            int n = 0;
            foreach (int t in tiles) n += Math.Max(1, (t + tilesPerSplit - 1) / tilesPerSplit);
            return n;
        }
        // The fewest tiles per split whose splits fit; at `longest` every row has one split, which fits (rows ≤ slots).
        int lo = (int)Math.Clamp((total + slots - 1) / slots, 1, longest), hi = longest;
        while (lo < hi)
        {
            int mid = lo + (hi - lo) / 2;
            if (SplitsAt(tiles, mid) <= slots) hi = mid;
            else lo = mid + 1;
        }
        int next = 0, chunk = lo * KeyTile;
        for (int r = 0; r < rows; r++)
        {
            int splits = Math.Max(1, (tiles[r] + lo - 1) / lo), context = Math.Clamp(contextLengths[r], 0, maxContext);
            (splitRows[4 * r], splitRows[4 * r + 1], splitRows[4 * r + 2], splitRows[4 * r + 3]) = (next, splits, chunk, context);
            for (int i = 0; i < splits; i++, next++)
                (splitWork[4 * next], splitWork[4 * next + 1], splitWork[4 * next + 2], splitWork[4 * next + 3]) = (r, i, chunk, context);
        }
        for (; next < slots; next++) (splitWork[4 * next], splitWork[4 * next + 1], splitWork[4 * next + 2], splitWork[4 * next + 3]) = (-1, 0, 0, 0);
    }

    /// <summary>
    /// Decode split blocks one multiprocessor holds at once by the split kernel's shared memory on a Hopper
    /// multiprocessor (228 KiB, 1 KiB reserved per block), at most 4: 2 for the bf16 cache at head_dim 128 (a 104 KB
    /// ring), 4 for the fp8 cache. Why it sets the splits: more blocks than fit only queue a second wave of blocks with a
    /// tile or two each. At batch 8 and a 1k context, 4 a multiprocessor (the rule before, from the fp8 cache's
    /// occupancy) gave bf16 576 blocks of 2 tiles: 22.8 µs a layer on an H200, where the keys' bytes need ~8; at 32k the
    /// same 576 blocks ran in three waves, the last a fifth full. An upper bound: registers can lower it
    /// (<see cref="DecodeBlocksPerSmFor"/> asks the driver).
    /// </summary>
    internal static int DecodeBlocksPerSm(int headDim, KvCacheKind kind) =>
        Math.Clamp(228 * 1024 / (DecodeSmemBytes(headDim, kind) + 1024), 1, MaxDecodeBlocksPerSm);

    /// <summary>Most decode split blocks counted per multiprocessor (the plan's work table is sized for it).</summary>
    public const int MaxDecodeBlocksPerSm = 4;

    /// <summary>Most decode grid slots any batch up to <paramref name="maxBatch"/> takes, any head_dim and cache kind (the plan's work table).</summary>
    public static int MaxDecodeSplitSlots(int multiprocessors, int nkv, int maxBatch) =>
        DecodeSplitSlots(multiprocessors, nkv, maxBatch, MaxDecodeBlocksPerSm);

    /// <summary>
    /// Bytes of paged decode workspace for any batch up to <paramref name="maxBatch"/>, any head_dim and cache kind:
    /// partials [slots, nq, D + 2] fp32 at the most slots any of them takes.
    /// </summary>
    public static long DecodePagedWorkspaceBytes(int multiprocessors, int nq, int nkv, int headDim, int maxBatch)
    {
        long slots = MaxDecodeSplitSlots(multiprocessors, nkv, maxBatch);
        return 4L * nq * slots * headDim + 8L * nq * slots;
    }

    /// <summary>
    /// Paged decode attention for <paramref name="batch"/> rows, one per sequence: row b's q (bf16 [batch, nq, D])
    /// attends to the first positions of its block table row (int32 [batch, maxBlocks]), as many as the plan gives it;
    /// a row of length 0 (padding) outputs zeros. <paramref name="splitRows"/> (int32 [batch, 4]) and
    /// <paramref name="splitWork"/> (int32 [<see cref="DecodeSplitSlots(int, int, int, KvCacheKind)"/>, 4]), both 16-byte aligned: the step's plan,
    /// <see cref="PlanDecodeSplits"/> over the rows' lengths with that many slots. Every per-row input is read on the
    /// device: graph-capture safe.
    /// <paramref name="workspace"/>: <see cref="DecodePagedWorkspaceBytes"/> bytes, 8-byte aligned.
    /// </summary>
    public void DecodePaged(CudaStream s, ulong q, ulong kPool, ulong vPool, ulong output, ulong workspace,
        ulong blockTables, ulong splitRows, ulong splitWork, int batch, int maxBlocks, int nq, int nkv, int headDim, float scale) =>
        DecodePaged(s, q, KvLayer.Bf16(kPool, vPool), output, workspace, blockTables, splitRows, splitWork, batch, maxBlocks, nq, nkv, headDim, scale);

    /// <summary><see cref="DecodePaged(CudaStream, ulong, ulong, ulong, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, float)"/> over one layer of a bf16 or fp8 pool.</summary>
    public unsafe void DecodePaged(CudaStream s, ulong q, KvLayer kv, ulong output, ulong workspace,
        ulong blockTables, ulong splitRows, ulong splitWork, int batch, int maxBlocks, int nq, int nkv, int headDim, float scale)
    {
        ArgumentNullException.ThrowIfNull(s);
        ValidateShape(nq, nkv, headDim, maxBlocks, scale);
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        if (nq / nkv > MaxDecodeGroup)
            throw new ArgumentException($"Decode attention supports at most {MaxDecodeGroup} query heads per KV head; got {nq / nkv}.");
        CheckPointers(q, kv, output);
        if (workspace == 0 || (workspace & 7) != 0) throw new ArgumentException("Decode workspace must be non-null and 8-byte aligned.", nameof(workspace));
        if (blockTables == 0 || (blockTables & 3) != 0) throw new ArgumentException("blockTables must be non-null and 4-byte aligned.", nameof(blockTables));
        if (splitRows == 0 || (splitRows & 15) != 0) throw new ArgumentException("splitRows must be non-null and 16-byte aligned.", nameof(splitRows));
        if (splitWork == 0 || (splitWork & 15) != 0) throw new ArgumentException("splitWork must be non-null and 16-byte aligned.", nameof(splitWork));
        int slots = DecodeSplitSlots(nkv, batch, headDim, kv.Kind);
        ulong partO = workspace;                                                // fp32 [slots, nq, D]
        ulong partMl = workspace + (ulong)(4L * slots * nq * headDim);          // fp32 [slots, nq, 2]
        int mb = maxBlocks, hq = nq, hkv = nkv, d = headDim, maxCtx = maxBlocks * KvBlockSize;
        float sc = scale;
        ulong kPool = kv.K, vPool = kv.V, kScales = kv.KScales, vScales = kv.VScales;
        var grid = new Dim3((uint)slots, (uint)nkv);
        CudaKernel split = _variants[(false, kv.Kind, headDim)]; // head_dim and kind checked above
        if (kv.Kind == KvCacheKind.Fp8)
        {
            void** a1 = stackalloc void*[] { &q, &kPool, &vPool, &kScales, &vScales, &partO, &partMl, &output, &blockTables, &splitWork, &mb, &hq, &hkv, &sc };
            split.Launch(grid, new Dim3(DecodeThreads), DecodeSmemBytes(headDim, kv.Kind), s, a1);
        }
        else
        {
            void** a1 = stackalloc void*[] { &q, &kPool, &vPool, &partO, &partMl, &output, &blockTables, &splitWork, &mb, &hq, &hkv, &sc };
            split.Launch(grid, new Dim3(DecodeThreads), DecodeSmemBytes(headDim), s, a1);
        }
        void** a2 = stackalloc void*[] { &partO, &partMl, &output, &splitRows, &hq, &d, &maxCtx };
        _combine.Launch(new Dim3((uint)nq, (uint)batch), new Dim3((uint)headDim, CombineGroups), 0, s, a2);
    }

    private static void ValidateShape(int nq, int nkv, int headDim, int maxBlocks, float scale)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nq, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(nkv, 1);
        if (nq % nkv != 0)
            throw new ArgumentException($"Attention needs nq divisible by nkv (GQA); got nq {nq}, nkv {nkv}.");
        if (headDim is not (32 or 64 or 128))
            throw new ArgumentException($"Attention kernels support head_dim 32, 64 or 128; got {headDim}.", nameof(headDim));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlocks, 1);
        if (!float.IsFinite(scale) || scale <= 0f)
            throw new ArgumentOutOfRangeException(nameof(scale), $"Attention scale must be finite and positive; got {scale}.");
    }

    private static void CheckPointers(ulong q, KvLayer kv, ulong output)
    {
        // K/V tiles (and fp8 scales) are copied in 16-byte chunks; q and out are accessed as bf16 pairs.
        kv.Check();
        if (q == 0 || (q & 3) != 0) throw new ArgumentException($"q pointer 0x{q:x} must be non-null and 4-byte aligned.", nameof(q));
        if (output == 0 || (output & 3) != 0) throw new ArgumentException($"Output pointer 0x{output:x} must be non-null and 4-byte aligned.", nameof(output));
    }
}

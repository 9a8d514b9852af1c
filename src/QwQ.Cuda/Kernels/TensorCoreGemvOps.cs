using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>Which build of the tensor-core GEMV runs a product; the load-time tuner times the ones that apply.</summary>
internal enum TensorCoreVariant
{
    /// <summary>A warp per 16-row tile, the plan for every row count and weight kind.</summary>
    Standard,
    /// <summary>fp8, up to 8 rows: half the unrolling and twice the resident warps.</summary>
    Lite,
    /// <summary>
    /// fp8, 17–32 rows: a warp per four tiles, so each x fragment it loads feeds four tiles' mma (a quarter of the x
    /// traffic; on the H200 gate_up at 32 rows 126 → 118 µs) but a quarter of the warps (slower on narrow products).
    /// </summary>
    Wide,
    /// <summary>
    /// fp8, 9–32 rows, the fp16 route: x converted to f16 (each row scaled by a power of two, so exactly) by a small
    /// kernel first, the weights converted to f16 by the hardware (sm_89+) instead of ~2 ALU instructions per weight to
    /// bf16, the mma in f16. On the H200 at 32 rows: down 78.6 → 70.7 µs, qkv 29.9 → 26.7, o 26.1 → 23.6.
    /// </summary>
    Half,
    /// <summary>The fp16 route of <see cref="Wide"/>, 17–32 rows (gate_up at 32 rows on the H200: 94.3 µs).</summary>
    HalfWide,
    /// <summary>
    /// fp8, 9–32 rows, compute capability 9.0 only (kernels/sm90a/gemv_tc_sm90a.cu): the fp16 route's converted weights
    /// feed Hopper's asynchronous warpgroup MMA from registers, x comes from shared memory once a block. On the H200 at
    /// 32 rows: down 71.2 → 51.9 µs, qkv 26.7 → 24.1, o 23.8 → 21.7.
    /// </summary>
    Warpgroup,
    /// <summary><see cref="Warpgroup"/> with twice the weight chunks in flight, 17–32 rows (gate_up at 32 rows: 97.2 → 89.3 µs).</summary>
    WarpgroupDeep,
    /// <summary>
    /// <see cref="Warpgroup"/> reading bf16 x as it is, 9–32 rows (an n16 build to 16, n32 above): the block stages x
    /// into shared memory itself and the weights go to bf16 instead of f16, so no conversion kernel runs before the
    /// product (fp8 batch 32 at 1k on the H200: 1,798 → 1,831 tok/s).
    /// </summary>
    WarpgroupBf16,
    /// <summary><see cref="WarpgroupDeep"/> reading bf16 x as it is, 17–32 rows.</summary>
    WarpgroupBf16Deep,
    /// <summary>
    /// int4 only, 1–8 rows: the block's 8 warps each read one even, contiguous run of the tile's k range instead of
    /// 4-chunk batches in turn, which at k = 5120 left half the warps a batch more. On the H200 (session 28): int4 batch 1
    /// +2.0%, batch 2 +3.0%, batch 8 −2.0%; the tuner times it up to <see cref="Int4Ops.MaxEvenRunsRows"/> rows.
    /// </summary>
    EvenRuns,
}

/// <summary>
/// The tensor-core GEMV (kernels/gemv_tc.cu) for 1–32 rows of x, over bf16 or fp8 weights:
/// y[m, :] (+)= scale ⊙ (W·x[m, :]), W read once for all rows, the batch as the mma's N in tiles of 8. Deterministic
/// for a given split count (split partials are added in a fixed order).
/// </summary>
internal sealed class TensorCoreGemvOps
{
    [KernelEntry] public const string Fp8N8Entry = "gemv_tc_fp8_n8";
    [KernelEntry] public const string Fp8N8LiteEntry = "gemv_tc_fp8_n8_lite";
    [KernelEntry] public const string Fp8N16Entry = "gemv_tc_fp8_n16";
    [KernelEntry] public const string Fp8N32Entry = "gemv_tc_fp8_n32";
    [KernelEntry] public const string Fp8N32WideEntry = "gemv_tc_fp8_n32_wide";
    [KernelEntry] public const string Bf16N8Entry = "gemv_tc_bf16_n8";
    [KernelEntry] public const string Bf16N16Entry = "gemv_tc_bf16_n16";
    [KernelEntry] public const string Bf16N32Entry = "gemv_tc_bf16_n32";
    [KernelEntry] public const string Fp8HalfN16Entry = "gemv_tc_fp8h_n16";
    [KernelEntry] public const string Fp8HalfN32Entry = "gemv_tc_fp8h_n32";
    [KernelEntry] public const string Fp8HalfN32WideEntry = "gemv_tc_fp8h_n32_wide";
    [KernelEntry] public const string XToHalfEntry = "gemv_tc_x_to_f16";
    [KernelEntry] public const string XToHalfWarpgroupEntry = "gemv_tc_x_to_f16_wg";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupN16Entry = "gemv_tc_fp8wg_n16";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupN32Entry = "gemv_tc_fp8wg_n32";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupN32DeepEntry = "gemv_tc_fp8wg_n32_deep";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupBf16N16Entry = "gemv_tc_fp8wgb_n16";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupBf16N32Entry = "gemv_tc_fp8wgb_n32";
    [KernelEntry(ArchSpecific = true)] public const string Fp8WarpgroupBf16N32DeepEntry = "gemv_tc_fp8wgb_n32_deep";

    /// <summary>Most rows of x served.</summary>
    public const int MaxRows = 32;
    /// <summary>k must be a multiple of this.</summary>
    public const int Chunk = 64;
    private const int Threads = 128;
    private const int WarpsPerBlock = 4;  // kTcWarps
    private const int WideTilesPerWarp = 4;  // MT of the wide entry
    private const int RowsPerTile = 16;
    internal const long TicketBytes = 64 << 10;  // int32 tickets for up to 16,384 tiles (262,144 output rows)

    /// <summary>Most inputs (k) the fp16 route converts x for (its f16 copy lives in the workspace).</summary>
    public const int MaxHalfIn = 32768;
    private const long HalfXBytes = (long)MaxRows * MaxHalfIn * 2;  // f16 [rows, k]
    private const long HalfScaleBytes = 256;                        // fp32 [rows], padded
    private const long PartBytes = (32L << 20) - TicketBytes;
    private const int XToHalfThreads = 1024;  // kXToF16Threads: one block per row, MaxHalfIn / 8 16-byte words per block

    /// <summary>
    /// Bytes of the workspace every launch needs, zeroed once: int32 tickets, fp32 split partials (both left zero by
    /// every launch), then the fp16 route's x and its row scales.
    /// </summary>
    public const long WorkspaceBytes = TicketBytes + PartBytes + HalfXBytes + HalfScaleBytes;

    private readonly CudaKernel[] _fp8, _bf16; // n8, n16, n32
    private readonly CudaKernel _fp8Lite;      // n8 with half the unrolling and twice the resident warps
    private readonly CudaKernel _fp8Wide;      // n32 with four tiles per warp
    private readonly CudaKernel[] _fp8Half;    // the fp16 route: n16, n32, n32 wide
    private readonly CudaKernel _xToHalf;
    // sm_90a (null off compute capability 9.0): x to f16 in the order these builds read it, and the n16, n32, n32 deep builds
    private readonly (CudaKernel XToHalf, CudaKernel[] Gemv)? _warpgroup;
    // sm_90a, the builds that read bf16 x: n16, n32, n32 deep (null where the PTX predates them)
    private readonly CudaKernel[]? _warpgroupBf16;

    public TensorCoreGemvOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _fp8 = [lib.GetKernel(Fp8N8Entry), lib.GetKernel(Fp8N16Entry), lib.GetKernel(Fp8N32Entry)];
        _bf16 = [lib.GetKernel(Bf16N8Entry), lib.GetKernel(Bf16N16Entry), lib.GetKernel(Bf16N32Entry)];
        _fp8Lite = lib.GetKernel(Fp8N8LiteEntry);
        _fp8Wide = lib.GetKernel(Fp8N32WideEntry);
        _fp8Half = [lib.GetKernel(Fp8HalfN16Entry), lib.GetKernel(Fp8HalfN32Entry), lib.GetKernel(Fp8HalfN32WideEntry)];
        _xToHalf = lib.GetKernel(XToHalfEntry);
        // the sm_90a module loads on compute capability 9.0 only; PTX built before these entries lacks them (and a
        // benchmark's base arm may run such PTX)
        if (lib.ArchSpecific && lib.Has(Fp8WarpgroupN32Entry) && lib.Has(XToHalfWarpgroupEntry))
        {
            _warpgroup = (lib.GetKernel(XToHalfWarpgroupEntry),
                [lib.GetKernel(Fp8WarpgroupN16Entry), lib.GetKernel(Fp8WarpgroupN32Entry), lib.GetKernel(Fp8WarpgroupN32DeepEntry)]);
        }
        // the three together: PTX from before the n16 build (session 22) has the n32 ones only, and then none load
        if (lib.ArchSpecific && lib.Has(Fp8WarpgroupBf16N16Entry) && lib.Has(Fp8WarpgroupBf16N32Entry))
        {
            _warpgroupBf16 = [lib.GetKernel(Fp8WarpgroupBf16N16Entry), lib.GetKernel(Fp8WarpgroupBf16N32Entry),
                lib.GetKernel(Fp8WarpgroupBf16N32DeepEntry)];
        }
    }

    /// <summary>Whether this GPU has the kernels of <paramref name="variant"/> (the warpgroup builds: compute capability 9.0 only).</summary>
    public bool Loaded(TensorCoreVariant variant) => variant switch
    {
        TensorCoreVariant.Warpgroup or TensorCoreVariant.WarpgroupDeep => _warpgroup is not null,
        TensorCoreVariant.WarpgroupBf16 or TensorCoreVariant.WarpgroupBf16Deep => _warpgroupBf16 is not null,
        _ => true,
    };

    private static int BatchTiles(int rows) => rows <= 8 ? 1 : rows <= 16 ? 2 : 4;

    /// <summary>Whether <paramref name="splits"/> (k split across blocks) fits the workspace and gives every block a chunk.</summary>
    public static bool SplitsFit(int n, int k, int rows, int splits)
    {
        long tiles = (n + RowsPerTile - 1) / RowsPerTile;
        if (splits == 1) return true;
        return splits > 1 && splits <= k / Chunk && tiles * 4 <= TicketBytes &&
               tiles * splits * 128L * BatchTiles(rows) * 4 <= PartBytes;
    }

    private static readonly int[] SplitChoices = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16];

    /// <summary>Split counts the load-time tuner tries for this shape.</summary>
    public static IEnumerable<int> SplitCandidates(int n, int k, int rows) => SplitChoices.Where(s => SplitsFit(n, k, rows, s));

    /// <summary>Whether <paramref name="variant"/> serves these weights, this many rows and <paramref name="k"/> inputs.</summary>
    public static bool Serves(TensorCoreVariant variant, bool fp8, int rows, int k) => variant switch
    {
        TensorCoreVariant.Standard => rows is >= 1 and <= MaxRows,
        TensorCoreVariant.Lite => fp8 && rows is >= 1 and <= 8,
        TensorCoreVariant.Wide => fp8 && rows is > 16 and <= MaxRows,
        // the builds that read x converted to f16 in the workspace (hence MaxHalfIn): from 9 rows, the wide/deep ones from 17
        TensorCoreVariant.Half or TensorCoreVariant.Warpgroup => fp8 && rows is > 8 and <= MaxRows && k <= MaxHalfIn,
        TensorCoreVariant.HalfWide or TensorCoreVariant.WarpgroupDeep => fp8 && rows is > 16 and <= MaxRows && k <= MaxHalfIn,
        // the warpgroup builds that read bf16 x where it is: no workspace copy, so any k; the deep one from 17 rows
        TensorCoreVariant.WarpgroupBf16 => fp8 && rows is > 8 and <= MaxRows,
        TensorCoreVariant.WarpgroupBf16Deep => fp8 && rows is > 16 and <= MaxRows,
        _ => false,
    };

    /// <summary>A reasonable split count without tuning: about eight blocks per SM in all.</summary>
    public static int DefaultSplits(int n, int k, int rows, int multiprocessors)
    {
        int blocks = (n + WarpsPerBlock * RowsPerTile - 1) / (WarpsPerBlock * RowsPerTile);
        int splits = Math.Clamp((8 * multiprocessors + blocks - 1) / blocks, 1, Math.Max(1, k / Chunk / 4));
        while (splits > 1 && !SplitsFit(n, k, rows, splits)) splits--;
        return splits;
    }

    /// <summary>
    /// y[m, :] (+)= scale ⊙ (W·x[m, :]) for m in [0, <paramref name="rows"/>), rows 1..32. <paramref name="fp8"/>: W
    /// e4m3 [n, k] with fp32 <paramref name="scale"/> [n]; else W bf16 [n, k] and <paramref name="scale"/> 0.
    /// <paramref name="workspace"/>: <see cref="WorkspaceBytes"/> bytes, zeroed once. <paramref name="variant"/>: which
    /// build runs it (<see cref="Serves"/>).
    /// </summary>
    public unsafe void Gemv(CudaStream s, bool fp8, ulong w, ulong scale, ulong x, ulong y, int rows, int n, int k, bool accumulate,
        ulong workspace, int splits, TensorCoreVariant variant = TensorCoreVariant.Standard)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        if (fp8) LaunchChecks.Aligned(scale, 4, nameof(scale));
        else if (scale != 0) throw new ArgumentException("bf16 weights have no scales", nameof(scale));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        LaunchChecks.Aligned(workspace, 16, nameof(workspace));
        if (rows < 1 || rows > MaxRows) throw new ArgumentException($"rows must be in [1, {MaxRows}] (got {rows}).", nameof(rows));
        LaunchChecks.Positive(n, nameof(n));
        if (k <= 0 || k % Chunk != 0) throw new ArgumentException($"k ({k}) must be a positive multiple of {Chunk}.", nameof(k));
        if (!SplitsFit(n, k, rows, splits)) throw new ArgumentException($"{splits} splits do not fit n = {n}, k = {k}, rows = {rows}.", nameof(splits));
        if (!Serves(variant, fp8, rows, k))
            throw new ArgumentException($"the {variant} variant does not serve {(fp8 ? "fp8" : "bf16")} weights over {rows} rows of {k}", nameof(variant));
        if (!Loaded(variant))
            throw new InvalidOperationException($"the {variant} variant needs the sm_90a kernels (compute capability 9.0 and PTX that has them)");
        bool wide = variant is TensorCoreVariant.Wide or TensorCoreVariant.HalfWide;
        int rowsPerBlock = WarpsPerBlock * RowsPerTile * (wide ? WideTilesPerWarp : 1);
        uint blocks = (uint)((n + rowsPerBlock - 1) / rowsPerBlock);
        ulong tickets = workspace, part = workspace + TicketBytes;
        int acc = accumulate ? 1 : 0;
        int batchTiles = rows <= 8 ? 0 : rows <= 16 ? 1 : 2;
        // the f16 and warpgroup families each have three builds: 16 rows, 32 rows, and the wide/deep 32-row one
        int build = variant is TensorCoreVariant.HalfWide or TensorCoreVariant.WarpgroupDeep or TensorCoreVariant.WarpgroupBf16Deep ? 2
            : batchTiles == 1 ? 0 : 1;
        if (variant is TensorCoreVariant.Half or TensorCoreVariant.HalfWide)
        {
            ulong xh = part + PartBytes, xs = xh + HalfXBytes;  // x as f16 [rows, k] and its row scales [rows]
            void** convert = stackalloc void*[] { &x, &xh, &xs, &k };
            _xToHalf.Launch(new Dim3((uint)rows), new Dim3(XToHalfThreads), 0, s, convert);
            void** half = stackalloc void*[] { &w, &scale, &xh, &xs, &y, &part, &tickets, &n, &k, &rows, &acc };
            _fp8Half[build].Launch(new Dim3(blocks, (uint)splits), new Dim3(Threads), 0, s, half);
            return;
        }
        if (variant is TensorCoreVariant.Warpgroup or TensorCoreVariant.WarpgroupDeep)
        {
            ulong xh = part + PartBytes, xs = xh + HalfXBytes;  // x as f16 [rows, k], permuted per chunk, and its row scales
            void** convert = stackalloc void*[] { &x, &xh, &xs, &k };
            var (xToHalf, builds) = _warpgroup!.Value;
            xToHalf.Launch(new Dim3((uint)rows), new Dim3(XToHalfThreads), 0, s, convert);
            void** wgArgs = stackalloc void*[] { &w, &scale, &xh, &xs, &y, &part, &tickets, &n, &k, &rows, &acc };
            CudaKernel wgKernel = builds[build];
            wgKernel.Launch(new Dim3(blocks, (uint)splits), new Dim3(Threads), 0, s, wgArgs);
            return;
        }
        void** args = stackalloc void*[] { &w, &scale, &x, &y, &part, &tickets, &n, &k, &rows, &acc };
        if (variant is TensorCoreVariant.WarpgroupBf16 or TensorCoreVariant.WarpgroupBf16Deep)
        {
            CudaKernel wgb = _warpgroupBf16![build];
            wgb.Launch(new Dim3(blocks, (uint)splits), new Dim3(Threads), 0, s, args);
            return;
        }
        CudaKernel kernel = variant switch
        {
            TensorCoreVariant.Lite => _fp8Lite,
            TensorCoreVariant.Wide => _fp8Wide,
            _ => (fp8 ? _fp8 : _bf16)[batchTiles],
        };
        kernel.Launch(new Dim3(blocks, (uint)splits), new Dim3(Threads), 0, s, args);
    }
}

using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// INT4 weight kernels (AWQ checkpoints and <c>--quantize int4</c>): the tensor-core GEMV for 1–32 rows
/// (kernels/gemv_int4.cu) and, in kernels/quantize_int4.cu, the load-time quantizer (bf16 rows → codes, fp16 scales and
/// zero points, round-to-nearest; <see cref="Weights.Quantization.Int4Rtn"/> is its CPU twin), the AWQ repacker and the
/// dequantizer that feeds prefill-sized products to the bf16 GEMM. w = (q − z) · s per output row and group of inputs.
/// Codes live in the int4 layout of kernels/int4.cuh (<see cref="WordOffset"/>); scales and zeros in one 32-bit word
/// per (group, row): <see cref="PackScaleZero"/>.
/// </summary>
internal sealed class Int4Ops
{
    [KernelEntry] public const string GemvN8G64Entry = "gemv_int4_n8_g64";
    [KernelEntry] public const string GemvN8RunsG64Entry = "gemv_int4_n8r_g64";
    [KernelEntry] public const string GemvN16G64Entry = "gemv_int4_n16_g64";
    [KernelEntry] public const string GemvN32G64Entry = "gemv_int4_n32_g64";
    [KernelEntry] public const string GemvN8G128Entry = "gemv_int4_n8_g128";
    [KernelEntry] public const string GemvN8RunsG128Entry = "gemv_int4_n8r_g128";
    [KernelEntry] public const string GemvN16G128Entry = "gemv_int4_n16_g128";
    [KernelEntry] public const string GemvN32G128Entry = "gemv_int4_n32_g128";
    [KernelEntry] public const string GemvN8G256Entry = "gemv_int4_n8_g256";
    [KernelEntry] public const string GemvN8RunsG256Entry = "gemv_int4_n8r_g256";
    [KernelEntry] public const string GemvN16G256Entry = "gemv_int4_n16_g256";
    [KernelEntry] public const string GemvN32G256Entry = "gemv_int4_n32_g256";
    [KernelEntry] public const string QuantizeEntry = "quantize_int4_rows";
    [KernelEntry] public const string RepackAwqEntry = "repack_awq_rows";
    [KernelEntry] public const string DequantizeEntry = "dequantize_int4_rows";

    /// <summary>k (a weight's input size) and the group size must be multiples of this.</summary>
    public const int KMultiple = 64;
    /// <summary>Rows are stored in tiles of this many (the last tile padded).</summary>
    public const int TileRows = 16;
    /// <summary>Largest group the quantizer takes (a group's words must fit one warp).</summary>
    public const int MaxGroup = 256;
    /// <summary>Most rows of x <see cref="Gemv"/> serves.</summary>
    public const int MaxRows = TensorCoreGemvOps.MaxRows;
    private const int Threads = 256;

    private readonly CudaKernel[,] _gemv; // [group 64, 128, 256][n8, n16, n32, n8r]: the group size is compiled in
    private readonly CudaKernel _quantize, _repackAwq, _dequantize;

    public Int4Ops(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _gemv = new[,]
        {
            { lib.GetKernel(GemvN8G64Entry), lib.GetKernel(GemvN16G64Entry), lib.GetKernel(GemvN32G64Entry), lib.GetKernel(GemvN8RunsG64Entry) },
            { lib.GetKernel(GemvN8G128Entry), lib.GetKernel(GemvN16G128Entry), lib.GetKernel(GemvN32G128Entry), lib.GetKernel(GemvN8RunsG128Entry) },
            { lib.GetKernel(GemvN8G256Entry), lib.GetKernel(GemvN16G256Entry), lib.GetKernel(GemvN32G256Entry), lib.GetKernel(GemvN8RunsG256Entry) },
        };
        _quantize = lib.GetKernel(QuantizeEntry);
        _repackAwq = lib.GetKernel(RepackAwqEntry);
        _dequantize = lib.GetKernel(DequantizeEntry);
    }

    /// <summary>Rows rounded up to whole tiles: the row count the codes and the scale table are laid out for.</summary>
    public static int PaddedRows(int n) => (n + TileRows - 1) / TileRows * TileRows;

    /// <summary>Bytes of the codes of an int4 weight [n, k] (two per byte, rows padded to 16).</summary>
    public static long CodeBytes(int n, int k) => (long)PaddedRows(n) * k / 2;

    /// <summary>Bytes of its scale/zero words: one per (group, padded row).</summary>
    public static long ScaleZeroBytes(int n, int k, int group) => 4L * (k / group) * PaddedRows(n);

    /// <summary>Whether the GPU kernels take this input size and group size.</summary>
    public static bool Supports(int k, int group) => SupportsGroup(group) && k > 0 && k % group == 0;

    /// <summary>Whether the GPU kernels take this group size: a power of two in [64, 256] (a multiple of the 64-k chunk).</summary>
    public static bool SupportsGroup(int group) => group >= KMultiple && group <= MaxGroup && (group & (group - 1)) == 0;

    /// <summary>Byte offset of the 32-bit word holding code (row, kk) (host mirror of int4_word_offset).</summary>
    public static long WordOffset(int row, int kk, int k)
    {
        int tile = row >> 4, r = row & 15, chunk = kk >> 6, w = kk & 63, e = w & 15;
        int lane = (r & 7) * 4 + (w >> 4), word = 2 * (r >> 3) + (e >> 3);
        return (long)tile * 8 * k + (long)chunk * 512 + lane * 16 + word * 4;
    }

    /// <summary>Bit position of code kk within its word (host mirror of int4_bit).</summary>
    public static int Bit(int kk)
    {
        int e = kk & 15;
        return 4 * ((e & 7) >> 1) + 16 * (e & 1);
    }

    /// <summary>The scale/zero word: fp16 scale in the low half, bf16 of −(128 + z) in the high half.</summary>
    public static uint PackScaleZero(Half scale, int zero) => BitConverter.HalfToUInt16Bits(scale) | ((uint)(0xC300 | zero) << 16);

    /// <summary>Whether <paramref name="splits"/> fits the workspace (<see cref="TensorCoreGemvOps.SplitsFit"/>) and splits on group boundaries.</summary>
    public static bool SplitsFit(int n, int k, int group, int rows, int splits) =>
        splits <= k / group && TensorCoreGemvOps.SplitsFit(n, k, rows, splits);

    /// <summary>Split counts the load-time tuner tries for this shape.</summary>
    public static IEnumerable<int> SplitCandidates(int n, int k, int group, int rows) =>
        TensorCoreGemvOps.SplitCandidates(n, k, rows).Where(s => s <= k / group);

    /// <summary>
    /// Row-major codes [n, k] (0..15), scales and zeros [k / group, n] → the device images: codes in the int4 layout
    /// (<see cref="CodeBytes"/>) and the scale/zero words (<see cref="ScaleZeroBytes"/>), padding zero. For tests and tools.
    /// </summary>
    public static (byte[] Codes, uint[] ScaleZero) Pack(ReadOnlySpan<byte> codes, ReadOnlySpan<Half> scales, ReadOnlySpan<byte> zeros,
        int n, int k, int group)
    {
        var tiled = new byte[CodeBytes(n, k)];
        for (int r = 0; r < n; r++)
            for (int j = 0; j < k; j++)
            {
                long at = WordOffset(r, j, k);
                uint word = BitConverter.ToUInt32(tiled, (int)at) | (uint)codes[r * k + j] << Bit(j);
                BitConverter.TryWriteBytes(tiled.AsSpan((int)at, 4), word);
            }
        int groups = k / group, pad = PaddedRows(n);
        var sz = new uint[groups * pad];
        for (int g = 0; g < groups; g++)
            for (int r = 0; r < n; r++) sz[g * pad + r] = PackScaleZero(scales[g * n + r], zeros[g * n + r]);
        return (tiled, sz);
    }

    /// <summary>Most rows the block-per-tile plan (gemv_int4_n8_*, n8r_*) serves; more take a warp per tile.</summary>
    private const int BlockPerTileMaxRows = 8;

    /// <summary>Most rows the even-runs build is offered for (<see cref="Variants"/>).</summary>
    public const int MaxEvenRunsRows = 4;

    /// <summary>
    /// The builds of the int4 GEMV that serve <paramref name="rows"/> rows, for the decode tuner to time: the standard
    /// plan at every count, and up to <see cref="MaxEvenRunsRows"/> also <see cref="TensorCoreVariant.EvenRuns"/>
    /// (kernels/gemv_int4.cu). Not at 8 rows, although the kernel serves them: timed alone the tuner took it for every
    /// product there, and the step ran 2% slower than on the batches in turn (H200, session 28).
    /// </summary>
    public static TensorCoreVariant[] Variants(int rows) =>
        rows is >= 1 and <= MaxEvenRunsRows ? [TensorCoreVariant.Standard, TensorCoreVariant.EvenRuns] : [TensorCoreVariant.Standard];

    /// <summary>
    /// y[m, :] (+)= W·x[m, :] for m in [0, <paramref name="rows"/>), rows 1..32, W int4 [n, k] (codes at <paramref name="w"/>,
    /// scale/zero words at <paramref name="scaleZero"/>), x bf16 [rows, k], y fp32 [rows, n]. The workspace and split
    /// rules are the tensor-core GEMV's, and splits start on group boundaries (<see cref="SplitsFit"/>). Deterministic.
    /// <paramref name="variant"/>: <see cref="TensorCoreVariant.Standard"/>, or up to 8 rows <see cref="TensorCoreVariant.EvenRuns"/>.
    /// </summary>
    public unsafe void Gemv(CudaStream s, ulong w, ulong scaleZero, ulong x, ulong y, int rows, int n, int k, int group,
        bool accumulate, ulong workspace, int splits, TensorCoreVariant variant = TensorCoreVariant.Standard)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        LaunchChecks.Aligned(scaleZero, 4, nameof(scaleZero));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        LaunchChecks.Aligned(workspace, 16, nameof(workspace));
        if (rows < 1 || rows > MaxRows) throw new ArgumentException($"rows must be in [1, {MaxRows}] (got {rows}).", nameof(rows));
        LaunchChecks.Positive(n, nameof(n));
        CheckShape(k, group);
        if (!SplitsFit(n, k, group, rows, splits)) throw new ArgumentException($"{splits} splits do not fit n = {n}, k = {k}, group {group}, rows = {rows}.", nameof(splits));
        // Up to 8 rows a block of 8 warps per 16-row tile; past that a block of 4 warps on 4 tiles (kernels/gemv_int4.cu).
        bool blockPerTile = rows <= BlockPerTileMaxRows;
        // the even-runs build serves the block-per-tile plan's rows (the tuner offers it for fewer: Variants)
        if (variant != TensorCoreVariant.Standard && !(variant == TensorCoreVariant.EvenRuns && blockPerTile))
            throw new ArgumentException($"the int4 GEMV has no {variant} build for {rows} rows.", nameof(variant));
        int build = blockPerTile ? (variant == TensorCoreVariant.EvenRuns ? 3 : 0) : rows <= 16 ? 1 : 2; // _gemv's column
        int tilesPerBlock = blockPerTile ? 1 : 4;
        uint blocks = (uint)((n + tilesPerBlock * TileRows - 1) / (tilesPerBlock * TileRows));
        ulong tickets = workspace, part = workspace + (ulong)TensorCoreGemvOps.TicketBytes;
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &w, &scaleZero, &x, &y, &part, &tickets, &n, &k, &rows, &acc };
        _gemv[System.Numerics.BitOperations.Log2((uint)group) - 6, build].Launch(new Dim3(blocks, (uint)splits),
            new Dim3(blockPerTile ? 256u : 128u), 0, s, args);
    }

    /// <summary>
    /// bf16 rows [rows, k] at <paramref name="src"/> → rows [row0, row0 + rows) of the int4 weight [n, k] at
    /// <paramref name="dst"/> and <paramref name="scaleZero"/>, by round-to-nearest with a scale and zero point per
    /// <paramref name="group"/> inputs (kernels/quantize_int4.cu has the formula).
    /// </summary>
    public unsafe void QuantizeRows(CudaStream s, ulong src, ulong dst, ulong scaleZero, int row0, int rows, int n, int k, int group)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Aligned(scaleZero, 4, nameof(scaleZero));
        LaunchChecks.NonNegative(row0, nameof(row0));
        LaunchChecks.Positive(rows, nameof(rows));
        if (row0 + rows > n) throw new ArgumentException($"rows [{row0}, {row0 + rows}) run past n = {n}.", nameof(rows));
        CheckShape(k, group);
        int pad = PaddedRows(n);
        long words = (long)rows * (k / 8);
        void** args = stackalloc void*[] { &src, &dst, &scaleZero, &row0, &rows, &k, &pad, &group };
        _quantize.Launch(new Dim3((uint)((words + Threads - 1) / Threads)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// One AutoAWQ "gemm" linear of <paramref name="outFeatures"/> outputs (qweight I32 [k, out/8], qzeros I32
    /// [k/group, out/8], scales fp16 [k/group, out], all on the device) → rows [row0, row0 + out) of the int4 weight [n, k].
    /// </summary>
    public unsafe void RepackAwq(CudaStream s, ulong qweight, ulong qzeros, ulong scales, ulong dst, ulong scaleZero,
        int row0, int outFeatures, int n, int k, int group)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(qweight, 4, nameof(qweight));
        LaunchChecks.Aligned(qzeros, 4, nameof(qzeros));
        LaunchChecks.Aligned(scales, 2, nameof(scales));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Aligned(scaleZero, 4, nameof(scaleZero));
        LaunchChecks.NonNegative(row0, nameof(row0));
        LaunchChecks.Positive(outFeatures, nameof(outFeatures));
        if (outFeatures % 8 != 0) throw new ArgumentException($"AWQ packs 8 outputs per int32; {outFeatures} is not a multiple of 8.", nameof(outFeatures));
        if (row0 + outFeatures > n) throw new ArgumentException($"rows [{row0}, {row0 + outFeatures}) run past n = {n}.", nameof(outFeatures));
        CheckShape(k, group);
        int pad = PaddedRows(n);
        long words = (long)outFeatures * (k / 8);
        void** args = stackalloc void*[] { &qweight, &qzeros, &scales, &dst, &scaleZero, &row0, &outFeatures, &k, &pad, &group };
        _repackAwq.Launch(new Dim3((uint)((words + Threads - 1) / Threads)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>The int4 weight [n, k] → row-major bf16 [n, k] at <paramref name="dst"/> ((q − z) · s, rounded to bf16).</summary>
    public unsafe void DequantizeRows(CudaStream s, ulong src, ulong scaleZero, ulong dst, int n, int k, int group)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(scaleZero, 4, nameof(scaleZero));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Positive(n, nameof(n));
        CheckShape(k, group);
        long rowsL = n;
        int pad = PaddedRows(n);
        void** args = stackalloc void*[] { &src, &scaleZero, &dst, &rowsL, &k, &pad, &group };
        _dequantize.Launch(new Dim3(LaunchChecks.GridStrideBlocks(rowsL * (k / 8), Threads)), new Dim3(Threads), 0, s, args);
    }

    private static void CheckShape(int k, int group)
    {
        if (!Supports(k, group))
            throw new ArgumentException($"k ({k}) must be a positive multiple of {KMultiple} and of the group size ({group}), " +
                                        $"a power of two in [{KMultiple}, {MaxGroup}].", nameof(k));
    }
}

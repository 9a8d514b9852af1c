using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// FP8 (E4M3) weight kernels: the CUDA-core GEMV for 1–4 rows (kernels/gemv_fp8.cu) and, in kernels/quantize.cu, the load-time quantizer (bf16 rows → codes + one fp32 scale
/// per output row), the repacker for checkpoints that are already fp8, and the dequantizer that feeds prefill-sized
/// products to the bf16 GEMM; and for prefill on the FP8 tensor cores (cuBLASLt, <see cref="CublasLt.MatmulFp8TN"/>) the
/// per-token activation quantizer and the untiler that gives cuBLASLt a row-major copy of a weight. FP8 weights live in the tile layout of kernels/fp8.cuh (the decode kernel's fragment
/// order; <see cref="TileOffset"/>), which is why rows are padded to 16 and k must be a multiple of 64. Decode
/// products over more rows run on <see cref="TensorCoreGemvOps"/>.
/// </summary>
internal sealed class Fp8Ops
{
    [KernelEntry] public const string GemvM1Entry = "gemv_fp8_m1";
    [KernelEntry] public const string GemvM2Entry = "gemv_fp8_m2";
    [KernelEntry] public const string GemvM3Entry = "gemv_fp8_m3";
    [KernelEntry] public const string GemvM4Entry = "gemv_fp8_m4";
    [KernelEntry] public const string TileGemvM1Entry = "gemv_fp8_tile_m1";
    [KernelEntry] public const string TileGemvM2Entry = "gemv_fp8_tile_m2";
    [KernelEntry] public const string QuantizeEntry = "quantize_fp8_rows";
    [KernelEntry] public const string RepackEntry = "repack_fp8_rows";
    [KernelEntry] public const string DequantizeEntry = "dequantize_fp8_rows";
    [KernelEntry] public const string QuantizeActivationsEntry = "quantize_fp8_act_rows";
    [KernelEntry] public const string UntileEntry = "untile_fp8_rows";
    [KernelEntry] public const string QuantizeSiluMulEntry = "quantize_fp8_silu_mul_rows";

    /// <summary>k (a weight's input size) must be a multiple of this.</summary>
    public const int KMultiple = 64;
    /// <summary>Rows are stored in tiles of this many (the last tile padded).</summary>
    public const int TileRows = 16;
    private const int QuantThreads = 256;
    // kernels/quantize.cu's kSiluMulThreads: QwQ's 27,648-wide row is 3,456 vectors, 9 a thread (session 25's micro-benchmark).
    private const int SiluMulThreads = 384;

    /// <summary>Most rows of x <see cref="Gemv"/> serves.</summary>
    public const int MaxGemvRows = 4;
    /// <summary>Most rows of x <see cref="TileGemv"/> serves (from 4 rows it was slower than <see cref="Gemv"/>: registers).</summary>
    public const int MaxTileGemvRows = 2;

    private readonly CudaKernel[] _gemv; // index rows − 1
    private readonly CudaKernel[] _tileGemv; // index rows − 1
    /// <summary>Inputs of a row of activations quantized for cuBLASLt must be a multiple of this (its FP8 alignment: 16 bytes of codes).</summary>
    public const int ActivationKMultiple = 16;

    /// <summary>
    /// Widest intermediate <see cref="QuantizeSiluMul"/> takes: a row's bf16 activations wait in its shared memory (2
    /// bytes each, within the 227 KB an sm_90 block may opt into; QwQ-32B's 27,648 take 54 KB).
    /// </summary>
    public const int MaxSiluMulIntermediate = 98304;

    private readonly CudaKernel _quantize, _repack, _dequantize, _quantizeActivations, _untile, _quantizeSiluMul;
    private int _siluMulSharedBytes; // the dynamic shared memory _quantizeSiluMul has been allowed so far

    public Fp8Ops(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _gemv = [lib.GetKernel(GemvM1Entry), lib.GetKernel(GemvM2Entry), lib.GetKernel(GemvM3Entry), lib.GetKernel(GemvM4Entry)];
        _tileGemv = [lib.GetKernel(TileGemvM1Entry), lib.GetKernel(TileGemvM2Entry)];
        _quantize = lib.GetKernel(QuantizeEntry);
        _repack = lib.GetKernel(RepackEntry);
        _dequantize = lib.GetKernel(DequantizeEntry);
        _quantizeActivations = lib.GetKernel(QuantizeActivationsEntry);
        _untile = lib.GetKernel(UntileEntry);
        _quantizeSiluMul = lib.GetKernel(QuantizeSiluMulEntry);
    }

    /// <summary>Bytes of an fp8 weight [n, k] in the tile layout (rows padded to a multiple of 16).</summary>
    public static long TiledBytes(int n, int k) => (long)(n + TileRows - 1) / TileRows * TileRows * k;

    /// <summary>Where code (row, kk) of a [n, k] weight sits in the tile layout (host mirror of fp8_tile_offset).</summary>
    public static long TileOffset(int row, int kk, int k)
    {
        int tile = row >> 4, r = row & 15, chunk = kk >> 6, w = kk & 63;
        return (long)tile * 16 * k + (long)chunk * 1024 + (r >> 3) * 512 + ((r & 7) * 4 + (w >> 4)) * 16 + (w & 15);
    }

    /// <summary>Row-major codes [n, k] → the tile layout (<see cref="TiledBytes"/> bytes, padding zero). For tests and tools.</summary>
    public static byte[] PackTiles(ReadOnlySpan<byte> codes, int n, int k)
    {
        var tiled = new byte[TiledBytes(n, k)];
        for (int r = 0; r < n; r++)
            for (int j = 0; j < k; j++) tiled[TileOffset(r, j, k)] = codes[r * k + j];
        return tiled;
    }

    /// <summary>
    /// CUDA cores (kernels/gemv_fp8.cu): y[m, :] (+)= scale ⊙ (W·x[m, :]) for m in [0, <paramref name="rows"/>), rows 1–4,
    /// W tile-layout e4m3 [n, k], <paramref name="scale"/> fp32 [n], x bf16 [rows, k], y fp32 [rows, n]. k split over
    /// <paramref name="splits"/> blocks (<see cref="TensorCoreGemvOps.SplitsFit"/>); <paramref name="workspace"/> is the
    /// tensor-core GEMV's (<see cref="TensorCoreGemvOps.WorkspaceBytes"/>, zeroed once). Deterministic.
    /// </summary>
    public unsafe void Gemv(CudaStream s, ulong w, ulong scale, ulong x, ulong y, int rows, int n, int k, bool accumulate,
        ulong workspace, int splits)
    {
        CheckProduct(s, w, scale, x, y, rows, MaxGemvRows, n, k);
        LaunchChecks.Aligned(workspace, 16, nameof(workspace));
        if (!TensorCoreGemvOps.SplitsFit(n, k, rows, splits)) throw new ArgumentException($"{splits} splits do not fit n = {n}, k = {k}.", nameof(splits));
        uint blocks = (uint)((n + 4 * TileRows - 1) / (4 * TileRows));
        ulong tickets = workspace, part = workspace + (ulong)TensorCoreGemvOps.TicketBytes;
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &w, &scale, &x, &y, &part, &tickets, &n, &k, &acc };
        _gemv[rows - 1].Launch(new Dim3(blocks, (uint)splits), new Dim3(128), 0, s, args);
    }

    /// <summary>
    /// The same product as <see cref="Gemv"/> for 1–2 rows with one block of 8 warps per 16-row tile, the warps taking
    /// turns over k (kernels/gemv_fp8.cu, gemv_fp8_tile_m*): no k splits and no workspace, so products with few tiles
    /// (qkv, o_proj) keep enough loads in flight. The decode tuner picks it per product where it is faster. Deterministic.
    /// </summary>
    public unsafe void TileGemv(CudaStream s, ulong w, ulong scale, ulong x, ulong y, int rows, int n, int k, bool accumulate)
    {
        CheckProduct(s, w, scale, x, y, rows, MaxTileGemvRows, n, k);
        uint blocks = (uint)((n + TileRows - 1) / TileRows);
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &w, &scale, &x, &y, &n, &k, &acc };
        _tileGemv[rows - 1].Launch(new Dim3(blocks), new Dim3(256), 0, s, args);
    }

    /// <summary>
    /// bf16 rows [rows, k] at <paramref name="src"/> → rows [row0, row0 + rows) of the fp8 weight at <paramref name="dst"/>
    /// (tile layout, k columns), with their scales = amax / 448 per row (1 for an all-zero row) in <paramref name="scale"/>
    /// [n]; codes rounded to nearest even and saturated.
    /// </summary>
    public unsafe void QuantizeRows(CudaStream s, ulong src, ulong dst, ulong scale, int row0, int rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.NonNegative(row0, nameof(row0));
        LaunchChecks.Positive(rows, nameof(rows));
        CheckK(k);
        void** args = stackalloc void*[] { &src, &dst, &scale, &row0, &k };
        _quantize.Launch(new Dim3((uint)rows), new Dim3(QuantThreads), 0, s, args);
    }

    /// <summary>Row-major codes [rows, k] at <paramref name="src"/> → rows [row0, row0 + rows) of the tile-layout weight at <paramref name="dst"/>.</summary>
    public unsafe void RepackRows(CudaStream s, ulong src, ulong dst, int row0, int rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.NonNegative(row0, nameof(row0));
        LaunchChecks.Positive(rows, nameof(rows));
        CheckK(k);
        long pieces = (long)rows * (k / 16);
        void** args = stackalloc void*[] { &src, &dst, &row0, &rows, &k };
        _repack.Launch(new Dim3(LaunchChecks.GridStrideBlocks(pieces, 256)), new Dim3(256), 0, s, args);
    }

    /// <summary>Tile-layout e4m3 [rows, k] + fp32 scale [rows] → row-major bf16 [rows, k] (code × scale, rounded to bf16).</summary>
    public unsafe void DequantizeRows(CudaStream s, ulong src, ulong scale, ulong dst, long rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Positive(rows, nameof(rows));
        CheckK(k);
        long pieces = rows * (k / 16);
        void** args = stackalloc void*[] { &src, &scale, &dst, &rows, &k };
        _dequantize.Launch(new Dim3(LaunchChecks.GridStrideBlocks(pieces, 256)), new Dim3(256), 0, s, args);
    }

    /// <summary>
    /// What both per-token quantizers (<see cref="QuantizeActivations"/>, <see cref="QuantizeSiluMul"/>) ask of a launch:
    /// bf16 <paramref name="input"/> read in 16-byte vectors, row-major e4m3 <paramref name="codes"/> [rows, k] and fp32
    /// <paramref name="scales"/> [rows] for the FP8 GEMM, which reads the scales as a vector (16-byte aligned).
    /// </summary>
    private static void CheckTokenCodesLaunch(CudaStream s, ulong input, string inputName, ulong codes, ulong scales, int rows)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(input, 16, inputName);
        LaunchChecks.Aligned(codes, 16, nameof(codes));
        LaunchChecks.Aligned(scales, 16, nameof(scales));
        LaunchChecks.Positive(rows, nameof(rows));
    }

    /// <summary>
    /// Per-token activation quantization for the FP8 GEMM: bf16 <paramref name="x"/> [rows, k] → row-major e4m3
    /// <paramref name="codes"/> [rows, k] and fp32 <paramref name="scales"/> [rows], scale = amax / 448 per row (1 for an
    /// all-zero row), codes x · (448 / amax) rounded to nearest even and saturated: <see cref="Weights.Quantization.Fp8E4M3.QuantizePerToken"/>
    /// bit for bit.
    /// </summary>
    public unsafe void QuantizeActivations(CudaStream s, ulong x, ulong codes, ulong scales, int rows, int k)
    {
        CheckTokenCodesLaunch(s, x, nameof(x), codes, scales, rows);
        if (k <= 0 || k % ActivationKMultiple != 0) throw new ArgumentException($"k ({k}) must be a positive multiple of {ActivationKMultiple}.", nameof(k));
        void** args = stackalloc void*[] { &x, &codes, &scales, &k };
        _quantizeActivations.Launch(new Dim3((uint)rows), new Dim3(QuantThreads), 0, s, args);
    }

    /// <summary>
    /// SiLU·mul into the FP8 GEMM's input: bf16 <paramref name="gateUp"/> [rows, 2 · I] (gate | up, as prefill's gate_up
    /// product writes it) → <paramref name="codes"/> e4m3 [rows, I] and <paramref name="scales"/> fp32 [rows], exactly
    /// <c>ActivationOps.SiluMulBf16</c> followed by <see cref="QuantizeActivations"/> (kernels/quantize.cu,
    /// <c>quantize_fp8_silu_mul_rows</c>) without the bf16 activations in memory. I a multiple of
    /// <see cref="ActivationKMultiple"/>, at most <see cref="MaxSiluMulIntermediate"/>.
    /// </summary>
    public unsafe void QuantizeSiluMul(CudaStream s, ulong gateUp, ulong codes, ulong scales, int rows, int intermediate)
    {
        CheckTokenCodesLaunch(s, gateUp, nameof(gateUp), codes, scales, rows);
        if (intermediate <= 0 || intermediate % ActivationKMultiple != 0 || intermediate > MaxSiluMulIntermediate)
            throw new ArgumentException($"intermediate ({intermediate}) must be a positive multiple of {ActivationKMultiple} up to {MaxSiluMulIntermediate}.", nameof(intermediate));
        int shared = 2 * intermediate;
        if (shared > _siluMulSharedBytes)
        {
            // past 48 KB of static and dynamic together a kernel must opt in to its dynamic shared memory: opt in for
            // every larger size (once per size, not per launch), whatever the threshold
            _quantizeSiluMul.SetMaxDynamicSharedMemory(shared);
            _siluMulSharedBytes = shared;
        }
        void** args = stackalloc void*[] { &gateUp, &codes, &scales, &intermediate };
        _quantizeSiluMul.Launch(new Dim3((uint)rows), new Dim3(SiluMulThreads), shared, s, args);
    }

    /// <summary>Tile-layout e4m3 [rows, k] → row-major e4m3 [rows, k] (the codes only; scales stay where they are).</summary>
    public unsafe void UntileRows(CudaStream s, ulong src, ulong dst, long rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Positive(rows, nameof(rows));
        CheckK(k);
        long pieces = rows * (k / 16);
        void** args = stackalloc void*[] { &src, &dst, &rows, &k };
        _untile.Launch(new Dim3(LaunchChecks.GridStrideBlocks(pieces, 256)), new Dim3(256), 0, s, args);
    }

    /// <summary>The host checks both GEMVs make: stream, alignments of w, scale, x and y, 1 to <paramref name="maxRows"/> rows, n and k.</summary>
    private static void CheckProduct(CudaStream s, ulong w, ulong scale, ulong x, ulong y, int rows, int maxRows, int n, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        if (rows < 1 || rows > maxRows) throw new ArgumentException($"rows must be in [1, {maxRows}] (got {rows}).", nameof(rows));
        LaunchChecks.Positive(n, nameof(n));
        CheckK(k);
    }

    private static void CheckK(int k)
    {
        if (k <= 0 || k % KMultiple != 0) throw new ArgumentException($"k ({k}) must be a positive multiple of {KMultiple}.", nameof(k));
    }
}

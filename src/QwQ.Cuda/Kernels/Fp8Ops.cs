using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// FP8 (E4M3) weight kernels (kernels/gemv_fp8.cu, kernels/quantize.cu): CUDA-core decode products
/// y (+)= scale ⊙ (W·x) over 1–4 rows with W e4m3 [n, k] and one fp32 scale per output row (more rows:
/// <see cref="TensorCoreGemvOps"/>), and the load-time quantizer / the dequantizer that feeds prefill-sized products
/// to the bf16 GEMM. x is bf16, y fp32, as in <see cref="GemvOps"/>.
/// </summary>
internal sealed class Fp8Ops
{
    [KernelEntry] public const string GemvM1Entry = "gemv_fp8_m1";
    [KernelEntry] public const string GemvM2Entry = "gemv_fp8_m2";
    [KernelEntry] public const string GemvM3Entry = "gemv_fp8_m3";
    [KernelEntry] public const string GemvM4Entry = "gemv_fp8_m4";
    [KernelEntry] public const string QuantizeEntry = "quantize_fp8_rows";
    [KernelEntry] public const string DequantizeEntry = "dequantize_fp8_rows";

    /// <summary>Most rows of x the CUDA-core kernels serve.</summary>
    public const int MaxGemvRows = 4;
    private const int Threads = 128;
    private const int RowsPerBlock = 8;     // 4 warps × 2 rows (kernels/gemv_fp8.cu)
    private const int QuantThreads = 256;

    private readonly CudaKernel[] _gemv;    // index m − 1
    private readonly CudaKernel _quantize, _dequantize;

    public Fp8Ops(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _gemv = [lib.GetKernel(GemvM1Entry), lib.GetKernel(GemvM2Entry), lib.GetKernel(GemvM3Entry), lib.GetKernel(GemvM4Entry)];
        _quantize = lib.GetKernel(QuantizeEntry);
        _dequantize = lib.GetKernel(DequantizeEntry);
    }

    /// <summary>
    /// y[m, :] (+)= scale ⊙ (W·x[m, :]) for m in [0, <paramref name="rows"/>), rows 1..4, on the CUDA cores.
    /// <paramref name="w"/> e4m3 [n, k], <paramref name="scale"/> fp32 [n], x bf16 [rows, k], y fp32 [rows, n]; k % 16 == 0.
    /// </summary>
    public unsafe void Gemv(CudaStream s, ulong w, ulong scale, ulong x, ulong y, int rows, int n, int k, bool accumulate)
    {
        Check(s, w, scale, x, y, n, k, 16);
        if (rows < 1 || rows > MaxGemvRows) throw new ArgumentException($"rows must be in [1, {MaxGemvRows}] (got {rows}).", nameof(rows));
        int acc = accumulate ? 1 : 0;
        uint blocks = (uint)((n + (long)RowsPerBlock - 1) / RowsPerBlock);
        void** args = stackalloc void*[] { &w, &scale, &x, &y, &n, &k, &acc };
        _gemv[rows - 1].Launch(new Dim3(blocks), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// bf16 [rows, k] → e4m3 [rows, k] + fp32 scale [rows] = amax / 448 per row (1 for an all-zero row), codes rounded
    /// to nearest even and saturated. k % 8 == 0.
    /// </summary>
    public unsafe void QuantizeRows(CudaStream s, ulong src, ulong dst, ulong scale, int rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(dst, 8, nameof(dst));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.Positive(rows, nameof(rows));
        LaunchChecks.Positive(k, nameof(k));
        if (k % 8 != 0) throw new ArgumentException($"k ({k}) must be a multiple of 8.", nameof(k));
        void** args = stackalloc void*[] { &src, &dst, &scale, &k };
        _quantize.Launch(new Dim3((uint)rows), new Dim3(QuantThreads), 0, s, args);
    }

    /// <summary>e4m3 [rows, k] + fp32 scale [rows] → bf16 [rows, k] (code × scale, rounded to bf16). k % 16 == 0.</summary>
    public unsafe void DequantizeRows(CudaStream s, ulong src, ulong scale, ulong dst, long rows, int k)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 16, nameof(src));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.Aligned(dst, 16, nameof(dst));
        LaunchChecks.Positive(rows, nameof(rows));
        LaunchChecks.Positive(k, nameof(k));
        if (k % 16 != 0) throw new ArgumentException($"k ({k}) must be a multiple of 16.", nameof(k));
        long pieces = rows * (k / 16);
        void** args = stackalloc void*[] { &src, &scale, &dst, &rows, &k };
        _dequantize.Launch(new Dim3(LaunchChecks.GridStrideBlocks(pieces, 256)), new Dim3(256), 0, s, args);
    }

    private static void Check(CudaStream s, ulong w, ulong scale, ulong x, ulong y, int n, int k, int kMultiple)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        LaunchChecks.Aligned(scale, 4, nameof(scale));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        LaunchChecks.Positive(n, nameof(n));
        if (k <= 0 || k % kMultiple != 0) throw new ArgumentException($"k ({k}) must be a positive multiple of {kMultiple}.", nameof(k));
    }
}

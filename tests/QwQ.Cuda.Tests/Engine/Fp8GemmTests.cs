using QwQ.Cuda.Engine;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;
using QwQ.Cuda.Tests.Kernels;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>
/// The FP8 prefill GEMM of <see cref="LinearOps"/> (per-token activation quantization, untiled weight, cuBLASLt e4m3 with
/// outer-vector scales) on tile-layout fp8 weights: against a plain product of the dequantized weight and the
/// quantized-then-dequantized activations (what it computes, up to the order of the fp32 sums: ≤ 1e-2), and against the
/// bf16 detour it replaces (bf16 activations: the difference is the activations' e4m3 rounding, ~2.5% rms for normal
/// data: ≤ 3e-2), with and without accumulation into y, at row counts on both sides of where the engine switches to it
/// (17 and 128 rows run on the tensor-core GEMV in the engine; the GEMM must be right there too) and through
/// <see cref="LinearOps.Apply"/> above 128 rows. There is no bias here: q/k/v biases are added with RoPE, after the
/// product, on every path. Skipped without a GPU, and on GPUs other than sm_90 (cuBLASLt's outer-vector scaling).
/// </summary>
public sealed class Fp8GemmTests : KernelTestBase
{
    private const int MaxRows = 512, MaxIn = 27648; // QwQ-32B's widest input (down_proj's), for the fused SiLU·mul case
    private Fp8Ops _fp8 = null!;
#pragma warning disable NUnit1032 // created in CreateOps (the base class's [OneTimeSetUp]) and disposed in FreeOps ([OneTimeTearDown])
    private LinearOps? _linear;
#pragma warning restore NUnit1032
    private readonly List<IDisposable> _gpu = [];
#pragma warning disable NUnit1032 // owned by _gpu (disposed in FreeOps)
    private DeviceBuffer _actCodes = null!, _actScales = null!; // the FP8 GEMM's per-token input
#pragma warning restore NUnit1032
    private string? _unsupported;

    protected override void CreateOps()
    {
        if (Context.ComputeCapability.Major != 9)
        {
            _unsupported = $"the FP8 GEMM's outer-vector scaling needs compute capability 9.x (this GPU: {Context.ComputeCapability.Major}.{Context.ComputeCapability.Minor})";
            return;
        }
        _fp8 = new Fp8Ops(Lib);
        var scratch = Own(DeviceBuffer.Allocate(2L * 1792 * 5120));          // bf16 [largest weight here]: the dequantize path's and the untiled codes'
        _actCodes = Own(DeviceBuffer.Allocate((long)MaxRows * MaxIn));        // e4m3 [rows, in]
        _actScales = Own(DeviceBuffer.Allocate(4L * MaxRows));               // fp32 [rows]
        var gemm = new Fp8Gemm(Own(CublasLt.Create()), FastAccum: false, _actCodes.Ptr, _actScales.Ptr, MaxRows, MaxIn);
        _linear = new LinearOps(new GemvOps(Lib), new TensorCoreGemvOps(Lib), _fp8, null, Own(Cublas.Create(Stream)), null, null,
            gemvMaxRows: 4, mmaMaxRows: 0, Context.MultiprocessorCount, scratch.Ptr, gemm);
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _gpu.Add(d);
        return d;
    }

    [OneTimeTearDown]
    public void FreeOps()
    {
        _linear?.Dispose();
        for (int i = _gpu.Count - 1; i >= 0; i--) _gpu[i].Dispose();
    }

    [SetUp]
    public void RequireSm90()
    {
        if (_unsupported is not null) Assert.Ignore(_unsupported);
    }

    // (rows, out, in): small; QwQ's o_proj at TP 4 over 128 rows; qkv at TP 4 (7168 / 4 × 5120 / 4 … reduced in K); down_proj at TP 8.
    [TestCase(17, 48, 64)]
    [TestCase(128, 1280, 1280)]
    [TestCase(300, 1792, 1280)]
    [TestCase(300, 640, 3456)]
    public void MatchesTheProductOfTheDequantizedOperandsAndTheBf16Detour(int rows, int outF, int inF)
    {
        foreach (bool accumulate in new[] { false, true })
        {
            var (codes, scales, w) = Fp8KernelTests.RandomWeights(Rng, outF, inF);
            var dw = Upload<byte>(Fp8Ops.PackTiles(codes, outF, inF));
            var ds = Upload<float>(scales);
            var weight = new LinearWeight(dw.Ptr, outF, inF, WeightKind.Fp8, ds.Ptr);
            float[] x = NormalBf16((long)rows * inF);
            float[] y0 = accumulate ? Normal((long)rows * outF, 4f) : new float[(long)rows * outF];
            var dx = UploadBf16(x);

            // what the GEMM multiplies: x quantized per token, dequantized; the weight dequantized
            var xCodes = new byte[x.Length];
            var xScales = new float[rows];
            Fp8E4M3.QuantizePerToken(x, rows, inF, xCodes, xScales);
            var xq = new float[x.Length];
            for (int r = 0; r < rows; r++) Fp8E4M3.ToFloat(xCodes.AsSpan(r * inF, inF), xScales[r], xq.AsSpan(r * inF, inF));
            float[] expected = Product(xq, w, y0, rows, outF, inF);

            float[] Run(Action<ulong> apply)
            {
                var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)rows * outF);
                apply(dy.Ptr);
                return DownloadF32(dy);
            }
            string what = $"rows={rows} [{outF}x{inF}] acc={accumulate}";
            float[] got = Run(y => _linear!.ApplyFp8Gemm(Stream, weight, dx.Ptr, y, rows, accumulate));
            AssertClose(got, expected, 1e-2, $"FP8 GEMM against the dequantized operands, {what}");
            float[] detour = Run(y => _linear!.ApplyDequantized(Stream, weight, dx.Ptr, y, rows, accumulate));
            AssertClose(got, detour, 3e-2, $"FP8 GEMM against the bf16 detour, {what}");
            if (rows > 128)
                Assert.That(Run(y => _linear!.Apply(Stream, weight, dx.Ptr, y, rows, accumulate)), Is.EqualTo(got), $"Apply takes the FP8 GEMM above 128 rows, {what}");
        }
    }

    /// <summary>
    /// Prefill's qkv and gate_up products come out of the FP8 GEMM in bf16 (<see cref="LinearOps.TryApplyBf16Out"/>): the
    /// fp32 output rounded (the accumulator is the same; ≤ 4e-3 for bf16's 8 bits), the same bits through TryApplyBf16Out
    /// above 128 rows, and no bf16 output at or below 128 rows (decode batches write fp32).
    /// </summary>
    [TestCase(300, 1792, 1280)]
    [TestCase(129, 640, 3456)]
    public void Bf16OutputIsTheFp32OutputRounded(int rows, int outF, int inF)
    {
        var (codes, scales, _) = Fp8KernelTests.RandomWeights(Rng, outF, inF);
        var dw = Upload<byte>(Fp8Ops.PackTiles(codes, outF, inF));
        var ds = Upload<float>(scales);
        var weight = new LinearWeight(dw.Ptr, outF, inF, WeightKind.Fp8, ds.Ptr);
        var dx = UploadBf16(NormalBf16((long)rows * inF));
        var dy = PoisonedF32((long)rows * outF);
        _linear!.ApplyFp8Gemm(Stream, weight, dx.Ptr, dy.Ptr, rows, accumulate: false);
        float[] fp32 = DownloadF32(dy);

        var db = PoisonedBf16((long)rows * outF);
        _linear.ApplyFp8Gemm(Stream, weight, dx.Ptr, db.Ptr, rows, accumulate: false, outBf16: true);
        float[] bf16 = DownloadBf16(db);
        AssertClose(bf16, fp32, 4e-3, $"FP8 GEMM bf16 output against fp32, rows={rows} [{outF}x{inF}]");

        var dt = PoisonedBf16((long)rows * outF);
        Assert.That(_linear.TryApplyBf16Out(Stream, weight, dx.Ptr, dt.Ptr, rows), Is.True, "past 128 rows every GEMM writes bf16");
        Assert.That(DownloadBf16(dt), Is.EqualTo(bf16), "TryApplyBf16Out runs the FP8 GEMM's bf16 output");
        Assert.That(_linear.TryApplyBf16Out(Stream, weight, dx.Ptr, dt.Ptr, 128), Is.False, "128 rows are a decode batch: fp32");
        Assert.That(() => _linear.ApplyFp8Gemm(Stream, weight, dx.Ptr, dt.Ptr, rows, accumulate: true, outBf16: true),
            Throws.ArgumentException.With.Message.Contains("does not accumulate"));
    }

    /// <summary>
    /// Prefill's down_proj input on the FP8 GEMM straight from SiLU·mul (<see cref="LinearOps.TrySiluMulIntoFp8Input"/>,
    /// kernels/quantize.cu <c>quantize_fp8_silu_mul_rows</c>): the same codes and scales, bit for bit, as SiLU·mul into
    /// bf16 then the per-token quantization <see cref="LinearOps.Apply"/> runs, hence the same product; not offered at
    /// or below 128 rows (the GEMVs' rows), and an e4m3 input refused where the FP8 GEMM does not run.
    /// </summary>
    [TestCase(300, 1280, 3456)]
    [TestCase(129, 640, 1792)]
    [TestCase(129, 256, 27648)] // QwQ-32B's intermediate: 54 KB of shared memory a row, past the 48 KB default
    public void SiluMulIntoTheFp8InputEqualsSiluMulThenItsQuantization(int rows, int outF, int inter)
    {
        var (codes, scales, _) = Fp8KernelTests.RandomWeights(Rng, outF, inter);
        var dw = Upload<byte>(Fp8Ops.PackTiles(codes, outF, inter));
        var ds = Upload<float>(scales);
        var weight = new LinearWeight(dw.Ptr, outF, inter, WeightKind.Fp8, ds.Ptr);
        float[] gateUpValues = NormalBf16((long)rows * 2 * inter, 2f);
        Array.Clear(gateUpValues, inter, inter); // row 0's up half: an all-zero row of activations (scale 1, codes 0)
        var gateUp = UploadBf16(gateUpValues);

        // SiLU·mul into bf16, then the product quantizes it into the GEMM's input buffers
        var act = PoisonedBf16((long)rows * inter);
        new ActivationOps(Lib).SiluMulBf16(Stream, gateUp.Ptr, act.Ptr, rows, inter);
        var y = PoisonedF32((long)rows * outF);
        _linear!.Apply(Stream, weight, act.Ptr, y.Ptr, rows);
        float[] expected = DownloadF32(y);
        byte[] codesBefore = _actCodes.ToArray<byte>()[..(rows * inter)];
        float[] scalesBefore = _actScales.ToArray<float>()[..rows];

        _actCodes.Memset32(0x7F7F7F7F); // poison: the fused kernel must write every code and scale
        _actScales.Memset32(0x7FC00000);
        Assert.That(_linear.TrySiluMulIntoFp8Input(Stream, weight, gateUp.Ptr, rows, out LinearInput input), Is.True);
        Assert.That(input.IsFp8 && input.Fp8Codes == _actCodes.Ptr && input.Fp8Scales == _actScales.Ptr, "the GEMM's own input buffers");
        Stream.Synchronize();
        Assert.That(_actCodes.ToArray<byte>()[..(rows * inter)], Is.EqualTo(codesBefore), "codes");
        Assert.That(_actScales.ToArray<float>()[..rows], Is.EqualTo(scalesBefore), "scales");
        Assert.That(scalesBefore[0], Is.EqualTo(1f), "the all-zero row's scale");
        var y2 = PoisonedF32((long)rows * outF);
        _linear.Apply(Stream, weight, input, y2.Ptr, rows);
        Assert.That(DownloadF32(y2), Is.EqualTo(expected), "the product from the fused input");

        Assert.That(_linear.TrySiluMulIntoFp8Input(Stream, weight, gateUp.Ptr, 128, out _), Is.False, "128 rows run the GEMVs");
        Assert.That(() => _linear.Apply(Stream, weight, input, y2.Ptr, 128), Throws.InvalidOperationException);
    }

    [Test]
    public void KeptRowMajorCopiesAreTheUntiledCodesAndGiveTheSameProductsBitForBit()
    {
        // Two products, as a layer's would be kept (EngineOptions.Fp8PrefillCopy): each copy is the row-major codes, at a
        // 256-byte boundary, and the GEMM reading it gives exactly what untiling per pass gives.
        (int Out, int In)[] shapes = [(48, 64), (640, 1280)];
        var weights = new List<(LinearWeight W, byte[] Codes)>();
        foreach (var (o, i) in shapes)
        {
            var (codes, scales, _) = Fp8KernelTests.RandomWeights(Rng, o, i);
            weights.Add((new LinearWeight(Upload<byte>(Fp8Ops.PackTiles(codes, o, i)).Ptr, o, i, WeightKind.Fp8, Upload<float>(scales).Ptr), codes));
        }
        long bytes = shapes.Sum(s => ((long)s.Out * s.In + 255) / 256 * 256);
        using var copies = DeviceBuffer.Allocate(bytes);
        var gemm = new Fp8Gemm(Own(CublasLt.Create()), FastAccum: false, Own(DeviceBuffer.Allocate((long)MaxRows * MaxIn)).Ptr,
            Own(DeviceBuffer.Allocate(4L * MaxRows)).Ptr, MaxRows, MaxIn);
        using var keeping = new LinearOps(new GemvOps(Lib), new TensorCoreGemvOps(Lib), _fp8, null, Own(Cublas.Create(Stream)), null, null,
            gemvMaxRows: 4, mmaMaxRows: 0, Context.MultiprocessorCount, Own(DeviceBuffer.Allocate(2L * 640 * 1280)).Ptr, gemm);
        Assert.That(keeping.KeepsFp8RowMajor, Is.False);
        keeping.KeepFp8RowMajor(Stream, weights.Select(w => w.W), copies);
        Assert.That(keeping.KeepsFp8RowMajor, Is.True);
        Assert.That(keeping.PrefillPath(WeightKind.Fp8), Does.Contain("row-major copies kept"));
        byte[] all = copies.ToArray<byte>();
        long at = 0;
        foreach (var (w, codes) in weights)
        {
            Assert.That(all.AsSpan((int)at, codes.Length).ToArray(), Is.EqualTo(codes), $"[{w.Out}x{w.In}] copy");
            at += ((long)w.Out * w.In + 255) / 256 * 256;
        }
        foreach (var (w, _) in weights)
        {
            const int rows = 200;
            var dx = UploadBf16(NormalBf16((long)rows * w.In));
            var kept = PoisonedF32((long)rows * w.Out);
            var untiled = PoisonedF32((long)rows * w.Out);
            keeping.Apply(Stream, w, dx.Ptr, kept.Ptr, rows);
            _linear!.Apply(Stream, w, dx.Ptr, untiled.Ptr, rows);
            float[] got = DownloadF32(kept);
            AssertAllFinite(got, "kept");
            Assert.That(got, Is.EqualTo(DownloadF32(untiled)), $"[{w.Out}x{w.In}] over {rows} rows");
        }
        using var small = DeviceBuffer.Allocate(256);
        Assert.That(() => keeping.KeepFp8RowMajor(Stream, weights.Select(w => w.W), small),
            Throws.ArgumentException.With.Message.Contains("plan and weights disagree"));
    }

    [Test]
    public void RefusesShapesCublasLtCannotRun()
    {
        var (codes, scales, _) = Fp8KernelTests.RandomWeights(Rng, 40, 64);
        var dw = Upload<byte>(Fp8Ops.PackTiles(codes, 40, 64));
        var ds = Upload<float>(scales);
        var dx = UploadBf16(NormalBf16(200 * 64));
        var dy = PoisonedF32(200 * 40);
        var weight = new LinearWeight(dw.Ptr, 40, 64, WeightKind.Fp8, ds.Ptr);
        var e = Assert.Throws<ArgumentException>(() => _linear!.ApplyFp8Gemm(Stream, weight, dx.Ptr, dy.Ptr, 200, false));
        Assert.That(e!.Message, Does.Contain("multiples of 16"));
        // the engine's dispatch takes the bf16 detour for it instead
        _linear!.Apply(Stream, weight, dx.Ptr, dy.Ptr, 200);
        AssertAllFinite(DownloadF32(dy), "y");
    }

    /// <summary>y0 + x · wᵀ in double: x [rows, k], w [n, k].</summary>
    private static float[] Product(float[] x, float[] w, float[] y0, int rows, int n, int k)
    {
        var y = new float[(long)rows * n];
        Parallel.For(0, rows, r =>
        {
            for (int o = 0; o < n; o++)
            {
                double sum = y0[(long)r * n + o];
                for (int i = 0; i < k; i++) sum += (double)x[(long)r * k + i] * w[(long)o * k + i];
                y[(long)r * n + o] = (float)sum;
            }
        });
        return y;
    }
}

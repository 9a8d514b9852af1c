using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// The tensor-core GEMV (kernels/gemv_tc.cu) over bf16 and fp8 weights against a CPU product of the (dequantized)
/// weights, for every batch tile count (1–32 rows, with partial tiles), every split count the tuner may pick, odd row
/// counts and QwQ's shapes; and bit-identical on a second run (split partials added in a fixed order).
/// </summary>
public sealed class TensorCoreGemvKernelTests : KernelTestBase
{
    private const double Tolerance = 1e-4;
    private TensorCoreGemvOps _tc = null!;

    protected override void CreateOps() => _tc = new TensorCoreGemvOps(Lib);

    private void Check(bool fp8, int rows, int n, int k, bool accumulate, int? splitCount = null,
        TensorCoreVariant variant = TensorCoreVariant.Standard, float xMagnitude = 0)
    {
        DeviceBuffer dw, ds;
        float[] w;
        if (fp8)
        {
            var (codes, scales, dq) = Fp8KernelTests.RandomWeights(Rng, n, k);
            (dw, ds, w) = (Upload<byte>(Fp8Ops.PackTiles(codes, n, k)), Upload<float>(scales), dq);
        }
        else
        {
            w = NormalBf16((long)n * k, 0.05f);
            (dw, ds) = (UploadBf16(w), Alloc(16));
        }
        float[] x = NormalBf16((long)rows * k);
        if (xMagnitude > 0)  // every third row gets a few elements of about ±xMagnitude (bf16-exact), the rest unchanged
            for (int r = 0; r < rows; r += 3)
                for (int i = 0; i < 4; i++)
                {
                    long at = (long)r * k + Rng.Next(k);
                    x[at] = Bf16.Round((i % 2 == 0 ? 1 : -1) * xMagnitude * (1 + i) / 4);
                }
        float[] y0 = accumulate ? Normal((long)rows * n, 4f) : new float[(long)rows * n];
        var dx = UploadBf16(x);
        var ws = Alloc(TensorCoreGemvOps.WorkspaceBytes);
        ws.Memset32(0, Stream);
        int splits = splitCount ?? TensorCoreGemvOps.DefaultSplits(n, k, rows, Context.MultiprocessorCount);
        float[] Run()
        {
            var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)rows * n);
            _tc.Gemv(Stream, fp8, dw.Ptr, fp8 ? ds.Ptr : 0, dx.Ptr, dy.Ptr, rows, n, k, accumulate, ws.Ptr, splits, variant);
            return DownloadF32(dy);
        }
        float[] got = Run();
        var expected = new float[(long)rows * n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, rows, n, k);
        if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
        AssertClose(got, expected, Tolerance, $"gemv_tc {(fp8 ? "fp8" : "bf16")}{(variant != TensorCoreVariant.Standard ? $" {variant}" : "")} rows={rows} {n}x{k} acc={accumulate} splits={splits}");
        Assert.That(Run(), Is.EqualTo(got), "second run");
    }

    [Test]
    public void MatchesCpu([Values(false, true)] bool fp8, [Values(1, 5, 8, 9, 16, 17, 32)] int rows)
    {
        Check(fp8, rows, 1001, 2048, accumulate: false);
        Check(fp8, rows, 515, 5120, accumulate: true);
        Check(fp8, rows, 13, 64, accumulate: false);
    }

    [Test]
    public void EverySplitCountMatchesCpu([Values(false, true)] bool fp8)
    {
        foreach (int splits in TensorCoreGemvOps.SplitCandidates(1001, 2048, 32))
            Check(fp8, 32, 1001, 2048, accumulate: true, splits);
    }

    [Test]
    public void LiteFp8VariantMatchesCpu([Values(1, 8)] int rows, [Values(1, 3)] int splits)
    {
        Check(true, rows, 1001, 2048, accumulate: true, splits, TensorCoreVariant.Lite);
        Check(true, rows, 13, 64, accumulate: false, 1, TensorCoreVariant.Lite);
    }

    /// <summary>
    /// The wide fp8 build (a warp per four tiles): n that leaves the last warp's tiles partly past the end (1001 rows =
    /// 63 tiles: the last warp's fourth tile does not exist), a single tile, every split count, QwQ's gate_up width.
    /// </summary>
    [Test]
    public void WideFp8VariantMatchesCpu([Values(17, 24, 32)] int rows)
    {
        foreach (int splits in TensorCoreGemvOps.SplitCandidates(1001, 2048, rows))
            Check(true, rows, 1001, 2048, accumulate: true, splits, TensorCoreVariant.Wide);
        Check(true, rows, 13, 64, accumulate: false, 1, TensorCoreVariant.Wide);
        Check(true, rows, 515, 5120, accumulate: false, 2, TensorCoreVariant.Wide);
    }

    /// <summary>
    /// The fp16 route (x converted to f16 with a power-of-two scale per row, f16 mma), plain and wide, at the row counts
    /// each serves, every split count, partial tiles and QwQ's down width (27,648 inputs).
    /// </summary>
    [Test]
    public void HalfFp8VariantsMatchCpu([Values(9, 16, 17, 32)] int rows)
    {
        foreach (var variant in new[] { TensorCoreVariant.Half, TensorCoreVariant.HalfWide }.Where(v => TensorCoreGemvOps.Serves(v, true, rows, 2048)))
        {
            foreach (int splits in TensorCoreGemvOps.SplitCandidates(1001, 2048, rows))
                Check(true, rows, 1001, 2048, accumulate: true, splits, variant);
            Check(true, rows, 13, 64, accumulate: false, 1, variant);
            Check(true, rows, 40, 27648, accumulate: false, 4, variant);
        }
    }

    /// <summary>
    /// x beyond f16's range (65,504) in some rows: the fp16 route scales those rows by a power of two, so the product
    /// is still the CPU's within the same tolerance, and finite (an unscaled conversion gives infinities, then NaN).
    /// </summary>
    [Test]
    public void HalfFp8VariantHandlesXBeyondF16Range([Values(false, true)] bool wide)
    {
        Check(true, 32, 1001, 2048, accumulate: false, 2, wide ? TensorCoreVariant.HalfWide : TensorCoreVariant.Half, xMagnitude: 3e5f);
    }

    /// <summary>
    /// The sm_90a warpgroup builds (wgmma, x permuted per chunk into shared memory): every split count (down to 2
    /// chunks a split, below the deep build's 4 in flight: padded iterations), partial tiles and blocks, one chunk, QwQ's
    /// down width, and the same bits on a second run. Compute capability 9.0 only.
    /// </summary>
    [Test]
    public void WarpgroupFp8VariantsMatchCpu([Values(9, 16, 17, 32)] int rows)
    {
        RequireWarpgroupBuilds();
        foreach (var variant in new[] { TensorCoreVariant.Warpgroup, TensorCoreVariant.WarpgroupDeep, TensorCoreVariant.WarpgroupBf16,
                     TensorCoreVariant.WarpgroupBf16Deep }.Where(v => TensorCoreGemvOps.Serves(v, true, rows, 2048)))
        {
            foreach (int splits in TensorCoreGemvOps.SplitCandidates(1001, 2048, rows))
                Check(true, rows, 1001, 2048, accumulate: true, splits, variant);
            Check(true, rows, 13, 64, accumulate: false, 1, variant);
            Check(true, rows, 515, 5120, accumulate: false, 3, variant);
            Check(true, rows, 40, 27648, accumulate: false, 4, variant);
        }
    }

    /// <summary>x beyond f16's range in some rows: the warpgroup builds take the fp16 route's power-of-two row scales
    /// (the bf16-x builds need none: bf16's range is fp32's).</summary>
    [Test]
    public void WarpgroupFp8VariantHandlesXBeyondF16Range(
        [Values("Warpgroup", "WarpgroupDeep", "WarpgroupBf16", "WarpgroupBf16Deep")] string name)
    {
        RequireWarpgroupBuilds();
        Check(true, 32, 1001, 2048, accumulate: false, 2, Enum.Parse<TensorCoreVariant>(name), xMagnitude: 3e5f);
    }

    /// <summary>The bf16-x builds at an input width past the fp16 route's workspace (MaxHalfIn), which they can serve.</summary>
    [Test]
    public void WarpgroupBf16XVariantServesWideInputs([Values(9, 16, 17, 32)] int rows)
    {
        RequireWarpgroupBuilds();
        Check(true, rows, 77, TensorCoreGemvOps.MaxHalfIn + 2 * TensorCoreGemvOps.Chunk, accumulate: false, 5, TensorCoreVariant.WarpgroupBf16);
    }

    private void RequireWarpgroupBuilds()
    {
        if (Context.ComputeCapability != PtxLibrary.ArchSpecificCapability)
            Assert.Ignore($"the warpgroup builds run on compute capability 9.0 only; this is {Context.DeviceName} (sm_{Context.ComputeCapability.Major}{Context.ComputeCapability.Minor})");
        if (!_tc.Loaded(TensorCoreVariant.Warpgroup))
            Assert.Ignore("the loaded sm_90a PTX has no warpgroup GEMV (kernels/ptx/sm90a not embedded, or built before it: ./build.sh --kernels-only)");
        Assert.That(_tc.Loaded(TensorCoreVariant.WarpgroupDeep), Is.True, "both warpgroup builds load together");
        if (!_tc.Loaded(TensorCoreVariant.WarpgroupBf16))
            Assert.Ignore("the loaded sm_90a PTX has no bf16-x warpgroup GEMV (built before it: ./build.sh --kernels-only)");
        Assert.That(_tc.Loaded(TensorCoreVariant.WarpgroupBf16Deep), Is.True, "the bf16-x builds load together");
    }

    [Test]
    public void VariantsRefuseRowsTheyDoNotServe()
    {
        var ws = Alloc(TensorCoreGemvOps.WorkspaceBytes);
        var buf = Alloc(1 << 20);
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 16, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Wide));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, false, buf.Ptr, 0, buf.Ptr, buf.Ptr, 32, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Wide));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 9, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Lite));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 8, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Half));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, false, buf.Ptr, 0, buf.Ptr, buf.Ptr, 16, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Half));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 16, 64, TensorCoreGemvOps.MaxHalfIn + 64, false, ws.Ptr, 1, TensorCoreVariant.Half));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 8, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Warpgroup));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 16, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.WarpgroupDeep));
        Assert.Throws<ArgumentException>(() => _tc.Gemv(Stream, false, buf.Ptr, 0, buf.Ptr, buf.Ptr, 32, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Warpgroup));
        if (!_tc.Loaded(TensorCoreVariant.Warpgroup))  // elsewhere a served request names what it lacks
            Assert.Throws<InvalidOperationException>(() => _tc.Gemv(Stream, true, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 32, 64, 64, false, ws.Ptr, 1, TensorCoreVariant.Warpgroup));
    }

    /// <summary>
    /// The one-block-per-tile fp8 GEMV (1–2 rows): the CPU product within the same tolerance, at k of 80 chunks (10 a
    /// warp), 32, 432 and 1 (only warp 7 works; the 8 warps take even contiguous runs), rows not a multiple of 16, and
    /// the same bits on a second run.
    /// </summary>
    [Test]
    public void TileFp8GemvMatchesCpu([Range(1, Fp8Ops.MaxTileGemvRows)] int rows)
    {
        var fp8 = new Fp8Ops(Lib);
        CheckFp8Products(rows, [(1001, 2048, false), (515, 5120, true), (13, 64, false), (7168, 5120, true), (40, 27648, false)],
            (n, k, w, s, x, y, acc) => fp8.TileGemv(Stream, w, s, x, y, rows, n, k, acc), "gemv_fp8_tile");
    }

    /// <summary>The CUDA-core fp8 GEMV (1–4 rows) reads the same tile layout and workspace: same checks.</summary>
    [Test]
    public void CudaCoreFp8GemvMatchesCpu([Range(1, Fp8Ops.MaxGemvRows)] int rows, [Values(1, 4)] int splits)
    {
        var fp8 = new Fp8Ops(Lib);
        var ws = Alloc(TensorCoreGemvOps.WorkspaceBytes);
        ws.Memset32(0, Stream);
        CheckFp8Products(rows, [(1001, 2048, false), (515, 5120, true), (13, 64, false), (7168, 5120, true)],
            (n, k, w, s, x, y, acc) => fp8.Gemv(Stream, w, s, x, y, rows, n, k, acc, ws.Ptr, k / 64 >= splits ? splits : 1),
            $"gemv_fp8 splits={splits}");
    }

    private delegate void Fp8Launch(int n, int k, ulong w, ulong scale, ulong x, ulong y, bool accumulate);

    /// <summary>
    /// Each (n, k, accumulate): random e4m3 weights in the tile layout with their scales, bf16 x [rows, k], y fp32
    /// [rows, n] poisoned (or holding a sum to add to); the launch's y against the CPU product within
    /// <see cref="Tolerance"/>, and the same bits on a second run.
    /// </summary>
    private void CheckFp8Products(int rows, (int N, int K, bool Accumulate)[] shapes, Fp8Launch launch, string what)
    {
        foreach (var (n, k, accumulate) in shapes)
        {
            var (codes, scales, w) = Fp8KernelTests.RandomWeights(Rng, n, k);
            var dw = Upload<byte>(Fp8Ops.PackTiles(codes, n, k));
            var ds = Upload<float>(scales);
            float[] x = NormalBf16((long)rows * k);
            float[] y0 = accumulate ? Normal((long)rows * n, 4f) : new float[(long)rows * n];
            var dx = UploadBf16(x);
            float[] Run()
            {
                var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)rows * n);
                launch(n, k, dw.Ptr, ds.Ptr, dx.Ptr, dy.Ptr, accumulate);
                return DownloadF32(dy);
            }
            float[] got = Run();
            var expected = new float[(long)rows * n];
            CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, rows, n, k);
            if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
            AssertClose(got, expected, Tolerance, $"{what} rows={rows} {n}x{k} acc={accumulate}");
            Assert.That(Run(), Is.EqualTo(got), "second run");
        }
    }

    [TestCase(7168, 5120, false, TestName = "TensorCore_QkvProj_7168x5120")]
    [TestCase(5120, 27648, true, TestName = "TensorCore_DownProj_5120x27648_Accumulate")]
    public void QwqShapes(int n, int k, bool accumulate)
    {
        foreach (bool fp8 in new[] { false, true })
        {
            Check(fp8, 8, n, k, accumulate);
            Check(fp8, 32, n, k, accumulate);
        }
    }
}

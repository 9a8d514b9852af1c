using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// gemv_bf16 and the small-batch gemv_m*_bf16 against <see cref="CpuOps.MatMulNT"/> on the same bf16-rounded
/// inputs (fp32 output, fp32 accumulation: tolerance 1e-3), at QwQ's real shapes and at odd ones that exercise
/// the row tail (n not a multiple of the 8 rows per block) and the k tail (k not a multiple of 1024).
/// </summary>
public sealed class GemvKernelTests : KernelTestBase
{
    private const double Tolerance = 1e-3;
    private GemvOps _gemv = null!;

    protected override void CreateOps() => _gemv = new GemvOps(Lib);

    /// <summary>Uniform [-1, 1) rounded to bf16: cheap to generate for 141M-element matrices.</summary>
    private float[] UniformBf16(long count)
    {
        var r = new float[count];
        for (long i = 0; i < count; i++) r[i] = Bf16.Round(Rng.NextSingle() * 2f - 1f);
        return r;
    }

    private void Check(int batch, int n, int k, bool accumulate)
    {
        float[] w = UniformBf16((long)n * k);
        float[] x = NormalBf16((long)batch * k);
        float[] y0 = accumulate ? Normal((long)batch * n, 4f) : new float[(long)batch * n];

        var dw = UploadBf16(w);
        var dx = UploadBf16(x);
        DeviceBuffer dy;
        if (accumulate) dy = Upload<float>(y0);
        else dy = PoisonedF32((long)batch * n);

        _gemv.GemvBatched(Stream, dw.Ptr, dx.Ptr, dy.Ptr, batch, n, k, accumulate);
        float[] got = DownloadF32(dy);

        var expected = new float[(long)batch * n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, batch, n, k);
        if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
        AssertClose(got, expected, Tolerance, $"gemv m={batch} {n}x{k} acc={accumulate}");
    }

    [TestCase(7168, 5120, false, TestName = "Gemv_QkvProj_7168x5120")]
    [TestCase(5120, 5120, true, TestName = "Gemv_OProj_5120x5120_Accumulate")]
    [TestCase(5120, 27648, true, TestName = "Gemv_DownProj_5120x27648_Accumulate")]
    [TestCase(5120, 27648, false, TestName = "Gemv_DownProj_5120x27648")]
    [TestCase(1001, 2056, false, TestName = "Gemv_OddRowsAndKTail")]
    [TestCase(1, 8, false, TestName = "Gemv_SingleRowSingleChunk")]
    [TestCase(13, 264, true, TestName = "Gemv_ShortK_Accumulate")]
    public void MatchesCpu(int n, int k, bool accumulate) => Check(1, n, k, accumulate);

    [Test]
    public void Gemv_GateUp_55296x5120()
    {
        // The largest per-layer matrix (fused gate_up): ~566 MB bf16.
        Check(1, 55296, 5120, false);
    }

    [Test]
    public void SmallBatchVariantsMatchCpu([Range(2, GemvOps.MaxBatch)] int batch)
    {
        Check(batch, 1001, 2056, accumulate: false);
        Check(batch, 515, 5120, accumulate: true);
    }

    private float[] CheckMma(int batch, int n, int k, bool accumulate)
    {
        float[] w = UniformBf16((long)n * k);
        float[] x = NormalBf16((long)batch * k);
        float[] y0 = accumulate ? Normal((long)batch * n, 4f) : new float[(long)batch * n];
        var dw = UploadBf16(w);
        var dx = UploadBf16(x);
        var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)batch * n);
        int sms = Context.MultiprocessorCount;
        var ws = Alloc(GemvOps.MmaWorkspaceBytes(sms));
        ws.Memset32(0, Stream);
        _gemv.GemvMma(Stream, dw.Ptr, dx.Ptr, dy.Ptr, batch, n, k, accumulate, ws.Ptr, sms);
        float[] got = DownloadF32(dy);
        var expected = new float[(long)batch * n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, batch, n, k);
        if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
        AssertClose(got, expected, Tolerance, $"gemv_mma m={batch} {n}x{k} acc={accumulate} splits={GemvOps.MmaSplits(n, k, sms)}");

        // deterministic: the split-k partials are added in a fixed order, so a second run is bit-identical
        var again = accumulate ? Upload<float>(y0) : PoisonedF32((long)batch * n);
        _gemv.GemvMma(Stream, dw.Ptr, dx.Ptr, again.Ptr, batch, n, k, accumulate, ws.Ptr, sms);
        Assert.That(DownloadF32(again), Is.EqualTo(got), "second run");
        return got;
    }

    [TestCase(7168, 5120, false, TestName = "GemvMma_QkvProj_7168x5120")]
    [TestCase(5120, 5120, true, TestName = "GemvMma_OProj_5120x5120_Accumulate")]
    [TestCase(5120, 27648, true, TestName = "GemvMma_DownProj_5120x27648_Accumulate")]
    [TestCase(1001, 2048, false, TestName = "GemvMma_OddRows")]
    [TestCase(13, 64, true, TestName = "GemvMma_OneChunk_Accumulate")]
    public void TensorCoreVariantMatchesCpu(int n, int k, bool accumulate)
    {
        foreach (int batch in new[] { 1, 5, 8 }) CheckMma(batch, n, k, accumulate);
    }

    [Test]
    public void TensorCoreVariantEveryBatch([Range(1, GemvOps.MaxMmaBatch)] int batch) => CheckMma(batch, 515, 5120, accumulate: false);

    [Test]
    public void GemvOverloadIsBatchOne()
    {
        int n = 77, k = 1024;
        float[] w = UniformBf16((long)n * k), x = NormalBf16(k);
        var dw = UploadBf16(w);
        var dx = UploadBf16(x);
        var dy = PoisonedF32(n);
        _gemv.Gemv(Stream, dw.Ptr, dx.Ptr, dy.Ptr, n, k, accumulate: false);
        var expected = new float[n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, 1, n, k);
        AssertClose(DownloadF32(dy), expected, Tolerance, "gemv");
    }

    [Test]
    public void RejectsBadArguments()
    {
        var w = Alloc(64 * 1024);
        var x = Alloc(1024);
        var y = Alloc(1024);
        Assert.Multiple(() =>
        {
            Assert.That(() => _gemv.Gemv(Stream, w.Ptr, x.Ptr, y.Ptr, 4, 12, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("k"));
            Assert.That(() => _gemv.Gemv(Stream, w.Ptr + 2, x.Ptr, y.Ptr, 4, 16, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("w"));
            Assert.That(() => _gemv.Gemv(Stream, w.Ptr, x.Ptr + 8, y.Ptr, 4, 16, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("x"));
            Assert.That(() => _gemv.Gemv(Stream, w.Ptr, x.Ptr, 0, 4, 16, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("y"));
            Assert.That(() => _gemv.Gemv(Stream, w.Ptr, x.Ptr, y.Ptr, 0, 16, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("n"));
            Assert.That(() => _gemv.GemvBatched(Stream, w.Ptr, x.Ptr, y.Ptr, 9, 4, 16, false),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("batch"));
        });
    }
}

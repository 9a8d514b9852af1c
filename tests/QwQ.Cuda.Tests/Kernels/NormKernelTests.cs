using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>residual_add_rmsnorm against <see cref="CpuOps.RmsNorm"/> (bf16 output: tolerance 1e-2).</summary>
public sealed class NormKernelTests : KernelTestBase
{
    private const float Eps = 1e-5f;
    private NormOps _norm = null!;

    protected override void CreateOps() => _norm = new NormOps(Lib);

    [TestCase(1, 5120, true, TestName = "RmsNorm_Decode_5120_WithDelta")]
    [TestCase(5, 5120, true, TestName = "RmsNorm_Prefill_5120_WithDelta")]
    [TestCase(3, 5120, false, TestName = "RmsNorm_5120_NoDelta")]
    [TestCase(4, 999, true, TestName = "RmsNorm_OddHidden_ScalarPath")]
    [TestCase(2, 64, false, TestName = "RmsNorm_Tiny")]
    [TestCase(2, 40000, true, TestName = "RmsNorm_WiderThanOneBlockPass")]
    public void MatchesCpu(int tokens, int hidden, bool withDelta)
    {
        long count = (long)tokens * hidden;
        float[] residual = Normal(count, 3f);
        float[] delta = withDelta ? Normal(count, 1f) : [];
        float[] weight = NormalBf16(hidden, 0.1f, 1f);

        var dRes = Upload<float>(residual);
        var dDelta = withDelta ? Upload<float>(delta) : null;
        var dW = UploadBf16(weight);
        var dOut = PoisonedBf16(count);

        _norm.ResidualAddRmsNorm(Stream, dRes.Ptr, dDelta?.Ptr ?? 0, dW.Ptr, dOut.Ptr, tokens, hidden, Eps);
        float[] gotOut = DownloadBf16(dOut);
        float[] gotRes = DownloadF32(dRes);

        float[] expectedRes = (float[])residual.Clone();
        if (withDelta) CpuOps.AddInPlace(expectedRes, delta);
        // fp32 adds in the same order: bitwise equal; without delta the residual must be untouched.
        Assert.That(gotRes, Is.EqualTo(expectedRes), "residual after the add");

        var expectedOut = new float[count];
        CpuOps.RmsNorm(expectedRes, weight, Eps, expectedOut, hidden);
        AssertClose(gotOut, expectedOut, 1e-2, "normed output");
        // Per row too, so one bad row cannot hide in the global norm.
        for (int t = 0; t < tokens; t++)
        {
            double rel = RelativeError(gotOut.AsSpan(t * hidden, hidden), expectedOut.AsSpan(t * hidden, hidden));
            Assert.That(rel, Is.LessThanOrEqualTo(1e-2), $"row {t}");
        }
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(4096);
        Assert.Multiple(() =>
        {
            Assert.That(() => _norm.ResidualAddRmsNorm(Stream, 0, 0, b.Ptr, b.Ptr, 1, 16, Eps),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("residual"));
            Assert.That(() => _norm.ResidualAddRmsNorm(Stream, b.Ptr, 0, b.Ptr, b.Ptr, 1, 0, Eps),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("hidden"));
            Assert.That(() => _norm.ResidualAddRmsNorm(Stream, b.Ptr, 0, b.Ptr, b.Ptr, 1, 16, 0f),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("eps"));
        });
    }
}

using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>silu_mul against <see cref="CpuOps.SiluMul"/> (bf16 output: tolerance 1e-2).</summary>
public sealed class ActivationKernelTests : KernelTestBase
{
    private ActivationOps _act = null!;

    protected override void CreateOps() => _act = new ActivationOps(Lib);

    [TestCase(1, 27648, TestName = "SiluMul_Decode_27648")]
    [TestCase(3, 27648, TestName = "SiluMul_Prefill_27648")]
    [TestCase(5, 1001, TestName = "SiluMul_OddIntermediate_ScalarPath")]
    public void MatchesCpu(int tokens, int inter)
    {
        float[] gateUp = Normal((long)tokens * 2 * inter, 3f);
        // Include the extremes: large |gate| must not overflow into NaN.
        gateUp[0] = 100f;
        gateUp[1] = -100f;
        var dIn = Upload<float>(gateUp);
        var dOut = PoisonedBf16((long)tokens * inter);

        _act.SiluMul(Stream, dIn.Ptr, dOut.Ptr, tokens, inter);
        float[] got = DownloadBf16(dOut);

        var expected = new float[(long)tokens * inter];
        for (int t = 0; t < tokens; t++)
        {
            var row = gateUp.AsSpan(t * 2 * inter, 2 * inter);
            CpuOps.SiluMul(row[..inter], row[inter..], expected.AsSpan(t * inter, inter));
        }
        AssertClose(got, expected, 1e-2, "silu_mul");
    }

    /// <summary>silu_mul_bf16_bf16: the same from bf16 gate | up (the prefill GEMM's bf16 output), both paths.</summary>
    [TestCase(3, 27648, TestName = "SiluMulBf16_Prefill_27648")]
    [TestCase(5, 1001, TestName = "SiluMulBf16_OddIntermediate_ScalarPath")]
    public void Bf16InputMatchesCpu(int tokens, int inter)
    {
        float[] gateUp = Normal((long)tokens * 2 * inter, 3f);
        gateUp[0] = 100f;
        gateUp[1] = -100f;
        var dIn = UploadBf16(gateUp);
        float[] rounded = DownloadBf16(dIn);  // what the kernel reads
        var dOut = PoisonedBf16((long)tokens * inter);

        _act.SiluMulBf16(Stream, dIn.Ptr, dOut.Ptr, tokens, inter);
        float[] got = DownloadBf16(dOut);

        var expected = new float[(long)tokens * inter];
        for (int t = 0; t < tokens; t++)
        {
            var row = rounded.AsSpan(t * 2 * inter, 2 * inter);
            CpuOps.SiluMul(row[..inter], row[inter..], expected.AsSpan(t * inter, inter));
        }
        AssertClose(got, expected, 1e-2, "silu_mul_bf16");
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(4096);
        Assert.That(() => _act.SiluMul(Stream, b.Ptr, b.Ptr, 1, 0),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("intermediate"));
        Assert.That(() => _act.SiluMul(Stream, b.Ptr + 4, b.Ptr, 1, 8),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("gateUp"));
        Assert.That(() => _act.SiluMulBf16(Stream, b.Ptr + 8, b.Ptr, 1, 8),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("gateUpBf16"));
    }
}

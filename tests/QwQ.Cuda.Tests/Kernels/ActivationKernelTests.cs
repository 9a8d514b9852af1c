using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>silu_mul against <see cref="CpuOps.SiluMul"/> (bf16 output: tolerance 1e-2).</summary>
public sealed class ActivationKernelTests : KernelTestBase
{
    private ActivationOps _act = null!;

    protected override void CreateOps() => _act = new ActivationOps(Lib);

    // silu_mul_bf16_bf16 reads bf16 gate | up (the prefill GEMM's bf16 output); both entries' vector and scalar paths.
    [TestCase(1, 27648, false, TestName = "SiluMul_Decode_27648")]
    [TestCase(3, 27648, false, TestName = "SiluMul_Prefill_27648")]
    [TestCase(5, 1001, false, TestName = "SiluMul_OddIntermediate_ScalarPath")]
    [TestCase(3, 27648, true, TestName = "SiluMulBf16_Prefill_27648")]
    [TestCase(5, 1001, true, TestName = "SiluMulBf16_OddIntermediate_ScalarPath")]
    public void MatchesCpu(int tokens, int inter, bool bf16Input)
    {
        float[] gateUp = Normal((long)tokens * 2 * inter, 3f);
        // Include the extremes: large |gate| must not overflow into NaN.
        gateUp[0] = 100f;
        gateUp[1] = -100f;
        var dIn = bf16Input ? UploadBf16(gateUp) : Upload<float>(gateUp);
        float[] read = bf16Input ? DownloadBf16(dIn) : gateUp;  // what the kernel reads
        var dOut = PoisonedBf16((long)tokens * inter);

        if (bf16Input) _act.SiluMulBf16(Stream, dIn.Ptr, dOut.Ptr, tokens, inter);
        else _act.SiluMul(Stream, dIn.Ptr, dOut.Ptr, tokens, inter);
        float[] got = DownloadBf16(dOut);

        var expected = new float[(long)tokens * inter];
        for (int t = 0; t < tokens; t++)
        {
            var row = read.AsSpan(t * 2 * inter, 2 * inter);
            CpuOps.SiluMul(row[..inter], row[inter..], expected.AsSpan(t * inter, inter));
        }
        AssertClose(got, expected, 1e-2, bf16Input ? "silu_mul_bf16" : "silu_mul");
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

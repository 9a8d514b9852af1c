using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// qkv_bias_rope_append and kv_append against <see cref="CpuOps.ApplyRope"/> / plain copies. The caches are
/// poisoned and downloaded whole, so a write to a wrong position or head fails as well as a missing one.
/// </summary>
public sealed class RopeKernelTests : KernelTestBase
{
    private RopeOps _rope = null!;

    protected override void CreateOps() => _rope = new RopeOps(Lib);

    /// <summary>Default (non-YaRN) inv_freq as transformers computes it, fp32: 1 / theta^(2i/D).</summary>
    private static float[] InvFreq(int headDim, double theta)
    {
        var r = new float[headDim / 2];
        for (int i = 0; i < r.Length; i++) r[i] = 1.0f / (float)Math.Pow((float)theta, (float)(2 * i) / headDim);
        return r;
    }

    private sealed record Expected(float[] Q, float[] K, float[] V); // q [T, nq, D]; k, v [T, nkv, D]

    private static Expected Reference(float[] qkv, float[] bias, int tokens, int nq, int nkv, int d, int startPos,
        float[] invFreq, float factor)
    {
        int width = (nq + 2 * nkv) * d;
        var q = new float[tokens * nq * d];
        var k = new float[tokens * nkv * d];
        var v = new float[tokens * nkv * d];
        for (int t = 0; t < tokens; t++)
        for (int c = 0; c < width; c++)
        {
            float x = qkv[t * width + c] + bias[c];
            if (c < nq * d) q[t * nq * d + c] = x;
            else if (c < (nq + nkv) * d) k[t * nkv * d + c - nq * d] = x;
            else v[t * nkv * d + c - (nq + nkv) * d] = x;
        }
        CpuOps.ApplyRope(q, tokens, nq, d, startPos, invFreq, factor);
        CpuOps.ApplyRope(k, tokens, nkv, d, startPos, invFreq, factor);
        return new Expected(q, k, v);
    }

    /// <summary>Checks cache [nkv, maxCtx, D]: rows startPos..startPos+T-1 match expected [T, nkv, D], the rest is poison.</summary>
    private static void AssertCache(ushort[] cacheBits, float[] expected, int tokens, int nkv, int d, int startPos, int maxCtx,
        double tolerance, string what)
    {
        var got = new float[tokens * nkv * d];
        for (int h = 0; h < nkv; h++)
        for (int p = 0; p < maxCtx; p++)
        {
            long row = ((long)h * maxCtx + p) * d;
            int t = p - startPos;
            if (t >= 0 && t < tokens)
            {
                for (int i = 0; i < d; i++) got[(t * nkv + h) * d + i] = Bf16.ToFloat(cacheBits[row + i]);
            }
            else
            {
                for (int i = 0; i < d; i++)
                    if (cacheBits[row + i] != Bf16Poison)
                        Assert.Fail($"{what}: head {h} position {p} element {i} was written (only {startPos}..{startPos + tokens - 1} should be)");
            }
        }
        AssertClose(got, expected, tolerance, what);
    }

    [TestCase(1, 8190, 8192, 1.0f, TestName = "Rope_Decode_QwQ_NearPos8192")]
    [TestCase(7, 0, 64, 1.0f, TestName = "Rope_Prefill_QwQ_FromZero")]
    [TestCase(5, -1, 9000, 1.0f, TestName = "Rope_Prefill_QwQ_RandomStart")]
    [TestCase(3, 32760, 32768, 1.2f, TestName = "Rope_QwQ_Pos32K_AttentionFactor")]
    public void QkvBiasRopeAppendMatchesCpu(int tokens, int startPos, int maxCtx, float factor)
    {
        const int nq = 40, nkv = 8, d = 128;
        if (startPos < 0) startPos = Rng.Next(0, maxCtx - tokens + 1);
        TestContext.Out.WriteLine($"startPos {startPos}");
        RunQkvBiasRope(tokens, nq, nkv, d, startPos, maxCtx, factor, devicePosition: false);
    }

    [Test]
    public void DevicePositionMatchesCpu()
    {
        int maxCtx = 8300;
        int startPos = Rng.Next(0, maxCtx);
        TestContext.Out.WriteLine($"startPos {startPos}");
        RunQkvBiasRope(1, 40, 8, 128, startPos, maxCtx, 1.0f, devicePosition: true);
    }

    [Test]
    public void SmallHeadDimAndGroups() => RunQkvBiasRope(4, 6, 2, 32, Rng.Next(0, 100), 128, 1.0f, devicePosition: false);

    private void RunQkvBiasRope(int tokens, int nq, int nkv, int d, int startPos, int maxCtx, float factor, bool devicePosition)
    {
        int width = (nq + 2 * nkv) * d;
        float[] qkv = Normal((long)tokens * width, 2f);
        float[] bias = NormalBf16(width, 0.5f);
        float[] invFreq = InvFreq(d, 1_000_000.0);

        var dQkv = Upload<float>(qkv);
        var dBias = UploadBf16(bias);
        var dInv = Upload<float>(invFreq);
        var dQ = PoisonedBf16((long)tokens * nq * d);
        var dK = PoisonedBf16((long)nkv * maxCtx * d);
        var dV = PoisonedBf16((long)nkv * maxCtx * d);

        if (devicePosition)
        {
            var dPos = Upload<int>([startPos]);
            _rope.QkvBiasRopeAppendAt(Stream, dQkv.Ptr, dBias.Ptr, dInv.Ptr, factor, dPos.Ptr, nq, nkv, d, dQ.Ptr, dK.Ptr, dV.Ptr,
                maxCtx, tokens);
        }
        else
        {
            _rope.QkvBiasRopeAppend(Stream, dQkv.Ptr, dBias.Ptr, dInv.Ptr, factor, startPos, tokens, nq, nkv, d, dQ.Ptr, dK.Ptr,
                dV.Ptr, maxCtx);
        }
        Stream.Synchronize();

        var exp = Reference(qkv, bias, tokens, nq, nkv, d, startPos, invFreq, factor);
        AssertClose(DownloadBf16(dQ), exp.Q, 1e-2, "q");
        AssertCache(dK.ToArray<ushort>(), exp.K, tokens, nkv, d, startPos, maxCtx, 1e-2, "k cache");
        AssertCache(dV.ToArray<ushort>(), exp.V, tokens, nkv, d, startPos, maxCtx, 1e-2, "v cache");
    }

    [Test]
    public void DevicePositionOutOfRangeWritesNothingToCaches()
    {
        const int nq = 4, nkv = 2, d = 64, maxCtx = 16;
        int width = (nq + 2 * nkv) * d;
        var dQkv = Upload<float>(Normal(width));
        var dBias = UploadBf16(NormalBf16(width));
        var dInv = Upload<float>(InvFreq(d, 10000.0));
        var dQ = PoisonedBf16(nq * d);
        var dK = PoisonedBf16(nkv * maxCtx * d);
        var dV = PoisonedBf16(nkv * maxCtx * d);
        var dPos = Upload<int>([maxCtx]);
        _rope.QkvBiasRopeAppendAt(Stream, dQkv.Ptr, dBias.Ptr, dInv.Ptr, 1f, dPos.Ptr, nq, nkv, d, dQ.Ptr, dK.Ptr, dV.Ptr, maxCtx);
        Stream.Synchronize();
        Assert.That(dK.ToArray<ushort>(), Is.All.EqualTo(Bf16Poison), "k cache");
        Assert.That(dV.ToArray<ushort>(), Is.All.EqualTo(Bf16Poison), "v cache");
        Assert.That(DownloadBf16(dQ), Is.All.NaN, "q is NaN for an invalid position");
    }

    [TestCase(3, 8, 128, TestName = "KvAppend_QwQ_Vectorized")]
    [TestCase(2, 3, 36, TestName = "KvAppend_ScalarPath")]
    public void KvAppendCopiesIntoPlace(int tokens, int nkv, int d)
    {
        int maxCtx = 8200;
        int startPos = Rng.Next(0, maxCtx - tokens + 1);
        TestContext.Out.WriteLine($"startPos {startPos}");
        float[] k = NormalBf16((long)tokens * nkv * d), v = NormalBf16((long)tokens * nkv * d);
        var dk = UploadBf16(k);
        var dv = UploadBf16(v);
        var dKc = PoisonedBf16((long)nkv * maxCtx * d);
        var dVc = PoisonedBf16((long)nkv * maxCtx * d);
        _rope.KvAppend(Stream, dk.Ptr, dv.Ptr, dKc.Ptr, dVc.Ptr, startPos, tokens, nkv, d, maxCtx);
        Stream.Synchronize();
        AssertCache(dKc.ToArray<ushort>(), k, tokens, nkv, d, startPos, maxCtx, 0, "k cache");
        AssertCache(dVc.ToArray<ushort>(), v, tokens, nkv, d, startPos, maxCtx, 0, "v cache");
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(1 << 16);
        Assert.Multiple(() =>
        {
            Assert.That(() => _rope.QkvBiasRopeAppend(Stream, b.Ptr, b.Ptr, b.Ptr, 1f, 10, 7, 4, 2, 16, b.Ptr, b.Ptr, b.Ptr, 16),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("startPos"));
            Assert.That(() => _rope.QkvBiasRopeAppend(Stream, b.Ptr, b.Ptr, b.Ptr, 1f, 0, 1, 4, 2, 15, b.Ptr, b.Ptr, b.Ptr, 16),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("headDim"));
            Assert.That(() => _rope.QkvBiasRopeAppend(Stream, b.Ptr, b.Ptr, b.Ptr, 1f, 0, 1, 5, 2, 16, b.Ptr, b.Ptr, b.Ptr, 16),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("nq"));
            Assert.That(() => _rope.KvAppend(Stream, b.Ptr, b.Ptr, b.Ptr, b.Ptr, 15, 2, 2, 16, 16),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("startPos"));
        });
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Model;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantization;

/// <summary>
/// The fp8 KV-cache quantizer (docs/KV_CACHE.md) on hand-made head vectors: one scale amax / 448 per vector, codes
/// rounded to the nearest e4m3 value (ties to even), never saturating; and the bytes it takes.
/// </summary>
public class KvCacheFp8Tests
{
    private const int D = 128;

    /// <summary>Half a step of e4m3's 3-bit mantissa, relative: the most a normal value may move.</summary>
    private const double HalfUlp = 1.0 / 16;

    private static (byte[] Codes, float Scale, float[] Back) RoundTrip(float[] vector)
    {
        var codes = new byte[vector.Length];
        float scale = KvCacheFp8.Quantize(vector, codes);
        var back = new float[vector.Length];
        KvCacheFp8.Dequantize(codes, scale, back);
        return (codes, scale, back);
    }

    [Test]
    public void AVectorOnALargeBiasKeepsItsRelativePrecision()
    {
        // A key around a bias of 200 with small variations, and one around 1000, past what e4m3 holds unscaled.
        foreach (float bias in new[] { 200f, -200f, 1000f })
        {
            float[] v = [.. Enumerable.Range(0, D).Select(i => bias + 3f * MathF.Sin(i))];
            var (codes, scale, back) = RoundTrip(v);
            float amax = v.Max(MathF.Abs);
            Assert.That(scale, Is.EqualTo(amax / 448f), "the scale follows the vector's amax");
            for (int i = 0; i < D; i++)
                Assert.That(Math.Abs(back[i] - v[i]), Is.LessThanOrEqualTo(HalfUlp * Math.Abs(v[i]) * (1 + 1e-6)), $"bias {bias}, element {i}");
            int top = Array.FindIndex(v, x => MathF.Abs(x) == amax);
            Assert.That(codes[top] & 0x7F, Is.EqualTo(Fp8E4M3.MaxCode), "the largest magnitude maps to ±448");
            Assert.That(back[top], Is.EqualTo(v[top]).Within(1e-6 * amax));
        }
        // Without a scale, 1000 saturates at 448: the per-vector scale is what keeps it.
        Assert.That(Fp8E4M3.ToFloat(Fp8E4M3.FromFloat(1000f)), Is.EqualTo(448f));
    }

    [Test]
    public void TinyVectorsKeepTheirPrecisionToo()
    {
        // Values of 1e-4: unscaled they fall below e4m3's smallest subnormal (2^-9) and flush to zero.
        float[] v = [.. Enumerable.Range(0, D).Select(i => 1e-4f * (1 + 0.5f * MathF.Cos(i)))];
        var (_, scale, back) = RoundTrip(v);
        Assert.That(scale, Is.EqualTo(v.Max() / 448f));
        for (int i = 0; i < D; i++)
            Assert.That(Math.Abs(back[i] - v[i]), Is.LessThanOrEqualTo(HalfUlp * v[i] * (1 + 1e-6)), $"element {i}");
        Assert.That(Fp8E4M3.FromFloat(1e-4f), Is.Zero, "unscaled, it would be lost");
    }

    [Test]
    public void AnAllZeroVectorHasScaleOneAndZeroCodes()
    {
        var (codes, scale, back) = RoundTrip(new float[D]);
        Assert.That(scale, Is.EqualTo(1f));
        Assert.That(codes, Is.All.Zero);
        Assert.That(back, Is.All.Zero);
        var inPlace = new float[D];
        KvCacheFp8.RoundTrip(inPlace);
        Assert.That(inPlace, Is.All.Zero);
    }

    [Test]
    public void NothingSaturatesByConstruction()
    {
        // Random vectors over eight orders of magnitude, outliers included: every code is finite and within ±448, the
        // amax element is ±448 exactly, and every element is within half a step (normal) or half a subnormal step.
        var rng = new Random(17);
        for (int trial = 0; trial < 500; trial++)
        {
            double magnitude = Math.Pow(10, rng.Next(-4, 5));
            float[] v = [.. Enumerable.Range(0, D).Select(_ => (float)((rng.NextDouble() * 2 - 1) * magnitude))];
            if (trial % 3 == 0) v[rng.Next(D)] = (float)(magnitude * 50 * (rng.Next(2) * 2 - 1)); // an outlier sets amax
            var (codes, scale, back) = RoundTrip(v);
            float amax = v.Max(MathF.Abs);
            int atMax = 0;
            for (int i = 0; i < D; i++)
            {
                float code = Fp8E4M3.ToFloat(codes[i]);
                Assert.That(float.IsFinite(code) && Math.Abs(code) <= 448f, $"trial {trial}, element {i}: code {codes[i]:X2}");
                if ((codes[i] & 0x7F) == Fp8E4M3.MaxCode) atMax++;
                double bound = Math.Max(HalfUlp * Math.Abs(v[i]), Math.ScaleB(scale, -10)) * (1 + 1e-6);
                Assert.That(Math.Abs(back[i] - v[i]), Is.LessThanOrEqualTo(bound), $"trial {trial}, element {i}");
            }
            Assert.That(atMax, Is.GreaterThanOrEqualTo(1), $"trial {trial}: amax maps to ±448");
            Assert.That(back.Max(MathF.Abs), Is.EqualTo(amax).Within(1e-6 * amax));
        }
    }

    [Test]
    public void CodesRoundToNearestWithTiesToEven()
    {
        // amax 448 gives scale 1 exactly, so codes are the values themselves: e4m3 steps by 2 in [16, 32).
        float[] v = new float[D];
        v[0] = 448;
        (v[1], v[2], v[3], v[4], v[5]) = (17f, 19f, 17.01f, -21f, 0.0029296875f /* 1.5 · 2^-9: a subnormal tie */);
        var (codes, scale, back) = RoundTrip(v);
        Assert.That(scale, Is.EqualTo(1f));
        Assert.That(back[..6], Is.EqualTo(new[] { 448f, 16f, 20f, 18f, -20f, 0.00390625f }));
        Assert.That(codes[1], Is.EqualTo(0x58), "16: exponent field 4 + 7, mantissa 0");
    }

    [Test]
    public void ItIsTheFp8WeightQuantizerOneRowAtATime()
    {
        // The same arithmetic as --quantize fp8's per-channel scales, so GPU kernels can share one definition.
        var rng = new Random(3);
        const int heads = 8;
        float[] m = [.. Enumerable.Range(0, heads * D).Select(i => (float)(rng.NextDouble() * 2 - 1) * (1 + i / D * 37))];
        var codes = new byte[m.Length];
        var scales = new float[heads];
        Fp8E4M3.QuantizePerChannel(m, heads, D, codes, scales);
        for (int h = 0; h < heads; h++)
        {
            var row = m.AsSpan(h * D, D).ToArray();
            var (c, s, _) = RoundTrip(row);
            Assert.That(s, Is.EqualTo(scales[h]));
            Assert.That(c, Is.EqualTo(codes.AsSpan(h * D, D).ToArray()));
            float[] expected = new float[D];
            Fp8E4M3.ToFloat(c, s, expected);
            KvCacheFp8.RoundTrip(row);
            Assert.That(row, Is.EqualTo(expected), "RoundTrip stores code × scale");
        }
    }

    [Test]
    public void BytesPerPosition()
    {
        var qwq = ModelPresets.Get("qwq-32b");
        Assert.That(KvCacheFp8.BytesPerPositionPerLayer(qwq, KvCacheKind.Fp8), Is.EqualTo(2112), "2 × 8 × (128 + 4)");
        Assert.That(KvCacheFp8.BytesPerPositionPerLayer(qwq, KvCacheKind.Bf16), Is.EqualTo(4096), "2 × 8 × 128 × 2");
        Assert.That(KvCacheFp8.BytesPerPositionPerLayer(qwq, KvCacheKind.Bf16) * qwq.NumHiddenLayers, Is.EqualTo(qwq.KvBytesPerToken),
            "bf16 is what the engine sizes its pool with today");
        Assert.Throws<ArgumentOutOfRangeException>(() => KvCacheFp8.BytesPerPositionPerLayer(qwq, (KvCacheKind)5));
    }
}

using System.Numerics;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Sampling;

public class SamplingMathTests
{
    [Test]
    public void ExpIsAccurateOnCandidateRange()
    {
        Assert.That(SamplingMath.Exp(0f), Is.EqualTo(1f));
        double worst = 0;
        for (float d = -28f; d <= 0f; d += 0.000731f)
        {
            double rel = Math.Abs(SamplingMath.Exp(d) - Math.Exp(d)) / Math.Exp(d);
            worst = Math.Max(worst, rel);
        }
        Assert.That(worst, Is.LessThan(4e-7));
    }

    [Test]
    public void NonCandidatesWouldWeighZero()
    {
        // The compaction drops d < -28; that is only exact if such tokens have integer weight 0.
        Assert.That(SamplingMath.Weight(SamplingMath.Exp(-28f)), Is.EqualTo(0ul));
        Assert.That(SamplingMath.Weight(SamplingMath.Exp(0f)), Is.EqualTo(1ul << 40));
    }

    [Test]
    public void KeyPreservesOrder()
    {
        float[] xs = [float.NegativeInfinity, -1e30f, -2f, -1f, -1e-30f, 0f, 1e-30f, 1f, 3.5f, 1e30f, float.PositiveInfinity];
        for (int i = 1; i < xs.Length; i++)
            Assert.That(SamplingMath.Key(xs[i]), Is.GreaterThan(SamplingMath.Key(xs[i - 1])), $"{xs[i - 1]} < {xs[i]}");
    }

    [Test]
    public void CeilMulIsExact()
    {
        var rng = new Random(3);
        for (int i = 0; i < 2000; i++)
        {
            float p = i switch { 0 => 1f, 1 => float.Epsilon, 2 => 0.5f, _ => (float)rng.NextDouble() };
            if (p == 0f) continue;
            ulong total = (ulong)rng.NextInt64(1, 1L << 58);
            // exact rational: p = bits-derived m / 2^s
            var (m, s) = Decompose(p);
            BigInteger num = m * (BigInteger)total, den = BigInteger.One << s;
            BigInteger expect = (num + den - 1) / den;
            Assert.That(SamplingMath.CeilMul(p, total), Is.EqualTo((ulong)expect), $"p={p} total={total}");
        }
    }

    private static (BigInteger m, int s) Decompose(float p)
    {
        uint bits = BitConverter.SingleToUInt32Bits(p);
        int ex = (int)((bits >> 23) & 0xFF);
        uint frac = bits & 0x7FFFFF;
        return ex == 0 ? (frac, 149) : (frac | 0x800000u, 150 - ex);
    }

    [Test]
    public void RandIsACounter()
    {
        ulong r = SamplingMath.Rand64(42, 7);
        Assert.That(SamplingMath.Rand64(42, 7), Is.EqualTo(r));
        Assert.That(r, Is.Not.EqualTo(SamplingMath.Rand64(42, 8)));
        Assert.That(r, Is.Not.EqualTo(SamplingMath.Rand64(43, 7)));
        // Draw is uniform on [0, total): the top bits of the 64-bit word scale it.
        Assert.That(SamplingMath.Draw(ulong.MaxValue, 10), Is.EqualTo(9ul));
        Assert.That(SamplingMath.Draw(0, 10), Is.EqualTo(0ul));
    }
}

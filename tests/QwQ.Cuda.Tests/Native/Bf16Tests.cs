using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

public class Bf16Tests
{
    private static ushort FromBits(uint bits) => Bf16.FromFloat(BitConverter.UInt32BitsToSingle(bits));

    [Test]
    public void ExactValues() =>
        Assert.Multiple(() =>
        {
            Assert.That(Bf16.FromFloat(1f), Is.EqualTo((ushort)0x3F80));
            Assert.That(Bf16.FromFloat(-2f), Is.EqualTo((ushort)0xC000));
            Assert.That(Bf16.FromFloat(0f), Is.EqualTo((ushort)0x0000));
            Assert.That(Bf16.FromFloat(-0f), Is.EqualTo((ushort)0x8000));
            Assert.That(Bf16.ToFloat(0x3F80), Is.EqualTo(1f));
            Assert.That(Bf16.ToFloat(0x4049), Is.EqualTo(3.140625f));
        });

    [Test]
    public void RoundsToNearestTiesToEven() =>
        Assert.Multiple(() =>
        {
            Assert.That(FromBits(0x3F80_7FFF), Is.EqualTo((ushort)0x3F80), "below half rounds down");
            Assert.That(FromBits(0x3F80_8000), Is.EqualTo((ushort)0x3F80), "tie to even (down)");
            Assert.That(FromBits(0x3F81_8000), Is.EqualTo((ushort)0x3F82), "tie to even (up)");
            Assert.That(FromBits(0x3F80_8001), Is.EqualTo((ushort)0x3F81), "above half rounds up");
            Assert.That(FromBits(0xBF80_C000), Is.EqualTo((ushort)0xBF81), "sign-magnitude rounding");
            Assert.That(FromBits(0x3FFF_FFFF), Is.EqualTo((ushort)0x4000), "carry into the exponent");
        });

    [Test]
    public void SpecialValues() =>
        Assert.Multiple(() =>
        {
            Assert.That(Bf16.FromFloat(float.PositiveInfinity), Is.EqualTo((ushort)0x7F80));
            Assert.That(Bf16.FromFloat(float.NegativeInfinity), Is.EqualTo((ushort)0xFF80));
            Assert.That(Bf16.FromFloat(float.MaxValue), Is.EqualTo((ushort)0x7F80), "overflow rounds to +inf");
            Assert.That(float.IsNaN(Bf16.ToFloat(Bf16.FromFloat(float.NaN))));
            // A NaN whose payload is only in the low 16 bits must not truncate to infinity.
            Assert.That(float.IsNaN(Bf16.ToFloat(FromBits(0x7F80_0001))));
            Assert.That(float.IsNaN(Bf16.ToFloat(FromBits(0xFFFF_FFFF))));
            Assert.That(FromBits(0xFF80_0001) & 0x8000, Is.EqualTo(0x8000), "NaN keeps its sign");
            Assert.That(float.IsSubnormal(Bf16.ToFloat(FromBits(0x0001_0000))));
        });

    [Test]
    public void EveryBf16RoundTrips()
    {
        for (int i = 0; i <= ushort.MaxValue; i++)
        {
            float f = Bf16.ToFloat((ushort)i);
            if (float.IsNaN(f)) { Assert.That(float.IsNaN(Bf16.ToFloat(Bf16.FromFloat(f)))); continue; }
            if (Bf16.FromFloat(f) != i) Assert.Fail($"0x{i:X4} -> {f} -> 0x{Bf16.FromFloat(f):X4}");
        }
    }

    [Test]
    public void RoundingErrorIsAtMostHalfAnUlp()
    {
        var rng = new Random(1);
        for (int i = 0; i < 100_000; i++)
        {
            float f = (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(2, rng.Next(-20, 20));
            float r = Bf16.Round(f);
            float ulp = MathF.Abs(Bf16.ToFloat((ushort)(Bf16.FromFloat(MathF.Abs(r)) + 1)) - MathF.Abs(r));
            Assert.That(MathF.Abs(r - f), Is.LessThanOrEqualTo(ulp / 2), $"{f}");
        }
    }

    [Test]
    public void SpanVersions()
    {
        float[] src = [1f, -0.5f, 3.140625f, 65536f];
        ushort[] bits = Bf16.FromFloat(src);
        Assert.That(bits, Is.EqualTo(new ushort[] { 0x3F80, 0xBF00, 0x4049, 0x4780 }));
        Assert.That(Bf16.ToFloat(bits), Is.EqualTo(src));

        var dst = new ushort[5];
        Bf16.FromFloat(src, dst);
        Assert.That(dst[..4], Is.EqualTo(bits));
        Assert.Throws<ArgumentException>(() => Bf16.FromFloat(src, new ushort[3]));
        Assert.Throws<ArgumentException>(() => Bf16.ToFloat(bits, new float[3]));
    }
}

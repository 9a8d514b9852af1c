using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>fp8 e4m3fn against its definition, computed here independently of the table in the code under test.</summary>
public class Fp8E4M3Tests
{
    /// <summary>(-1)^s · (e == 0 ? m/8 · 2^-6 : (1 + m/8) · 2^(e-7)); NaN for e = 15, m = 7 (there are no infinities).</summary>
    private static double Formula(int code)
    {
        int s = code >> 7, e = (code >> 3) & 0xF, m = code & 7;
        if (e == 15 && m == 7) return double.NaN;
        double magnitude = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return s == 1 ? -magnitude : magnitude;
    }

    /// <summary>The nearest finite code by brute force over all 127 magnitudes; ties to the even code; beyond 448, 448.</summary>
    private static byte Nearest(double x)
    {
        int sign = double.IsNegative(x) ? 0x80 : 0;
        double a = Math.Min(Math.Abs(x), 448);
        int best = 0;
        for (int c = 1; c <= 0x7E; c++)
        {
            double d = Math.Abs(Formula(c) - a), db = Math.Abs(Formula(best) - a);
            if (d < db || (d == db && c % 2 == 0)) best = c;
        }
        return (byte)(sign | best);
    }

    [Test]
    public void DecodesEveryCodeAsTheFormulaSays()
    {
        for (int code = 0; code < 256; code++)
        {
            double expected = Formula(code);
            float actual = Fp8E4M3.ToFloat((byte)code);
            if (double.IsNaN(expected))
                Assert.That(float.IsNaN(actual), Is.True, $"0x{code:X2}");
            else
                Assert.That((double)actual, Is.EqualTo(expected), $"0x{code:X2}");
            Assert.That(float.IsNegative(actual), Is.EqualTo(code >= 0x80), $"sign of 0x{code:X2}");
        }
    }

    [TestCase(0x00, 0.0)]
    [TestCase(0x01, 0.001953125)]      // smallest subnormal, 2^-9
    [TestCase(0x07, 0.013671875)]      // largest subnormal, 7 · 2^-9
    [TestCase(0x08, 0.015625)]         // smallest normal, 2^-6
    [TestCase(0x38, 1.0)]
    [TestCase(0x39, 1.125)]
    [TestCase(0x40, 2.0)]
    [TestCase(0x7E, 448.0)]            // largest finite
    [TestCase(0xB8, -1.0)]
    [TestCase(0xFE, -448.0)]
    public void KnownValues(int code, double value) => Assert.That((double)Fp8E4M3.ToFloat((byte)code), Is.EqualTo(value));

    [Test]
    public void NegativeZeroAndNaNs()
    {
        Assert.That(BitConverter.SingleToUInt32Bits(Fp8E4M3.ToFloat(0x80)), Is.EqualTo(0x8000_0000u));
        Assert.That(float.IsNaN(Fp8E4M3.ToFloat(0x7F)) && float.IsNaN(Fp8E4M3.ToFloat(0xFF)), Is.True);
        Assert.That(Fp8E4M3.FromFloat(float.NaN), Is.EqualTo(0x7F).Or.EqualTo(0xFF));
        Assert.That(Fp8E4M3.FromFloat(-0f), Is.EqualTo(0x80));
    }

    [Test]
    public void EveryFiniteCodeRoundTrips()
    {
        for (int code = 0; code < 256; code++)
        {
            if ((code & 0x7F) == 0x7F) continue;
            Assert.That(Fp8E4M3.FromFloat(Fp8E4M3.ToFloat((byte)code)), Is.EqualTo(code), $"0x{code:X2}");
        }
    }

    [TestCase(448f, 0x7E)]
    [TestCase(449f, 0x7E)]
    [TestCase(464f, 0x7E)]            // where an unsaturated cast would reach the NaN code
    [TestCase(1e30f, 0x7E)]
    [TestCase(float.PositiveInfinity, 0x7E)]
    [TestCase(float.NegativeInfinity, 0xFE)]
    [TestCase(-500f, 0xFE)]
    [TestCase(float.MaxValue, 0x7E)]
    public void Saturates(float value, int code) => Assert.That(Fp8E4M3.FromFloat(value), Is.EqualTo(code));

    [Test]
    public void MidpointsRoundToTheEvenCode()
    {
        for (int lo = 0; lo < 0x7E; lo++)
        {
            // The midpoint of two neighbours has one more significant bit than either: exact in float.
            float mid = (Fp8E4M3.ToFloat((byte)lo) + Fp8E4M3.ToFloat((byte)(lo + 1))) / 2;
            int even = lo % 2 == 0 ? lo : lo + 1;
            Assert.That(Fp8E4M3.FromFloat(mid), Is.EqualTo(even), $"midpoint of 0x{lo:X2} and 0x{lo + 1:X2}");
            Assert.That(Fp8E4M3.FromFloat(-mid), Is.EqualTo(0x80 | even), $"negative midpoint of 0x{lo:X2}");
            Assert.That(Fp8E4M3.FromFloat(MathF.BitDecrement(mid)), Is.EqualTo(lo), $"just below the midpoint of 0x{lo:X2}");
            Assert.That(Fp8E4M3.FromFloat(MathF.BitIncrement(mid)), Is.EqualTo(lo + 1), $"just above the midpoint of 0x{lo:X2}");
        }
    }

    [Test]
    public void RandomValuesRoundToTheNearestCode()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int s) ? s : 1729;
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        var rng = new Random(seed);
        for (int i = 0; i < 20_000; i++)
        {
            // Magnitudes from far below the smallest subnormal to beyond saturation.
            float x = (float)((rng.NextDouble() + 0.5) * Math.Pow(2, rng.Next(-14, 11)) * (rng.Next(2) == 0 ? -1 : 1));
            Assert.That(Fp8E4M3.FromFloat(x), Is.EqualTo(Nearest(x)), $"x = {x:R} (seed {seed})");
        }
    }

    [Test]
    public void PerChannelQuantizationMapsEachRowsMaximumTo448()
    {
        var rng = new Random(5);
        const int rows = 6, cols = 40;
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() - 0.5) * (1 + i / cols);
        Array.Clear(w, 2 * cols, cols); // an all-zero row gets scale 1, not a division by zero
        var codes = new byte[w.Length];
        var scales = new float[rows];
        Fp8E4M3.QuantizePerChannel(w, rows, cols, codes, scales);
        Assert.That(scales[2], Is.EqualTo(1f));
        for (int r = 0; r < rows; r++)
        {
            var row = w.AsSpan(r * cols, cols).ToArray();
            if (r != 2)
                Assert.That(codes.Skip(r * cols).Take(cols).Any(c => (c & 0x7F) == 0x7E), Is.True, $"row {r} reaches ±448");
            for (int c = 0; c < cols; c++)
            {
                float back = Fp8E4M3.ToFloat(codes[r * cols + c]) * scales[r];
                // 3 mantissa bits: within half a step, 2^-4 relative, of the row's values (or of a subnormal step).
                Assert.That(Math.Abs(back - row[c]), Is.LessThanOrEqualTo(Math.Abs(row[c]) / 16 + scales[r] * 0.001f), $"[{r}, {c}]");
            }
        }
    }

    /// <summary>
    /// The per-token activation quantizer of the FP8 prefill GEMM (what quantize_fp8_act_rows computes): every value comes
    /// back within half a step of e4m3 at its magnitude (2^-4 relative for normals, 2^-10 · scale absolute below 2^-6 ·
    /// scale), nothing saturates (x / scale never passes 448 by more than a rounding, and each row's largest magnitude
    /// decodes to ±448), codes are never NaN, and an all-zero row has scale 1 and zero codes. Values are bf16, as the GPU reads them.
    /// </summary>
    [Test]
    public void QuantizePerTokenRoundTripsWithinHalfAStepAndNeverSaturates()
    {
        const int rows = 6, cols = 1040;
        var rng = new Random(3);
        var x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            x[i] = Bf16Round((float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }
        for (int j = 0; j < cols; j++) x[2 * cols + j] = 0;                        // an all-zero row
        x[3 * cols + 5] = Bf16Round(3e4f);                                           // an outlier: its row's small values go subnormal
        for (int j = 0; j < cols; j++) x[4 * cols + j] = Bf16Round(x[4 * cols + j] * 1e-30f); // tiny magnitudes: scale far below 1
        x[5 * cols + 9] = -Bf16Round(7.5f);                                          // a negative row maximum
        var codes = new byte[rows * cols];
        var scales = new float[rows];
        Fp8E4M3.QuantizePerToken(x, rows, cols, codes, scales);

        Assert.That(scales[2], Is.EqualTo(1f), "all-zero row: scale 1");
        Assert.That(codes.AsSpan(2 * cols, cols).ToArray(), Is.All.EqualTo((byte)0), "all-zero row: zero codes");
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * cols, cols);
            float amax = 0;
            foreach (float v in row) amax = MathF.Max(amax, MathF.Abs(v));
            if (amax > 0) Assert.That(scales[r], Is.EqualTo(amax / 448f), $"row {r}: scale = amax / 448");
            bool sawMax = amax == 0;
            for (int j = 0; j < cols; j++)
            {
                byte q = codes[r * cols + j];
                Assert.That((q & 0x7F) != 0x7F, $"row {r} col {j}: NaN code");
                Assert.That(q, Is.EqualTo(Nearest(row[j] / scales[r])), $"row {r} col {j}: nearest code, ties to even");
                Assert.That(Math.Abs(row[j] / scales[r]), Is.LessThanOrEqualTo(448 * (1 + 1e-6)), $"row {r} col {j}: saturated");
                double back = Fp8E4M3.ToFloat(q) * (double)scales[r];
                double bound = Math.Max(Math.Abs(row[j]) * Math.Pow(2, -4), scales[r] * Math.Pow(2, -10)) * (1 + 1e-6);
                Assert.That(Math.Abs(back - row[j]), Is.LessThanOrEqualTo(bound), $"row {r} col {j}: {row[j]} came back as {back}");
                if (amax > 0 && MathF.Abs(row[j]) == amax) { sawMax = true; Assert.That(q & 0x7F, Is.EqualTo(0x7E), $"row {r}: the largest magnitude is ±448"); }
            }
            Assert.That(sawMax, $"row {r}: its maximum was seen");
        }
    }

    /// <summary>fp32 → bf16 → fp32, round to nearest even (the values the GPU's bf16 activations hold).</summary>
    private static float Bf16Round(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000u;
        return BitConverter.UInt32BitsToSingle(bits);
    }
}

using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// INT4 round-to-nearest (group-wise scale and zero point) against values worked out by hand, properties every group
/// must have, and AutoAWQ's layout (<see cref="AwqPacking.Dequantize"/> reads our scales and zeros as they are).
/// </summary>
public class Int4RtnTests
{
    private static (byte[] Codes, Half[] Scales, byte[] Zeros, float[] Dequantized) Run(float[] m, int rows, int cols, int groupSize)
    {
        var codes = new byte[m.Length];
        var scales = new Half[m.Length / groupSize];
        var zeros = new byte[scales.Length];
        Int4Rtn.Quantize(m, rows, cols, groupSize, codes, scales, zeros);
        var dequantized = new float[m.Length];
        Int4Rtn.Dequantize(codes, scales, zeros, rows, cols, groupSize, dequantized);
        return (codes, scales, zeros, dequantized);
    }

    // fp16 nearest to 1/15: 2^-4 · (1 + 68/1024) (1/15 · 16 = 1.0667, and 0.0667 · 1024 = 68.27).
    private const double FifteenthInHalf = 0.066650390625;

    [Test]
    public void FourGroupsByHand()
    {
        // [2, 8] in groups of 4: scales and zeros are [2 groups, 2 rows], group-major.
        float[] m =
        [
            0f, 2.5f, 3.5f, 15f, /**/ -3f, -0.5f, 4f, 12f,
            0f, 0.25f, 0.5f, 1f, /**/ -7.5f, 7.5f, 0.5f, -0.5f,
        ];
        var (codes, scales, zeros, w) = Run(m, 2, 8, 4);

        // Row 0, group 0: range 15, scale 1, min 0 → zero 0; 2.5 rounds to the even 2, 3.5 to the even 4.
        // Row 0, group 1: range 15, scale 1, zero −round(−3) = 3; −0.5 rounds to −0 (even), code 3.
        // Row 1, group 0: range 1, scale fp16(1/15) = 0.06665…; 0.25 / s = 3.75 → 4, 0.5 / s = 7.50 → 8 (above the
        //   tie: the fp16 scale is a little below 1/15), 1 / s = 15.004 → 15.
        // Row 1, group 1: range 15, scale 1, zero −round(−7.5) = 8 (−7.5 rounds to the even −8); 7.5 → 8 + 8 = 16
        //   saturates at 15, so 7.5 comes back as 7; ±0.5 round to ±0, code 8.
        Assert.That(codes, Is.EqualTo(new byte[] { 0, 2, 4, 15, 0, 3, 7, 15, 0, 4, 8, 15, 0, 15, 8, 8 }));
        Assert.That(scales.Select(s => (double)s), Is.EqualTo(new[] { 1.0, FifteenthInHalf, 1.0, 1.0 }), "[group, row]");
        Assert.That(zeros, Is.EqualTo(new byte[] { 0, 0, 3, 8 }), "[group, row]");
        float s1 = (float)FifteenthInHalf;
        Assert.That(w, Is.EqualTo(new[]
        {
            0f, 2f, 4f, 15f, /**/ -3f, 0f, 4f, 12f,
            0f, 4 * s1, 8 * s1, 15 * s1, /**/ -8f, 7f, 0f, 0f,
        }));
    }

    [Test]
    public void AnAllEqualGroupGetsTheSmallestRange()
    {
        // max − min = 0: the range is taken as 1e-5, and 1e-5 / 15 = 6.67e-7 is an fp16 subnormal (steps of 2^-24):
        // 11.18 steps round to 11.
        double s = 11 * Math.Pow(2, -24);
        var zero = Run(new float[4], 1, 4, 4);
        Assert.That((double)zero.Scales[0], Is.EqualTo(s));
        Assert.That((zero.Codes, zero.Zeros, zero.Dequantized), Is.EqualTo((new byte[4], new byte[1], new float[4])), "zeros stay exactly zero");

        // −3e-6 / s = −4.58: zero point 5, every code round(−4.58) + 5 = 0, back as −5 · s.
        var negative = Run([-3e-6f, -3e-6f, -3e-6f, -3e-6f], 1, 4, 4);
        Assert.That((double)negative.Scales[0], Is.EqualTo(s));
        Assert.That(negative.Zeros, Is.EqualTo(new byte[] { 5 }));
        Assert.That(negative.Codes, Is.EqualTo(new byte[4]));
        Assert.That(negative.Dequantized.Select(x => (double)x), Is.All.EqualTo(-5 * s));
    }

    [Test]
    public void GroupsOnOneSideOfZeroClampTheZeroPointAndSaturate()
    {
        // Range 3: scale fp16(0.2) = 2^-3 · (1 + 614/1024) = 0.199951171875. The codes 0..15 stand for (q − z) · s,
        // and z in 0..15 keeps 0 inside that range, as AutoAWQ's quantizer does.
        const double s = 0.199951171875;
        float[] m = [10f, 11f, 12f, 13f, /**/ -13f, -12f, -11f, -10f];
        var (codes, scales, zeros, w) = Run(m, 1, 8, 4);
        Assert.That(scales.Select(x => (double)x), Is.EqualTo(new[] { s, s }));
        // All positive: −round(10 / s) = −50 clamps to 0, and round(w / s) ≥ 50 saturates at 15.
        // All negative: −round(−13 / s) = 65 clamps to 15, and round(w / s) + 15 ≤ −35 saturates at 0.
        Assert.That(zeros, Is.EqualTo(new byte[] { 0, 15 }));
        Assert.That(codes, Is.EqualTo(new byte[] { 15, 15, 15, 15, 0, 0, 0, 0 }));
        Assert.That(w.Select(x => (double)x), Is.EqualTo(new[] { 15 * s, 15 * s, 15 * s, 15 * s, -15 * s, -15 * s, -15 * s, -15 * s }));
    }

    [Test]
    public void AHugeRangeKeepsAFiniteScale()
    {
        // The range overflows fp32 to infinity, and anything past fp16's largest value would round to an infinite
        // scale: the scale stops at 65504.
        var (_, scales, zeros, w) = Run([-3e38f, 0f, 0f, 3e38f], 1, 4, 4);
        Assert.That((double)scales[0], Is.EqualTo(65504.0));
        Assert.That(zeros[0], Is.EqualTo(15));
        Assert.That(w.All(float.IsFinite), Is.True);
    }

    [Test]
    public void RandomWeightsComeBackWithinHalfAStep()
    {
        const int rows = 24, cols = 512, g = 128;
        var rng = new Random(5);
        var m = new float[rows * cols];
        for (int i = 0; i < m.Length; i++) m[i] = (float)((rng.NextDouble() - 0.3) * 0.02 * (1 + i % 7)); // groups straddle zero, unevenly
        var (codes, scales, zeros, w) = Run(m, rows, cols, g);

        int saturated = 0;
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < cols / g; k++)
            {
                var group = m.AsSpan(r * cols + k * g, g).ToArray();
                double range = group.Max() - group.Min(), s = (double)scales[k * rows + r];
                // The scale is range / 15 to fp16's precision (11 significant bits).
                Assert.That(s, Is.EqualTo(range / 15).Within(range / 15 * (Math.Pow(2, -11) + 1e-6)), $"scale of row {r}, group {k}");
                Assert.That(zeros[k * rows + r], Is.InRange(0, 15));
                for (int i = 0; i < g; i++)
                {
                    int at = r * cols + k * g + i;
                    Assert.That(codes[at], Is.InRange(0, 15));
                    double steps = w[at] / s; // an integer number of steps from 0: (q − z)
                    Assert.That(steps, Is.EqualTo(Math.Round(steps)), $"[{r}, {k * g + i}] is a multiple of the scale");
                    double error = Math.Abs(m[at] - (double)w[at]);
                    if (error > s / 2 * (1 + 1e-6))
                    {
                        // Saturation: the fp16 scale can be a hair below range / 15 (range / s ≤ 15 · (1 + 2^-11)) and
                        // the zero point is rounded, so values within a step of the group's top may need code 16. With
                        // z = round(−min / s), max / s − (15 − z) ≤ range / s − 14.5: they lose at most 15 · 2^-11 step more.
                        saturated++;
                        Assert.That(group.Max() - m[at], Is.LessThanOrEqualTo(s), $"[{r}, {k * g + i}] off by {error / s:F4} steps");
                        Assert.That(error, Is.LessThanOrEqualTo(s * (0.5 + 15 * Math.Pow(2, -11)) * (1 + 1e-6)), $"[{r}, {k * g + i}]");
                    }
                }
            }
        Assert.That(saturated, Is.LessThan(rows * cols / g), "saturation is the exception");
    }

    [Test]
    public void RoundTripIsQuantizeThenDequantize()
    {
        var rng = new Random(9);
        var m = Enumerable.Range(0, 4 * 256).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var (_, _, _, w) = Run(m, 4, 256, 128);
        Assert.That(Int4Rtn.RoundTrip(m, 4, 256), Is.EqualTo(w));
        Assert.That(w, Is.Not.EqualTo(m));
    }

    [Test]
    public void ScalesAndZerosAreLaidOutAsAwqStoresThem()
    {
        // AWQ keeps the weight transposed, [in, out], with scales and zeros [in / group, out]: ours, [cols / G, rows],
        // are the same arrays, so packing our codes transposed gives a layer AwqPacking dequantizes to our weights.
        const int rows = 16, cols = 64, g = 32; // rows: out, cols: in
        var rng = new Random(2);
        var m = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var (codes, scales, zeros, w) = Run(m, rows, cols, g);
        var transposed = new byte[rows * cols];
        for (int o = 0; o < rows; o++)
            for (int i = 0; i < cols; i++)
                transposed[i * rows + o] = codes[o * cols + i];
        var qweight = new int[cols * rows / 8];
        var qzeros = new int[cols / g * rows / 8];
        AwqPacking.PackQWeight(transposed, cols, rows, qweight);
        AwqPacking.PackQZeros(zeros, cols / g, rows, qzeros);
        var awq = new float[rows * cols];
        AwqPacking.Dequantize(qweight, qzeros, scales.Select(s => (float)s).ToArray(), cols, rows, g, awq);
        Assert.That(awq, Is.EqualTo(w));
    }

    [Test]
    public void ShapesAndValuesAreChecked()
    {
        var m = new float[2 * 8];
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 3, new byte[16], new Half[4], new byte[4]),
            Throws.ArgumentException.With.Message.Contains("power of two"));
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 16, new byte[16], new Half[2], new byte[2]),
            Throws.ArgumentException.With.Message.Contains("does not divide the 8 columns"));
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 4, new byte[15], new Half[4], new byte[4]),
            Throws.ArgumentException.With.Message.Contains("codes are 16 values, got 15"));
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 4, new byte[16], new Half[2], new byte[4]),
            Throws.ArgumentException.With.Message.Contains("scales [2, 2] are 4 values, got 2"));
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 4, new byte[16], new Half[4], new byte[5]),
            Throws.ArgumentException.With.Message.Contains("zero points [2, 2] are 4 values, got 5"));
        Assert.That(() => Int4Rtn.Quantize(new float[15], 2, 8, 4, new byte[16], new Half[4], new byte[4]),
            Throws.ArgumentException.With.Message.Contains("weights are 16 values, got 15"));
        m[13] = float.NaN;
        Assert.That(() => Int4Rtn.Quantize(m, 2, 8, 4, new byte[16], new Half[4], new byte[4]),
            Throws.ArgumentException.With.Message.Contains("weight [1, 5] is NaN"));

        var scales = Enumerable.Repeat(Half.One, 4).ToArray();
        Assert.That(() => Int4Rtn.Dequantize(new byte[16], scales, [0, 0, 16, 0], 2, 8, 4, new float[16]),
            Throws.ArgumentException.With.Message.Contains("zero point 16 of row 0, group 1"));
        var codes = new byte[16];
        codes[6] = 200;
        Assert.That(() => Int4Rtn.Dequantize(codes, scales, new byte[4], 2, 8, 4, new float[16]),
            Throws.ArgumentException.With.Message.Contains("code 200 at [0, 6]"));
    }
}

using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// AWQ's nibble order, checked against int32 constants packed by hand here, so a wrong order cannot hide behind
/// packing and unpacking code that share it. AutoAWQ packs column order_map[n] of a block of 8 into nibble n
/// (bits 4n..4n+3), with order_map = [0, 2, 4, 6, 1, 3, 5, 7]:
/// <code>
///   nibble:   7  6  5  4  3  2  1  0      (hex digits of the int32, most significant first)
///   column:   7  5  3  1  6  4  2  0
/// </code>
/// </summary>
public class AwqPackingTests
{
    // q [2, 16]: two rows, two int32 per row.
    private static readonly byte[] Q =
    [
        0, 1, 2, 3, 4, 5, 6, 7,     8, 9, 10, 11, 12, 13, 14, 15,
        3, 0, 0, 0, 0, 0, 0, 9,     0, 5, 0, 0, 0, 0, 12, 0,
    ];

    private static readonly int[] Packed =
    [
        // row 0, columns 0..7 = 0..7: digits (columns 7 5 3 1 6 4 2 0) = 7 5 3 1 6 4 2 0
        0x75316420,
        // row 0, columns 8..15 = 8..15: digits = 15 13 11 9 14 12 10 8
        unchecked((int)0xFDB9ECA8),
        // row 1, columns 0..7: column 0 = 3 → nibble 0; column 7 = 9 → nibble 7
        unchecked((int)0x90000003),
        // row 1, columns 8..15: column 9 (k = 1) = 5 → nibble 4; column 14 (k = 6) = 12 → nibble 3
        0x0005C000,
    ];

    [Test]
    public void UnpacksHandPackedWords()
    {
        var q = new byte[2 * 16];
        AwqPacking.UnpackQWeight(Packed, inFeatures: 2, outFeatures: 16, q);
        Assert.That(q, Is.EqualTo(Q));
    }

    [Test]
    public void PacksToHandPackedWords()
    {
        var packed = new int[4];
        AwqPacking.PackQWeight(Q, inFeatures: 2, outFeatures: 16, packed);
        Assert.That(packed.Select(p => p.ToString("X8")), Is.EqualTo(Packed.Select(p => p.ToString("X8"))));
    }

    [Test]
    public void ReverseOrderIsVllmsAwqReverseOrder() =>
        Assert.That(AwqPacking.NibbleOfColumn.ToArray(), Is.EqualTo(new byte[] { 0, 4, 1, 5, 2, 6, 3, 7 }));

    /// <summary>
    /// Dequantization by hand: in = 2 (one group of 2), out = 8; q rows are the first block of each row above, zero
    /// points all 1 (0x11111111), scales per output column. w is [out, in]: the transpose of q's [in, out].
    /// </summary>
    [Test]
    public void DequantizesHandPackedLayerTransposed()
    {
        int[] qweight = [0x75316420, unchecked((int)0x90000003)];           // q[0, :] = 0..7; q[1, :] = 3 0 0 0 0 0 0 9
        int[] qzeros = [0x11111111];                                          // z[0, :] = 1
        float[] scales = [0.5f, 1f, 2f, 4f, 0.25f, 0.125f, 1f, -1f];          // s[0, :]
        var w = new float[8 * 2];
        AwqPacking.Dequantize(qweight, qzeros, scales, inFeatures: 2, outFeatures: 8, groupSize: 2, w);
        float[] expected =
        [
            // w[o, 0] = (o − 1)·s[o]   w[o, 1] = (q[1, o] − 1)·s[o]
            -0.5f,   1f,               // o = 0: (0−1)·0.5, (3−1)·0.5
            0f,      -1f,              // o = 1: (1−1)·1,   (0−1)·1
            2f,      -2f,              // o = 2
            8f,      -4f,              // o = 3
            0.75f,   -0.25f,           // o = 4
            0.5f,    -0.125f,          // o = 5
            5f,      -1f,              // o = 6
            -6f,     -8f,              // o = 7: (7−1)·(−1), (9−1)·(−1)
        ];
        Assert.That(w, Is.EqualTo(expected));
    }

    [Test]
    public void DequantizeUsesEachGroupsZeroPointAndScale()
    {
        const int inF = 96, outF = 16, group = 32, groups = inF / group;
        var rng = new Random(11);
        var q = new byte[inF * outF];
        var z = new byte[groups * outF];
        var s = new float[groups * outF];
        rng.NextBytes(q);
        rng.NextBytes(z);
        for (int i = 0; i < q.Length; i++) q[i] &= 0xF;
        for (int i = 0; i < z.Length; i++) z[i] &= 0xF;
        for (int i = 0; i < s.Length; i++) s[i] = (float)(Half)(rng.NextDouble() * 0.01 + 0.001);
        var qweight = new int[inF * outF / 8];
        var qzeros = new int[groups * outF / 8];
        AwqPacking.PackQWeight(q, inF, outF, qweight);
        AwqPacking.PackQZeros(z, groups, outF, qzeros);

        var w = new float[outF * inF];
        AwqPacking.Dequantize(qweight, qzeros, s, inF, outF, group, w);
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++)
            {
                int g = i / group;
                Assert.That(w[o * inF + i], Is.EqualTo((q[i * outF + o] - z[g * outF + o]) * s[g * outF + o]), $"w[{o}, {i}]");
            }
    }

    [Test]
    public void PackThenUnpackIsTheIdentity()
    {
        var rng = new Random(3);
        var v = new byte[5 * 24];
        for (int i = 0; i < v.Length; i++) v[i] = (byte)rng.Next(16);
        var packed = new int[5 * 3];
        AwqPacking.Pack(v, 5, 24, packed);
        var back = new byte[v.Length];
        AwqPacking.Unpack(packed, 5, 24, back);
        Assert.That(back, Is.EqualTo(v));
    }

    [Test]
    public void BadShapesAndValuesAreRefused()
    {
        Assert.Throws<ArgumentException>(() => AwqPacking.Unpack(new int[2], 1, 12, new byte[12]), "columns not a multiple of 8");
        Assert.Throws<ArgumentException>(() => AwqPacking.Unpack(new int[2], 1, 8, new byte[8]), "packed length");
        Assert.Throws<ArgumentException>(() => AwqPacking.Pack(new byte[] { 16, 0, 0, 0, 0, 0, 0, 0 }, 1, 8, new int[1]), "value over 15");
        Assert.Throws<ArgumentException>(() => AwqPacking.Dequantize(new int[6], new int[1], new float[8], 6, 8, 4, new float[48]), "group not dividing in");
    }
}

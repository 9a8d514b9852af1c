using QwQ.Cuda.Kernels;

namespace QwQ.Cuda.Tests.Quantization;

/// <summary>
/// The int4 device layout (kernels/int4.cuh, mirrored by <see cref="Int4Ops"/>), checked on the CPU: it is a
/// permutation of the nibbles, a warp's 64-k chunk of a 16-row tile is one contiguous 512-byte block, and each lane's
/// word holds what the mma's A fragment needs (two consecutive k of one row per bf16x2 pair).
/// </summary>
public sealed class Int4LayoutTests
{
    [Test]
    public void EveryCodeHasItsOwnNibbleInsideTheImage()
    {
        int n = 40, k = 192; // three tiles (the last padded), three chunks
        var seen = new HashSet<(long, int)>();
        for (int r = 0; r < n; r++)
            for (int j = 0; j < k; j++)
            {
                long word = Int4Ops.WordOffset(r, j, k);
                int bit = Int4Ops.Bit(j);
                Assert.That(word % 4, Is.EqualTo(0));
                Assert.That(word + 4, Is.LessThanOrEqualTo(Int4Ops.CodeBytes(n, k)));
                Assert.That(bit % 4 == 0 && bit < 32, $"bit {bit}");
                Assert.That(seen.Add((word, bit)), $"({r}, {j}) shares a nibble");
            }
        Assert.That(seen.Count, Is.EqualTo(n * k));
    }

    [Test]
    public void AChunkOfATileIsOneBlockAndPairsHoldConsecutiveK()
    {
        int k = 256;
        // tile 1, chunk 2: rows 16..31, k 128..191
        long start = 1 * 8L * k + 2 * 512;
        for (int r = 16; r < 32; r++)
            for (int j = 128; j < 192; j++)
            {
                long word = Int4Ops.WordOffset(r, j, k);
                Assert.That(word, Is.InRange(start, start + 508), $"({r}, {j})");
                int lane = (int)(word - start) / 16;
                Assert.That(lane, Is.EqualTo(4 * (r % 8) + (j % 64) / 16), "lane (g, t4) holds row g and g + 8, k 16·t4 …");
            }
        // element pairs (2p, 2p + 1) share a bf16x2 slot: bits 4p and 16 + 4p of one word
        for (int j = 0; j < 16; j += 2)
        {
            Assert.That(Int4Ops.WordOffset(3, j, k), Is.EqualTo(Int4Ops.WordOffset(3, j + 1, k)));
            Assert.That(Int4Ops.Bit(j + 1), Is.EqualTo(Int4Ops.Bit(j) + 16));
        }
    }

    [Test]
    public void ScaleZeroWordHoldsTheFp16ScaleAndBf16Of128PlusZero()
    {
        uint word = Int4Ops.PackScaleZero((Half)0.0123f, 11);
        Assert.That(BitConverter.UInt16BitsToHalf((ushort)word), Is.EqualTo((Half)0.0123f));
        float high = BitConverter.UInt32BitsToSingle(word & 0xFFFF0000u); // bf16 bits → fp32
        Assert.That(high, Is.EqualTo(128f + 11));
    }
}

using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>fill_normal_bf16 (statistics, determinism, host mirror), fill_const_bf16, convert_f32_to_bf16.</summary>
public sealed class InitKernelTests : KernelTestBase
{
    private InitOps _init = null!;

    protected override void CreateOps() => _init = new InitOps(Lib);

    private ulong RandomSeed() => (ulong)Rng.NextInt64() ^ ((ulong)Rng.Next() << 63);

    private ushort[] FillNormal(long count, ulong seed, float mean, float std, long byteOffset = 0)
    {
        var b = Alloc(count * 2 + byteOffset);
        b.Memset32(Bf16NaNPair);
        _init.FillNormalBf16(Stream, b.Ptr + (ulong)byteOffset, count, seed, mean, std);
        Stream.Synchronize();
        var all = b.ToArray<ushort>();
        return all.AsSpan((int)(byteOffset / 2), (int)count).ToArray();
    }

    [Test]
    public void NormalHasRequestedStatistics()
    {
        const long n = 10_000_000;
        ulong seed = RandomSeed();
        float mean = (float)(Rng.NextDouble() * 2 - 1), std = (float)(0.01 + Rng.NextDouble() * 2);
        TestContext.Out.WriteLine($"fill seed {seed}, mean {mean}, std {std}");
        float[] v = Bf16.ToFloat(FillNormal(n, seed, mean, std));
        AssertAllFinite(v, "fill_normal");

        double sum = 0, sumSq = 0;
        long within1 = 0, within2 = 0;
        foreach (float x in v)
        {
            sum += x;
            double z = (x - mean) / std;
            sumSq += (x - mean) * (double)(x - mean);
            if (Math.Abs(z) < 1) within1++;
            if (Math.Abs(z) < 2) within2++;
        }
        double m = sum / n, s = Math.Sqrt(sumSq / n);
        TestContext.Out.WriteLine($"sample mean {m}, std {s}, P(|z|<1) {within1 / (double)n}, P(|z|<2) {within2 / (double)n}");
        Assert.Multiple(() =>
        {
            // Standard error of the mean is std/sqrt(n) ≈ 3e-4·std; bf16 rounding of mean adds ≤ 2^-9·|mean|.
            Assert.That(Math.Abs(m - mean), Is.LessThan(2e-3 * std + 4e-3 * Math.Abs(mean)), "mean");
            Assert.That(Math.Abs(s / std - 1), Is.LessThan(5e-3 + 4e-3 * Math.Abs(mean) / std), "std");
            // bf16 rounds every value to a grid of spacing up to 2^-7·|x|, which moves the mass of up to half a cell
            // across each of the two boundaries mean ± k·std: with a mean of 15 std (a draw below) that alone moved
            // P(|z| < 1) by 0.014 on the H200 (session 22), so the bound takes it in: 2·φ(k)·2^-8·(|mean|/std + k).
            double Grid(double k) => 2 * Math.Exp(-k * k / 2) / Math.Sqrt(2 * Math.PI) * Math.Pow(2, -8) * (Math.Abs(mean) / std + k);
            Assert.That(within1 / (double)n, Is.EqualTo(0.6827).Within(0.01 + Grid(1)), "P(|z| < 1)");
            Assert.That(within2 / (double)n, Is.EqualTo(0.9545).Within(0.01 + Grid(2)), "P(|z| < 2)");
        });
    }

    [Test]
    public void NormalIsDeterministicPerSeedAndIndependentOfGridAndAlignment()
    {
        ulong seed = RandomSeed();
        const long n = 3_000_001; // odd: exercises the scalar tail
        ushort[] a = FillNormal(n, seed, 0, 1);
        ushort[] b = FillNormal(n, seed, 0, 1);
        Assert.That(b, Is.EqualTo(a), "same seed, same values");

        // A shorter fill launches a smaller grid: the common prefix must be identical.
        ushort[] shortFill = FillNormal(1000, seed, 0, 1);
        Assert.That(shortFill, Is.EqualTo(a.AsSpan(0, 1000).ToArray()), "independent of grid size");

        // An unaligned destination takes the scalar path: same values.
        ushort[] unaligned = FillNormal(10_001, seed, 0, 1, byteOffset: 2);
        Assert.That(unaligned, Is.EqualTo(a.AsSpan(0, 10_001).ToArray()), "independent of alignment");

        ushort[] other = FillNormal(n, seed + 1, 0, 1);
        long same = 0;
        for (long i = 0; i < n; i++) if (other[i] == a[i]) same++;
        Assert.That(same, Is.LessThan(n / 50), "a different seed gives different values");
    }

    [Test]
    public void NormalMatchesHostMirror()
    {
        ulong seed = RandomSeed();
        const float mean = 0.25f, std = 0.02f;
        ushort[] got = FillNormal(100_000, seed, mean, std);
        for (int i = 0; i < got.Length; i++)
        {
            float expected = InitOps.NormalReference(seed, i, mean, std);
            float g = Bf16.ToFloat(got[i]);
            // bf16 rounding (2^-8 relative) plus last-ulp differences of the transcendentals.
            Assert.That(g, Is.EqualTo(expected).Within(Math.Abs(expected) * 8e-3 + 1e-6 * std), $"element {i}");
        }
    }

    [Test]
    public void FillConstWritesEveryElement()
    {
        const long n = 100_003;
        float value = Bf16.Round((float)(Rng.NextDouble() * 10 - 5));
        var b = Alloc((n + 1) * 2);
        b.Memset32(Bf16NaNPair);
        _init.FillConstBf16(Stream, b.Ptr + 2, n, value); // unaligned start: scalar head, vector middle is skipped
        _init.FillConstBf16(Stream, b.Ptr, 1, value);
        Stream.Synchronize();
        Assert.That(b.ToArray<ushort>(), Is.All.EqualTo(Bf16.FromFloat(value)));

        var c = Alloc(n * 2);
        c.Memset32(Bf16NaNPair);
        _init.FillConstBf16(Stream, c.Ptr, n, value);
        Stream.Synchronize();
        Assert.That(c.ToArray<ushort>(), Is.All.EqualTo(Bf16.FromFloat(value)), "aligned");
    }

    [Test]
    public void ConvertRoundsLikeHost([Values(0, 4)] int byteOffset)
    {
        const int n = 100_003;
        float[] src = Normal(n, 100f);
        src[0] = float.NaN;
        src[1] = float.PositiveInfinity;
        src[2] = float.NegativeInfinity;
        src[3] = 3.4e38f; // rounds to +inf in bf16
        src[4] = 1.00390625f; // exact tie: rounds to even (1.0)
        src[5] = -0f;
        src[6] = 1e-40f; // subnormal
        var dSrc = Alloc(n * 4L + 16);
        dSrc.CopyFromHost<float>(src, byteOffset);
        var dDst = PoisonedBf16(n + 8);
        int dstElement = byteOffset / 4; // offset 4 bytes in src -> 1 element (2 bytes) in dst: both unaligned
        _init.ConvertF32ToBf16(Stream, dSrc.Ptr + (ulong)byteOffset, dDst.Ptr + (ulong)(2 * dstElement), n);
        Stream.Synchronize();
        ushort[] all = dDst.ToArray<ushort>();
        ushort[] got = all.AsSpan(dstElement, n).ToArray();
        Assert.That(all.AsSpan(0, dstElement).ToArray(), Is.All.EqualTo(Bf16Poison), "nothing written before dst");
        Assert.That(all[dstElement + n], Is.EqualTo(Bf16Poison), "nothing written after dst");
        for (int i = 0; i < n; i++)
        {
            if (float.IsNaN(src[i])) Assert.That(float.IsNaN(Bf16.ToFloat(got[i])), $"element {i} NaN");
            else Assert.That(got[i], Is.EqualTo(Bf16.FromFloat(src[i])), $"element {i} ({src[i]})");
        }
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(64);
        Assert.That(() => _init.FillNormalBf16(Stream, b.Ptr, -1, 1, 0, 1),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("count"));
        Assert.That(() => _init.FillNormalBf16(Stream, b.Ptr, 8, 1, 0, -1),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("std"));
        Assert.That(() => _init.ConvertF32ToBf16(Stream, b.Ptr + 2, b.Ptr, 8),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("src"));
    }
}

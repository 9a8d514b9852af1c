using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Sampling;

/// <summary>
/// A sequential model of sampling_radix_select in kernels/sampling.cu (11/11/10-bit digit histograms, bins
/// scanned from the top) checked against the sort-based thresholds CpuSampler uses. This pins the algorithm on
/// CI; the GPU tests then check the CUDA code against CpuSampler bit for bit.
/// </summary>
public class RadixSelectModelTests
{
    private static uint RadixSelect(uint[] key, ulong[] weight, uint minKey, ulong need)
    {
        uint prefix = 0, mask = 0;
        (int Shift, int Bins)[] passes = [(21, 2048), (10, 2048), (0, 1024)];
        foreach (var (shift, nb) in passes)
        {
            var hist = new ulong[nb];
            for (int i = 0; i < key.Length; i++)
                if (key[i] >= minKey && (key[i] & mask) == prefix && weight[i] > 0)
                    hist[(key[i] >> shift) & (uint)(nb - 1)] += weight[i];
            ulong above = 0;
            int digit = -1;
            for (int b = nb - 1; b >= 0; b--)
            {
                if (hist[b] > 0 && above < need && need <= above + hist[b]) { digit = b; break; }
                above += hist[b];
            }
            Assert.That(digit, Is.GreaterThanOrEqualTo(0), "no bin reached the target");
            need -= above;
            prefix |= (uint)digit << shift;
            mask |= (uint)(nb - 1) << shift;
        }
        return prefix;
    }

    [Test]
    public void RadixThresholdsEqualSortThresholds()
    {
        var rng = new Random(8);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = rng.Next(1, 3000);
            var x = new float[n];
            for (int i = 0; i < n; i++)
                x[i] = trial % 3 == 0 ? MathF.Round((float)rng.NextDouble() * 8f) / 4f : (float)(rng.NextDouble() * 20 - 10);
            float max = x.Max();
            var key = x.Select(SamplingMath.Key).ToArray();
            var w = x.Select(v => SamplingMath.Weight(SamplingMath.Exp(Math.Max(SamplingMath.Delta(v, max), -28f)))).ToArray();

            // top-k: the k-th largest key.
            int k = rng.Next(1, n + 1);
            var sorted = key.OrderBy(v => v).ToArray();
            uint kth = sorted[n - k];
            Assert.That(RadixSelect(key, Enumerable.Repeat(1ul, n).ToArray(), 0, (ulong)k), Is.EqualTo(kth), $"top-k trial {trial}");

            // top-p over the top-k survivors: first distinct key from the top whose cumulative mass reaches the target.
            ulong mass = 0;
            for (int i = 0; i < n; i++) if (key[i] >= kth) mass += w[i];
            float p = (float)rng.NextDouble();
            if (p == 0f) p = 0.5f;
            ulong target = Math.Clamp(SamplingMath.CeilMul(p, mass), 1ul, mass);
            var byKey = Enumerable.Range(0, n).Where(i => key[i] >= kth).GroupBy(i => key[i]).OrderByDescending(g => g.Key);
            ulong cum = 0;
            uint expect = 0;
            foreach (var g in byKey)
            {
                cum += g.Aggregate(0ul, (a, i) => a + w[i]);
                if (cum >= target) { expect = g.Key; break; }
            }
            Assert.That(RadixSelect(key, w, kth, target), Is.EqualTo(expect), $"top-p trial {trial}");
        }
    }
}

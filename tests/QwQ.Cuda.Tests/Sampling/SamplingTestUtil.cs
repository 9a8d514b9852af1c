using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Sampling;

/// <summary>Logit fixtures and a chi-square goodness-of-fit test for the sampler tests.</summary>
internal static class SamplingTestUtil
{
    public const int VocabRows = 152064;
    public const int ValidVocab = 151669;

    /// <summary>[VocabRows] logits: ~-20 background, <paramref name="hot"/> tokens at random ids with logits in
    /// [0, spread), and the padded rows beyond ValidVocab set larger than everything (they must never win).</summary>
    public static float[] ConcentratedLogits(int seed, int hot = 50, float spread = 4f, int[]? hotIds = null,
        int rows = VocabRows, int valid = ValidVocab)
    {
        var rng = new Random(seed);
        var l = new float[rows];
        for (int i = 0; i < rows; i++) l[i] = -20f - (float)rng.NextDouble() * 10f;
        var ids = new HashSet<int>();
        while (ids.Count < hot) ids.Add(rng.Next(valid));
        foreach (int id in ids) l[id] = (float)rng.NextDouble() * spread;
        if (hotIds is not null) ids.CopyTo(hotIds);
        for (int i = valid; i < rows; i++) l[i] = 100f;
        return l;
    }

    /// <summary>[VocabRows] logits ~ N(0, sigma) (a broad distribution: most of the vocabulary is a candidate).</summary>
    public static float[] GaussianLogits(int seed, float sigma = 3f)
    {
        var rng = new Random(seed);
        var l = new float[VocabRows];
        for (int i = 0; i < VocabRows; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            l[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return l;
    }

    /// <summary>Kept ids (weight &gt; 0) of a filtered-weights array.</summary>
    public static SortedSet<int> Kept(ulong[] weights)
    {
        var s = new SortedSet<int>();
        for (int i = 0; i < weights.Length; i++) if (weights[i] > 0) s.Add(i);
        return s;
    }

    /// <summary>
    /// p-value of Pearson's chi-square test of <paramref name="observed"/> counts (over token ids) against the
    /// distribution proportional to <paramref name="weights"/>. Bins with expected count &lt; 5 are pooled.
    /// Returns also the number of draws that fell on zero-weight tokens (must be 0).
    /// </summary>
    public static double ChiSquarePValue(ulong[] weights, int[] observed, out int impossible)
    {
        double total = 0;
        foreach (ulong w in weights) total += w;
        long n = 0;
        foreach (int c in observed) n += c;
        impossible = 0;
        double chi = 0, poolE = 0, poolO = 0;
        int bins = 0;
        for (int i = 0; i < weights.Length; i++)
        {
            if (weights[i] == 0)
            {
                impossible += observed[i];
                continue;
            }
            double e = n * (weights[i] / total);
            if (e < 5)
            {
                poolE += e;
                poolO += observed[i];
                continue;
            }
            chi += (observed[i] - e) * (observed[i] - e) / e;
            bins++;
        }
        if (poolE > 0)
        {
            chi += (poolO - poolE) * (poolO - poolE) / poolE;
            bins++;
        }
        if (bins < 2) return 1.0;
        return UpperRegularizedGamma((bins - 1) / 2.0, chi / 2.0);
    }

    /// <summary>Q(a, x) = Γ(a, x) / Γ(a): series for x &lt; a + 1, Lentz continued fraction otherwise.</summary>
    public static double UpperRegularizedGamma(double a, double x)
    {
        if (x <= 0) return 1.0;
        double logPrefix = a * Math.Log(x) - x - LogGamma(a);
        if (x < a + 1)
        {
            double term = 1.0 / a, sum = term;
            for (int k = 1; k < 10000; k++)
            {
                term *= x / (a + k);
                sum += term;
                if (term < sum * 1e-15) break;
            }
            return Math.Max(0.0, 1.0 - sum * Math.Exp(logPrefix));
        }
        const double tiny = 1e-300;
        double b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
        for (int i = 1; i < 10000; i++)
        {
            double an = -i * (i - a);
            b += 2;
            d = an * d + b;
            if (Math.Abs(d) < tiny) d = tiny;
            c = b + an / c;
            if (Math.Abs(c) < tiny) c = tiny;
            d = 1 / d;
            double delta = d * c;
            h *= delta;
            if (Math.Abs(delta - 1) < 1e-15) break;
        }
        return Math.Exp(logPrefix) * h;
    }

    /// <summary>ln Γ(x) for x &gt; 0 (Lanczos, g = 7, 9 terms).</summary>
    public static double LogGamma(double x)
    {
        ReadOnlySpan<double> c =
        [
            0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
            -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
            1.5056327351493116e-7,
        ];
        if (x < 0.5) return Math.Log(Math.PI / Math.Sin(Math.PI * x)) - LogGamma(1 - x);
        x -= 1;
        double s = c[0];
        for (int i = 1; i < 9; i++) s += c[i] / (x + i);
        double t = x + 7.5;
        return 0.5 * Math.Log(2 * Math.PI) + (x + 0.5) * Math.Log(t) - t + Math.Log(s);
    }

    /// <summary>Relative probabilities exp(l - max) in double, over ids &lt; ValidVocab (independent of SamplingMath).</summary>
    public static double[] Softmax(ReadOnlySpan<float> logits, float temperature)
    {
        var p = new double[ValidVocab];
        double max = double.NegativeInfinity;
        for (int i = 0; i < ValidVocab; i++) max = Math.Max(max, logits[i] / (double)temperature);
        double sum = 0;
        for (int i = 0; i < ValidVocab; i++) sum += p[i] = Math.Exp(logits[i] / (double)temperature - max);
        for (int i = 0; i < ValidVocab; i++) p[i] /= sum;
        return p;
    }
}

using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Sampling.SamplingTestUtil;

namespace QwQ.Cuda.Tests.Sampling;

public class CpuSamplerTests
{
    // Many-draw tests use a 1024-row vocabulary (1000 real tokens) to stay fast on a loaded CI machine;
    // the code paths are the same as at 152064 (the GPU tests use the real size).
    private const int MidRows = 1024, MidValid = 1000;

    private static CpuSampler Mid(ulong seed) => new(MidRows, MidValid, seed);

    private static float[] MidLogits(int seed) => ConcentratedLogits(seed, rows: MidRows, valid: MidValid);

    // Small vocabulary: 12 real tokens, 16 rows.
    private static CpuSampler Small(ulong seed = 1) => new(16, 12, seed);

    private static float[] SmallLogits(params double[] probs)
    {
        var l = new float[16];
        Array.Fill(l, -1000f);
        for (int i = 0; i < probs.Length; i++) l[i] = (float)Math.Log(probs[i]);
        for (int i = 12; i < 16; i++) l[i] = 1000f; // padded rows: never sampled
        return l;
    }

    private static SortedSet<int> KeptSet(CpuSampler s, float[] logits, SamplingOptions o)
    {
        var w = new ulong[s.ValidVocab];
        s.FilteredWeights(logits, o, 0, w);
        return Kept(w);
    }

    [Test]
    public void GreedyIsArgmaxWithLowestIdOnTiesAndIgnoresPaddedRows()
    {
        var s = Small();
        var l = new float[16];
        l[3] = 2f; l[7] = 2f; l[5] = 1f; l[13] = 50f;
        Assert.That(s.Sample(l, SamplingOptions.Greedy, 0), Is.EqualTo(3));
        var all = new float[16];
        Array.Fill(all, float.NegativeInfinity);
        all[14] = 0f;
        Assert.Catch<QwQ.Cuda.Errors.QwqException>(() => s.Sample(all, SamplingOptions.Greedy, 0), "nothing sampleable is finite: no arbitrary pick");
        var full = ConcentratedLogits(5);
        var big = new CpuSampler(VocabRows, ValidVocab, 1);
        int g = big.Sample(full, SamplingOptions.Greedy, 0);
        Assert.That(g, Is.LessThan(ValidVocab));
        Assert.That(full[g], Is.EqualTo(full.AsSpan(0, ValidVocab).ToArray().Max()));
    }

    [Test]
    public void PaddedRowsAreNeverSampled()
    {
        var l = MidLogits(9);
        var s = Mid(5);
        var o = new SamplingOptions { Temperature = 5f };
        for (int step = 0; step < 2000; step++) Assert.That(s.Sample(l, o, step), Is.LessThan(MidValid));
        var big = new CpuSampler(VocabRows, ValidVocab, 5);
        var full = ConcentratedLogits(9);
        for (int step = 0; step < 5; step++) Assert.That(big.Sample(full, o, step), Is.LessThan(ValidVocab));
    }

    [Test]
    public void TopKKeepsTheKLargestPlusTies()
    {
        var s = Small();
        var l = SmallLogits(0.3, 0.2, 0.2, 0.2, 0.05, 0.05);
        Assert.That(KeptSet(s, l, new() { TopK = 1 }), Is.EqualTo(new[] { 0 }));
        Assert.That(KeptSet(s, l, new() { TopK = 2 }), Is.EqualTo(new[] { 0, 1, 2, 3 }), "ties at the k-th value are kept");
        Assert.That(KeptSet(s, l, new() { TopK = 4 }), Is.EqualTo(new[] { 0, 1, 2, 3 }));
        Assert.That(KeptSet(s, l, new() { TopK = 5 }), Is.EqualTo(new[] { 0, 1, 2, 3, 4, 5 }));
        Assert.That(KeptSet(s, l, new() { TopK = 0 }), Is.EqualTo(new[] { 0, 1, 2, 3, 4, 5 }));
        Assert.That(KeptSet(s, l, new() { TopK = 1000 }), Is.EqualTo(new[] { 0, 1, 2, 3, 4, 5 }));
    }

    [Test]
    public void TopKOnLargeRandomLogitsMatchesSort()
    {
        var l = GaussianLogits(11, sigma: 2f);
        var s = new CpuSampler(VocabRows, ValidVocab, 1);
        foreach (int k in new[] { 1, 2, 40, 1000, 50000 })
        {
            var sorted = l.AsSpan(0, ValidVocab).ToArray();
            Array.Sort(sorted);
            float kth = sorted[ValidVocab - k];
            var expect = Enumerable.Range(0, ValidVocab).Where(i => l[i] >= kth).ToHashSet();
            var w = new ulong[ValidVocab];
            s.FilteredWeights(l, new() { TopK = k }, 0, w);
            // Only tokens within 28 of the max can have weight; all others are weight 0 by construction.
            var keptOrImpossible = Enumerable.Range(0, ValidVocab).Where(i => w[i] > 0).ToHashSet();
            Assert.That(keptOrImpossible.IsSubsetOf(expect), Is.True, $"k={k}");
            Assert.That(keptOrImpossible.Count, Is.EqualTo(expect.Count), $"k={k}");
        }
    }

    [Test]
    public void TopPKeepsTheSmallestPrefixReachingP()
    {
        var s = Small();
        var l = SmallLogits(0.5, 0.3, 0.15, 0.05);
        Assert.That(KeptSet(s, l, new() { TopP = 0.4f }), Is.EqualTo(new[] { 0 }));
        Assert.That(KeptSet(s, l, new() { TopP = 0.75f }), Is.EqualTo(new[] { 0, 1 }));
        Assert.That(KeptSet(s, l, new() { TopP = 0.85f }), Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(KeptSet(s, l, new() { TopP = 0.99f }), Is.EqualTo(new[] { 0, 1, 2, 3 }));
        Assert.That(KeptSet(s, l, new() { TopP = 1f }), Is.EqualTo(new[] { 0, 1, 2, 3 }));
        // Ties at the boundary are all kept.
        var t = SmallLogits(0.4, 0.2, 0.2, 0.2);
        Assert.That(KeptSet(s, t, new() { TopP = 0.5f }), Is.EqualTo(new[] { 0, 1, 2, 3 }));
    }

    [Test]
    public void TopPMassIsRelativeToTopKSurvivors()
    {
        var s = Small();
        var l = SmallLogits(0.4, 0.3, 0.2, 0.1);
        // Alone, top-p 0.75 needs 0.4+0.3+0.2; after top-k 3 the survivors renormalise to .444/.333/.222.
        Assert.That(KeptSet(s, l, new() { TopP = 0.75f }), Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(KeptSet(s, l, new() { TopK = 3, TopP = 0.75f }), Is.EqualTo(new[] { 0, 1 }));
    }

    [Test]
    public void TopPOnLargeRandomLogitsMatchesDoubleReference()
    {
        var l = GaussianLogits(12, sigma: 2.5f);
        var s = new CpuSampler(VocabRows, ValidVocab, 1);
        var p = Softmax(l, 1f);
        var order = Enumerable.Range(0, ValidVocab).OrderByDescending(i => p[i]).ToArray();
        foreach (float topP in new[] { 0.1f, 0.5f, 0.9f, 0.95f })
        {
            double cum = 0;
            int count = 0;
            while (cum < topP) cum += p[order[count++]];
            if (Math.Abs(cum - topP) < 1e-5 || Math.Abs(cum - p[order[count - 1]] - topP) < 1e-5) continue; // too close to call
            var w = new ulong[ValidVocab];
            s.FilteredWeights(l, new() { TopP = topP }, 0, w);
            Assert.That(Kept(w), Is.EquivalentTo(order.Take(count)), $"top_p={topP}");
        }
    }

    [Test]
    public void MinPKeepsTokensAboveFractionOfTheMax()
    {
        var s = Small();
        var l = SmallLogits(0.5, 0.3, 0.15, 0.05);
        Assert.That(KeptSet(s, l, new() { MinP = 0.25f }), Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(KeptSet(s, l, new() { MinP = 0.5f }), Is.EqualTo(new[] { 0, 1 }));
        Assert.That(KeptSet(s, l, new() { MinP = 1f }), Is.EqualTo(new[] { 0 }));
        Assert.That(KeptSet(s, l, new() { MinP = 0f }), Is.EqualTo(new[] { 0, 1, 2, 3 }));
        // Temperature applies first: at T=2 the ratios are square roots.
        Assert.That(KeptSet(s, l, new() { MinP = 0.5f, Temperature = 2f }), Is.EqualTo(new[] { 0, 1, 2 }));
    }

    [Test]
    public void WeightsAreTheSoftmax()
    {
        var l = ConcentratedLogits(21);
        var s = new CpuSampler(VocabRows, ValidVocab, 1);
        var w = new ulong[ValidVocab];
        s.FilteredWeights(l, new() { Temperature = 0.7f }, 0, w);
        var p = Softmax(l, 0.7f);
        double total = w.Aggregate(0.0, (a, x) => a + x);
        for (int i = 0; i < ValidVocab; i++)
            if (p[i] > 1e-6) Assert.That(w[i] / total, Is.EqualTo(p[i]).Within(1e-6 * p[i] + 1e-12), $"id {i}");
    }

    [Test]
    public void BiasAndPenaltiesChangeLogitsAsSpecified()
    {
        var s = Small();
        var l = new float[16];
        float[] raw = [2f, -1f, 0.5f, 3f, -2f, 1f, 0f, 0f, 0f, 0f, 0f, 0f];
        raw.CopyTo(l, 0);
        s.Record([0, 1, 1, 2, 2, 2]); // counts: id0 1, id1 2, id2 3
        var o = new SamplingOptions
        {
            Temperature = 2f, RepetitionPenalty = 1.25f, PresencePenalty = 0.5f, FrequencyPenalty = 0.25f,
            LogitBias = new Dictionary<int, float> { [0] = 1f, [3] = -10f, [5] = float.NegativeInfinity },
        };
        s.FilteredWeights(l, o, 0, new ulong[12]);
        var x = s.LastProcessed.ToArray();
        float Pen(float v, int c) => (v < 0 ? v * 1.25f : v / 1.25f) - (0.5f + 0.25f * c);
        Assert.Multiple(() =>
        {
            Assert.That(x[0], Is.EqualTo(Pen(2f + 1f, 1) / 2f)); // bias, then penalties, then temperature
            Assert.That(x[1], Is.EqualTo(Pen(-1f, 2) / 2f));
            Assert.That(x[2], Is.EqualTo(Pen(0.5f, 3) / 2f));
            Assert.That(x[3], Is.EqualTo((3f - 10f) / 2f)); // unseen: bias only
            Assert.That(x[4], Is.EqualTo(-1f));
            Assert.That(x[5], Is.EqualTo(float.NegativeInfinity));
        });
    }

    [Test]
    public void PenaltiesSteerGreedy()
    {
        var s = Small();
        var l = new float[16];
        l[0] = 2f; l[1] = 1.9f; l[2] = -1f; l[3] = -1.05f;
        Assert.That(s.Sample(l, SamplingOptions.Greedy, 0), Is.EqualTo(0)); // counted: id0 = 1
        Assert.That(s.Counts[0], Is.EqualTo(1));
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { RepetitionPenalty = 1.1f }, 1), Is.EqualTo(1)); // 2/1.1 < 1.9
        s.Reset();
        Assert.That(s.Counts[0], Is.EqualTo(0));
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { RepetitionPenalty = 1.1f }, 2), Is.EqualTo(0));
        s.Reset();
        s.Record([0]);
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { PresencePenalty = 0.2f }, 3), Is.EqualTo(1));
        s.Reset();
        s.Record([0]);
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { PresencePenalty = 0.05f }, 4), Is.EqualTo(0));
        s.Reset();
        s.Record([0, 0]);
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { FrequencyPenalty = 0.04f }, 5), Is.EqualTo(0)); // 2 - .08 > 1.9
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { FrequencyPenalty = 0.04f }, 6), Is.EqualTo(1)); // 3 counts: 2 - .12 < 1.9
        // Negative logits are multiplied: -1 * 1.1 < -1.05.
        var neg = new float[16];
        Array.Fill(neg, -5f);
        neg[2] = -1f; neg[3] = -1.05f;
        s.Reset();
        s.Record([2]);
        Assert.That(s.Sample(neg, SamplingOptions.Greedy with { RepetitionPenalty = 1.1f }, 7), Is.EqualTo(3));
        // Bias: +inf forces, -inf bans.
        s.Reset();
        Assert.That(s.Sample(l, SamplingOptions.Greedy with { LogitBias = new Dictionary<int, float> { [0] = float.NegativeInfinity } }, 8), Is.EqualTo(1));
        Assert.That(s.Sample(l, new SamplingOptions { LogitBias = new Dictionary<int, float> { [9] = float.PositiveInfinity } }, 9), Is.EqualTo(9));
    }

    [Test]
    public void SampledTokensAreCounted()
    {
        var s = Mid(3);
        var l = MidLogits(4);
        var o = new SamplingOptions { Temperature = 1f };
        var seen = new int[MidRows];
        for (int step = 0; step < 200; step++) seen[s.Sample(l, o, step)]++;
        Assert.That(s.Counts.ToArray(), Is.EqualTo(seen));
        s.Record([-1, MidRows, 7]);
        Assert.That(s.Counts[7], Is.EqualTo(seen[7] + 1));
    }

    [Test]
    public void SameSeedSameTokens()
    {
        var l = GaussianLogits(2).AsSpan(0, MidRows).ToArray();
        var o = new SamplingOptions { Temperature = 1f, TopK = 100, Seed = 1234 };
        int[] Run(SamplingOptions opt)
        {
            var s = Mid(99);
            return Enumerable.Range(0, 64).Select(step => s.Sample(l, opt, step)).ToArray();
        }
        var first = Run(o);
        Assert.That(Run(o), Is.EqualTo(first));
        Assert.That(Run(o with { Seed = 1235 }), Is.Not.EqualTo(first));
        // Without an explicit seed, the sampler's default seed is used.
        var a = Mid(7);
        var b = Mid(7);
        var noSeed = new SamplingOptions { Temperature = 1f };
        Assert.That(a.Sample(l, noSeed, 3), Is.EqualTo(b.Sample(l, noSeed, 3)));
    }

    private static IEnumerable<TestCaseData> ChiSquareCases()
    {
        yield return new TestCaseData(new SamplingOptions { Temperature = 1f }).SetName("ChiSquare_T1");
        yield return new TestCaseData(new SamplingOptions { Temperature = 0.6f, TopK = 40, TopP = 0.95f }).SetName("ChiSquare_QwQDefaults");
        yield return new TestCaseData(new SamplingOptions { Temperature = 1.3f, TopP = 0.7f, MinP = 0.05f }).SetName("ChiSquare_TopPMinP");
        yield return new TestCaseData(new SamplingOptions { Temperature = 0.8f, TopK = 10 }).SetName("ChiSquare_TopK10");
    }

    [TestCaseSource(nameof(ChiSquareCases))]
    public void DrawsFollowTheFilteredDistribution(SamplingOptions o)
    {
        var l = MidLogits(31);
        var s = Mid(77);
        var w = new ulong[MidValid];
        s.FilteredWeights(l, o, 0, w);
        var observed = new int[MidValid];
        for (int step = 0; step < 20000; step++) observed[s.Sample(l, o, step)]++;
        double pValue = ChiSquarePValue(w, observed, out int impossible);
        Assert.That(impossible, Is.EqualTo(0), "draws outside the filtered set");
        Assert.That(pValue, Is.GreaterThan(1e-4));
    }

    [Test]
    public void ChiSquareDetectsAWrongDistribution()
    {
        // Guard against a vacuous test: draws at T=1 against the T=0.5 weights must fail.
        var l = MidLogits(31);
        var s = Mid(77);
        var w = new ulong[MidValid];
        s.FilteredWeights(l, new() { Temperature = 0.5f }, 0, w);
        var observed = new int[MidValid];
        var o = new SamplingOptions { Temperature = 1f };
        for (int step = 0; step < 20000; step++) observed[s.Sample(l, o, step)]++;
        Assert.That(ChiSquarePValue(w, observed, out _), Is.LessThan(1e-4));
    }
}

using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Sampling.SamplingTestUtil;

namespace QwQ.Cuda.Tests.Sampling;

/// <summary>
/// CpuSampler (radix-select thresholds, no sorting) against a plain sort-based implementation of the documented
/// semantics, with the same SamplingMath: identical filtered weights and tokens, ties and large k included.
/// </summary>
public class CpuSamplerReferenceTests
{
    private const int Rows = 4096, Valid = 4000;

    /// <summary>The sort-based reference: processed logits in, (weights, token) out.</summary>
    private static int Reference(float[] x, SamplingOptions o, ulong seed, long step, ulong[] weights)
    {
        float best = float.NegativeInfinity;
        for (int v = 0; v < x.Length; v++) best = Math.Max(best, x[v]);
        var cand = new List<(int Id, uint Key, float W, ulong Q)>();
        for (int v = 0; v < x.Length; v++)
        {
            float d = SamplingMath.Delta(x[v], best);
            if (d < SamplingMath.CandidateDelta) continue;
            float w = SamplingMath.Exp(d);
            cand.Add((v, SamplingMath.Key(x[v]), w, SamplingMath.Weight(w)));
        }
        uint threshold = 0;
        if (o.TopK > 0 && o.TopK < cand.Count)
            threshold = cand.Select(c => c.Key).OrderBy(k => k).ElementAt(cand.Count - o.TopK);
        if (o.TopP < 1f)
        {
            var kept = cand.Where(c => c.Key >= threshold).ToList();
            ulong mass = kept.Aggregate(0ul, (a, c) => a + c.Q);
            ulong target = Math.Clamp(SamplingMath.CeilMul(o.TopP, mass), 1ul, mass);
            ulong cum = 0;
            foreach (var g in kept.GroupBy(c => c.Key).OrderByDescending(g => g.Key))
            {
                cum += g.Aggregate(0ul, (a, c) => a + c.Q);
                if (cum >= target) { threshold = g.Key; break; }
            }
        }
        var final = cand.Where(c => c.Key >= threshold && c.W >= o.MinP).ToList();
        foreach (var c in final) weights[c.Id] = c.Q;
        ulong z = final.Aggregate(0ul, (a, c) => a + c.Q);
        ulong r = SamplingMath.Draw(SamplingMath.Rand64(o.Seed ?? seed, step), z);
        ulong acc = 0;
        foreach (var c in final)
        {
            acc += c.Q;
            if (acc > r) return c.Id;
        }
        return -1;
    }

    private static IEnumerable<SamplingOptions> Options()
    {
        yield return new() { Temperature = 1f };
        yield return SamplingOptions.FromGenerationConfig();
        yield return new() { Temperature = 1.3f, TopP = 0.7f, MinP = 0.05f };
        yield return new() { Temperature = 1f, TopK = 1 };
        yield return new() { Temperature = 1f, TopK = 3 };
        yield return new() { Temperature = 1f, TopK = 500 };
        yield return new() { Temperature = 1f, TopK = 3999 };
        yield return new() { Temperature = 1f, TopK = 100000 };
        yield return new() { Temperature = 1f, TopP = 0.1f };
        yield return new() { Temperature = 2f, TopP = 0.999f };
        yield return new() { Temperature = 0.7f, TopK = 200, TopP = 0.8f, MinP = 0.02f };
        yield return new() { Temperature = 0.05f, TopK = 20, TopP = 0.5f };
    }

    [Test]
    public void EqualsSortBasedReference()
    {
        var sets = new List<float[]>
        {
            ConcentratedLogits(1, rows: Rows, valid: Valid),
            GaussianLogits(2, 1f).AsSpan(0, Rows).ToArray(),
            GaussianLogits(3, 4f).AsSpan(0, Rows).ToArray(),
        };
        var ties = GaussianLogits(4, 2f).AsSpan(0, Rows).ToArray();
        for (int i = 0; i < ties.Length; i++) ties[i] = MathF.Round(ties[i] * 2f) / 2f; // many equal keys
        sets.Add(ties);
        var flat = new float[Rows]; // every real token ties
        sets.Add(flat);

        var s = new CpuSampler(Rows, Valid, 11);
        var got = new ulong[Valid];
        var want = new ulong[Valid];
        long step = 0;
        for (int si = 0; si < sets.Count; si++)
        {
            foreach (var o in Options())
            {
                step++;
                int token = s.FilteredWeights(sets[si], o, step, got);
                var x = s.LastProcessed.ToArray();
                Array.Clear(want);
                int expect = Reference(x, o, s.DefaultSeed, step, want);
                Assert.That(got, Is.EqualTo(want), $"set {si} {o}: filtered weights");
                Assert.That(token, Is.EqualTo(expect), $"set {si} {o}: token");
            }
        }
    }
}

using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Reference;

public class CpuOpsTests
{
    private static float[] RandomArray(int n, int seed, float scale = 1)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1) * scale).ToArray();
    }

    [Test]
    public void RmsNormByHand()
    {
        float[] x = [3, 4, 0, 0, /* row 2 */ 1, 1, 1, 1];
        float[] w = [1, 2, 1, 1];
        var y = new float[8];
        CpuOps.RmsNorm(x, w, 0f, y, 4);
        // row 1: rms = sqrt(25/4) = 2.5; row 2: rms = 1
        Assert.That(y, Is.EqualTo(new[] { 1.2f, 3.2f, 0, 0, 1, 2, 1, 1 }).Within(1e-6));
    }

    [Test]
    public void MatMulNTMatchesNaive([Values(1, 3)] int m, [Values(1, 70, 129)] int n, [Values(5, 33)] int k)
    {
        var x = RandomArray(m * k, 1);
        var w = RandomArray(n * k, 2);
        var b = RandomArray(n, 3);
        var y = new float[m * n];
        CpuOps.MatMulNT(x, w, b, y, m, n, k);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = b[j];
                for (int t = 0; t < k; t++) s += (double)x[i * k + t] * w[j * k + t];
                Assert.That(y[i * n + j], Is.EqualTo(s).Within(1e-5));
            }

        var noBias = new float[m * n];
        CpuOps.MatMulNT(x, w, default, noBias, m, n, k);
        Assert.That(noBias[0], Is.EqualTo(y[0] - b[0]).Within(1e-5));
    }

    [Test]
    public void MatMulNTIsDeterministic()
    {
        var x = RandomArray(7 * 300, 4);
        var w = RandomArray(500 * 300, 5);
        var a = new float[7 * 500];
        var b = new float[7 * 500];
        CpuOps.MatMulNT(x, w, default, a, 7, 500, 300);
        CpuOps.MatMulNT(x, w, default, b, 7, 500, 300);
        Assert.That(a, Is.EqualTo(b));
    }

    [Test]
    public void RopeAtPositionZeroOnlyScales()
    {
        var x = RandomArray(2 * 3 * 8, 6);
        var y = (float[])x.Clone();
        CpuOps.ApplyRope(y, 2, 3, 8, 0, new float[] { 1, 0.5f, 0.25f, 0.125f }, 1f);
        Assert.That(y.AsSpan(0, 24).ToArray(), Is.EqualTo(x.AsSpan(0, 24).ToArray()));  // token 0 at position 0
        Assert.That(y.AsSpan(24).ToArray(), Is.Not.EqualTo(x.AsSpan(24).ToArray()));    // token 1 at position 1 rotates
    }

    [Test]
    public void RopeRotatesHalvesLikeRotateHalf()
    {
        // D = 4: pairs (0, 2) and (1, 3). Position 3, inv_freq [0.5, 0] → angles 1.5 and 0.
        float[] x = [1, 2, 3, 4];
        CpuOps.ApplyRope(x, 1, 1, 4, 3, new float[] { 0.5f, 0 }, 2f);
        double c = Math.Cos(1.5) * 2, s = Math.Sin(1.5) * 2;
        Assert.That(x, Is.EqualTo(new[] { (float)(1 * c - 3 * s), 2 * 2, (float)(3 * c + 1 * s), 4 * 2 }).Within(1e-5));
    }

    [Test]
    public void AttentionWithOneKeyReturnsItsValue()
    {
        var q = RandomArray(1 * 4 * 8, 7);
        var k = RandomArray(1 * 2 * 8, 8);
        var v = RandomArray(1 * 2 * 8, 9);
        var o = new float[q.Length];
        CpuOps.CausalAttention(q, k, v, o, 1, 0, 4, 2, 8, 0.3f);
        // query heads 0,1 → KV head 0; heads 2,3 → KV head 1
        Assert.That(o.AsSpan(0, 8).ToArray(), Is.EqualTo(v.AsSpan(0, 8).ToArray()).Within(1e-6));
        Assert.That(o.AsSpan(8, 8).ToArray(), Is.EqualTo(v.AsSpan(0, 8).ToArray()).Within(1e-6));
        Assert.That(o.AsSpan(16, 8).ToArray(), Is.EqualTo(v.AsSpan(8, 8).ToArray()).Within(1e-6));
        Assert.That(o.AsSpan(24, 8).ToArray(), Is.EqualTo(v.AsSpan(8, 8).ToArray()).Within(1e-6));
    }

    [Test]
    public void AttentionIsCausalAndMatchesNaiveSoftmax()
    {
        int T = 3, start = 2, S = 5, nq = 2, nkv = 1, D = 4;
        var q = RandomArray(T * nq * D, 10);
        var k = RandomArray(S * nkv * D, 11);
        var v = RandomArray(S * nkv * D, 12);
        var o = new float[q.Length];
        CpuOps.CausalAttention(q, k, v, o, T, start, nq, nkv, D, 0.5f);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nq; h++)
            {
                int keys = start + t + 1;
                var scores = Enumerable.Range(0, keys).Select(s => 0.5 * Enumerable.Range(0, D).Sum(d => (double)q[(t * nq + h) * D + d] * k[s * D + d])).ToArray();
                double max = scores.Max();
                var p = scores.Select(z => Math.Exp(z - max)).ToArray();
                double sum = p.Sum();
                for (int d = 0; d < D; d++)
                {
                    double expected = Enumerable.Range(0, keys).Sum(s => p[s] / sum * v[s * D + d]);
                    Assert.That(o[(t * nq + h) * D + d], Is.EqualTo(expected).Within(1e-5));
                }
            }
    }

    [Test]
    public void SiluMulAndEmbedding()
    {
        var o = new float[2];
        CpuOps.SiluMul(new float[] { 0, 2 }, new float[] { 5, 3 }, o);
        Assert.That(o, Is.EqualTo(new[] { 0f, (float)(2 / (1 + Math.Exp(-2)) * 3) }).Within(1e-6));

        float[] table = [0, 1, 10, 11, 20, 21];
        var e = new float[4];
        CpuOps.Embedding(new[] { 2, 0 }, table, e, 2);
        Assert.That(e, Is.EqualTo(new float[] { 20, 21, 0, 1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuOps.Embedding(new[] { 3 }, table, new float[2], 2));
    }

    [Test]
    public void ArgMaxTakesFirstOfTies() => Assert.That(CpuOps.ArgMax(new float[] { 1, 3, 3, 2 }), Is.EqualTo(1));
}

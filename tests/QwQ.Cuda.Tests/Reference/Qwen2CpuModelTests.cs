using QwQ.Cuda.Config;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Reference;

/// <summary>The CPU reference against itself: KV-cached decoding must equal a full recompute.</summary>
public class Qwen2CpuModelTests
{
    // A small GQA model with YaRN, random weights; independent of the fixtures.
    private static readonly ModelConfig Small = ModelPresets.Get("qwq-32b") with
    {
        HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 16, VocabSize = 50, MaxPositionEmbeddings = 128,
        RopeScaling = new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 8 },
    };

    private static readonly int[] Tokens = [3, 17, 42, 0, 9, 9, 31, 12, 48, 5, 22];

    private static float MaxRelDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        float maxDiff = 0, maxRef = 0;
        for (int i = 0; i < a.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(a[i] - b[i]));
            maxRef = Math.Max(maxRef, Math.Abs(b[i]));
        }
        return maxDiff / maxRef;
    }

    [Test]
    public void SessionTokenByTokenEqualsFullForward()
    {
        var model = new Qwen2CpuModel(Small, CpuWeights.Random(Small, seed: 1));
        var full = model.Forward(Tokens);
        var session = model.CreateSession(32);
        int V = Small.VocabSize;
        for (int t = 0; t < Tokens.Length; t++)
        {
            var logits = session.Append(Tokens.AsSpan(t, 1));
            Assert.That(MaxRelDiff(logits, full.AsSpan(t * V, V)), Is.LessThan(1e-5), $"position {t}");
        }
        Assert.That(session.Length, Is.EqualTo(Tokens.Length));
    }

    [Test]
    public void ChunkedAppendAndTruncate()
    {
        var model = new Qwen2CpuModel(Small, CpuWeights.Random(Small, seed: 2));
        var full = model.Forward(Tokens);
        int V = Small.VocabSize, n = Tokens.Length;

        var session = model.CreateSession(n);
        session.Append(Tokens.AsSpan(0, 4));
        var last = session.Append(Tokens.AsSpan(4));
        Assert.That(MaxRelDiff(last, full.AsSpan((n - 1) * V, V)), Is.LessThan(1e-5));

        // Rewind to 6 tokens and re-decode a different suffix: must match a fresh forward of that text.
        session.Truncate(6);
        int[] other = [.. Tokens[..6], 1, 2];
        var logits = session.Append(other.AsSpan(6));
        var fresh = model.Forward(other);
        Assert.That(MaxRelDiff(logits, fresh.AsSpan(7 * V, V)), Is.LessThan(1e-5));

        Assert.Throws<InvalidOperationException>(() => session.Append(new int[n]));
        Assert.Throws<ArgumentOutOfRangeException>(() => session.Truncate(9));
    }

    [Test]
    public void ForwardIsDeterministicAndCapturesIntermediates()
    {
        var model = new Qwen2CpuModel(Small, CpuWeights.Random(Small, seed: 3));
        var seen = new Dictionary<string, float[]>();
        var a = model.Forward(Tokens, (name, values) => seen[name] = values.ToArray());
        var b = model.Forward(Tokens);
        Assert.That(a, Is.EqualTo(b));

        int T = Tokens.Length;
        Assert.Multiple(() =>
        {
            Assert.That(seen[ActivationNames.Embedding], Has.Length.EqualTo(T * 64));
            Assert.That(seen[ActivationNames.Q(1)], Has.Length.EqualTo(T * 4 * 16));
            Assert.That(seen[ActivationNames.K(0)], Has.Length.EqualTo(T * 2 * 16));
            Assert.That(seen[ActivationNames.MlpActivation(0)], Has.Length.EqualTo(T * 96));
            Assert.That(seen[ActivationNames.Output(1)], Has.Length.EqualTo(T * 64));
            Assert.That(seen[ActivationNames.Logits], Is.EqualTo(a));
        });
    }

    [Test]
    public void RandomWeightsAreBf16ExactAndSeeded()
    {
        var w = CpuWeights.Random(Small, seed: 4);
        Assert.That(w.Layers[0].QWeight.All(v => (BitConverter.SingleToUInt32Bits(v) & 0xFFFF) == 0), Is.True);
        Assert.That(CpuWeights.Random(Small, seed: 4).Layers[1].DownWeight, Is.EqualTo(w.Layers[1].DownWeight));
        Assert.That(CpuWeights.Random(Small, seed: 5).Layers[1].DownWeight, Is.Not.EqualTo(w.Layers[1].DownWeight));
    }

    [Test]
    public void MismatchedWeightsAreRejected() =>
        Assert.Throws<ArgumentException>(() => new Qwen2CpuModel(Small with { NumHiddenLayers = 3 }, CpuWeights.Random(Small, 1)));
}

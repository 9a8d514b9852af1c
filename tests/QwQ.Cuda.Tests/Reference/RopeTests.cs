using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Model;

namespace QwQ.Cuda.Tests.Reference;

public class RopeTests
{
    private static IEnumerable<TestCaseData> RopeCases()
    {
        string path = Path.Combine(TestContext.CurrentContext.TestDirectory, "fixtures", "models", "rope.json");
        if (!File.Exists(path))
        {
            yield return new TestCaseData("(rope.json missing)", "", Array.Empty<float>(), 0f).SetName("RopeFixtureMissing");
            yield break;
        }
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            yield return new TestCaseData(
                c.GetProperty("name").GetString(),
                c.GetProperty("config").GetRawText(),
                c.GetProperty("inv_freq").EnumerateArray().Select(x => x.GetSingle()).ToArray(),
                (float)c.GetProperty("attention_factor").GetDouble());
        }
    }

    [Category("Goldens")]
    [TestCaseSource(nameof(RopeCases))]
    public void MatchesTransformers(string name, string configJson, float[] invFreq, float attentionFactor)
    {
        if (configJson.Length == 0) Assert.Fail("tests/fixtures/models/rope.json is missing: run tests/goldens/make_model_goldens.py");
        var config = ModelConfig.Parse(configJson, $"rope.json case {name}");
        var ours = Rope.InverseFrequencies(config);
        Assert.That(ours, Has.Length.EqualTo(invFreq.Length));
        for (int i = 0; i < ours.Length; i++)
            // torch's float32 pow may differ from a correctly rounded one by an ulp; allow 2.
            Assert.That(ours[i], Is.EqualTo(invFreq[i]).Within(2.5e-7 * Math.Abs(invFreq[i])), $"{name}: inv_freq[{i}]");
        Assert.That(Rope.AttentionFactor(config), Is.EqualTo(attentionFactor), $"{name}: attention factor");
    }

    [Test]
    public void DefaultRopeOfQwq()
    {
        var c = ModelPresets.Get("qwq-32b");
        var inv = Rope.InverseFrequencies(c);
        Assert.That(inv, Has.Length.EqualTo(64));
        Assert.That(inv[0], Is.EqualTo(1f));
        Assert.That(inv[1], Is.EqualTo((float)Math.Pow(1e6, -2.0 / 128)).Within(1e-7));
        Assert.That(Rope.AttentionFactor(c), Is.EqualTo(1f));
    }

    [Test]
    public void YarnKeepsHighFrequenciesAndInterpolatesLowOnes()
    {
        var plain = ModelPresets.Get("qwq-32b");
        var yarn = plain with { RopeScaling = new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 32768 } };
        var a = Rope.InverseFrequencies(plain);
        var b = Rope.InverseFrequencies(yarn);
        Assert.That(b[0], Is.EqualTo(a[0]));                              // fast dims extrapolate
        Assert.That(b[^1], Is.EqualTo(a[^1] / 4).Within(1e-6 * a[^1]));    // slow dims interpolate
        Assert.That(Rope.AttentionFactor(yarn), Is.EqualTo((float)(0.1 * Math.Log(4) + 1)));
    }

    [Test]
    public void ExplicitAndMscaleAttentionFactors()
    {
        var c = ModelPresets.Get("qwq-32b");
        var given = c with { RopeScaling = new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 32768, AttentionFactor = 0.9 } };
        Assert.That(Rope.AttentionFactor(given), Is.EqualTo(0.9f));
        var ms = c with { RopeScaling = new RopeScaling { Factor = 40, OriginalMaxPositionEmbeddings = 4096, Mscale = 1, MscaleAllDim = 0.8 } };
        Assert.That(Rope.AttentionFactor(ms), Is.EqualTo((float)((0.1 * Math.Log(40) + 1) / (0.08 * Math.Log(40) + 1))));
    }
}

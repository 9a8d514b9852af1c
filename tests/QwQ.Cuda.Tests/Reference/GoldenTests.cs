using QwQ.Cuda.Config;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Reference;

/// <summary>
/// The CPU reference against transformers' goldens for the tiny fixture models (see
/// tests/goldens/make_model_goldens.py). Fails, rather than skips, when the fixtures are missing.
/// </summary>
[Category("Goldens")]
public class GoldenTests
{
    private const float LogitTolerance = 1e-4f; // max |ours - golden| / max |golden|, per prompt

    private static IEnumerable<string> Models => ModelFixtures.Models;

    /// <summary>The plain fixtures and the quantized ones (FP8, AWQ): the goldens run transformers on their dequantized weights.</summary>
    private static IEnumerable<string> GoldenModels => ModelFixtures.Models.Concat(Quantized.QuantizedFixtureTests.Models);

    [TestCaseSource(nameof(GoldenModels))]
    public void LogitsMatchAtEveryPosition(string modelName)
    {
        var (config, weights) = ModelFixtures.Load(modelName);
        var goldens = ModelFixtures.ReadGoldens(modelName);
        TestContext.Out.WriteLine($"goldens for {modelName} by: {goldens.Generator}");
        var model = new Qwen2CpuModel(config, weights);
        int V = config.VocabSize;

        Assert.That(goldens.Prompts, Is.Not.Empty);
        foreach (var p in goldens.Prompts)
        {
            var logits = model.Forward(p.Ids);
            Assert.That(p.Logits, Has.Length.EqualTo(p.Ids.Length));
            float maxDiff = 0, maxRef = 0;
            int worst = 0;
            for (int t = 0; t < p.Ids.Length; t++)
                for (int v = 0; v < V; v++)
                {
                    float d = Math.Abs(logits[t * V + v] - p.Logits[t][v]);
                    if (d > maxDiff) (maxDiff, worst) = (d, t);
                    maxRef = Math.Max(maxRef, Math.Abs(p.Logits[t][v]));
                }
            float rel = maxDiff / maxRef;
            TestContext.Out.WriteLine($"  prompt of {p.Ids.Length}: max rel error {rel:E2}");
            Assert.That(rel, Is.LessThanOrEqualTo(LogitTolerance),
                $"{modelName}, prompt of {p.Ids.Length} tokens: worst at position {worst}");
        }
    }

    /// <summary>transformers 5 writes config.json differently (rope_parameters, no torch_dtype); both must agree.</summary>
    [TestCaseSource(nameof(Models))]
    public void Transformers5ConfigParsesTheSame(string modelName)
    {
        string hfPath = Path.Combine(ModelFixtures.Dir(modelName), "config.hf.json");
        if (!File.Exists(hfPath)) Assert.Ignore("config.hf.json is only written by the transformers path of the script");
        var release = ModelFixtures.Load(modelName).Config;
        var hf = ModelConfig.Load(hfPath);
        Assert.That(hf with { TorchDtype = release.TorchDtype }, Is.EqualTo(release));
    }

    [TestCaseSource(nameof(Models))]
    public void FixtureWeightsAreBf16Exact(string modelName)
    {
        var w = ModelFixtures.Load(modelName).Weights;
        float[][] all = [w.Embedding, w.LmHead, w.FinalNorm, .. w.Layers.SelectMany(l => new[] { l.QWeight, l.QBias, l.DownWeight, l.InputNorm })];
        Assert.That(all.SelectMany(a => a).All(v => (BitConverter.SingleToUInt32Bits(v) & 0xFFFF) == 0), Is.True);
    }

    [TestCaseSource(nameof(GoldenModels))]
    public void GreedyContinuationMatches(string modelName)
    {
        var (config, weights) = ModelFixtures.Load(modelName);
        var goldens = ModelFixtures.ReadGoldens(modelName);
        var model = new Qwen2CpuModel(config, weights);

        foreach (var p in goldens.Prompts)
        {
            var session = model.CreateSession(p.Ids.Length + goldens.NewTokens);
            var logits = session.Append(p.Ids);
            var generated = new List<int>();
            for (int i = 0; i < goldens.NewTokens; i++)
            {
                int next = CpuOps.ArgMax(logits);
                generated.Add(next);
                if (generated[i] != p.Greedy[i])
                    Assert.Fail($"{modelName}, prompt of {p.Ids.Length}: step {i} chose {next}, golden {p.Greedy[i]} " +
                                $"(golden top-2 margin {p.GreedyMargins[i]:G3}); so far [{string.Join(", ", generated)}]");
                if (i + 1 < goldens.NewTokens) logits = session.Append([next]);
            }
            Assert.That(generated, Is.EqualTo(p.Greedy));
        }
    }
}

using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// The CPU reference on tiny-fp8 and tiny-awq against goldens computed in float32 on the dequantized weights
/// (tests/goldens/make_quantized_goldens.py: transformers on a machine with torch, else a provisional float64
/// pure-Python model; goldens.json's "generator" says which). Skipped only while goldens.json is absent.
/// </summary>
[Category("Goldens")]
public class QuantizedGoldenTests
{
    private const float LogitTolerance = 1e-3f; // max |ours - golden| / max |golden|, per prompt

    private static ModelFixtures.Goldens Goldens(string model)
    {
        if (!File.Exists(Path.Combine(ModelFixtures.Dir(model), "goldens.json")))
            Assert.Ignore("goldens not generated yet: python3 tests/goldens/make_quantized_goldens.py tests/fixtures/models");
        var goldens = ModelFixtures.ReadGoldens(model);
        TestContext.Out.WriteLine($"goldens for {model} by: {goldens.Generator}");
        return goldens;
    }

    [TestCaseSource(typeof(QuantizedFixtureTests), nameof(QuantizedFixtureTests.Models))]
    public void LogitsMatchAtEveryPosition(string model)
    {
        var goldens = Goldens(model);
        var (config, weights) = ModelFixtures.Load(model);
        var m = new Qwen2CpuModel(config, weights);
        int V = config.VocabSize;
        Assert.That(goldens.Prompts, Is.Not.Empty);
        foreach (var p in goldens.Prompts)
        {
            var logits = m.Forward(p.Ids);
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
            Assert.That(rel, Is.LessThanOrEqualTo(LogitTolerance), $"{model}, prompt of {p.Ids.Length} tokens: worst at position {worst}");
        }
    }

    [TestCaseSource(typeof(QuantizedFixtureTests), nameof(QuantizedFixtureTests.Models))]
    public void GreedyContinuationMatches(string model)
    {
        var goldens = Goldens(model);
        var (config, weights) = ModelFixtures.Load(model);
        var m = new Qwen2CpuModel(config, weights);
        foreach (var p in goldens.Prompts)
        {
            var session = m.CreateSession(p.Ids.Length + goldens.NewTokens);
            var logits = session.Append(p.Ids);
            var generated = new List<int>();
            for (int i = 0; i < goldens.NewTokens; i++)
            {
                int next = CpuOps.ArgMax(logits);
                generated.Add(next);
                if (next != p.Greedy[i])
                    Assert.Fail($"{model}, prompt of {p.Ids.Length}: step {i} chose {next}, golden {p.Greedy[i]} " +
                                $"(golden top-2 margin {p.GreedyMargins[i]:G3}); so far [{string.Join(", ", generated)}]");
                if (i + 1 < goldens.NewTokens) logits = session.Append([next]);
            }
        }
    }
}

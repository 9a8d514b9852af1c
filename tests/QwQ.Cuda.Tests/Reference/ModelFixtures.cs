using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Reference;

/// <summary>
/// The tiny random checkpoints and goldens under tests/fixtures/models (made by
/// tests/goldens/make_model_goldens.py). Absent fixtures fail the test instead of skipping it.
/// </summary>
internal static class ModelFixtures
{
    public static readonly string[] Models = ["tiny-gqa", "tiny-yarn"];

    public static string Dir(string relative = "")
    {
        string path = Path.Combine(TestContext.CurrentContext.TestDirectory, "fixtures", "models", relative);
        if (!Directory.Exists(path) && !File.Exists(path))
            Assert.Fail($"fixture {path} is missing: run tests/goldens/make_model_goldens.py tests/fixtures/models");
        return path;
    }

    private static readonly Dictionary<string, (ModelConfig, CpuWeights)> Loaded = new();

    /// <summary>Config and fp32 weights of a fixture model (cached: loading validates the checkpoint).</summary>
    public static (ModelConfig Config, CpuWeights Weights) Load(string model)
    {
        lock (Loaded)
        {
            if (Loaded.TryGetValue(model, out var m)) return m;
            string dir = Dir(model);
            var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
            using var ck = SafetensorsCheckpoint.Open(dir);
            m = (config, CpuWeights.Load(ck, config));
            Loaded[model] = m;
            return m;
        }
    }

    public sealed record GoldenPrompt(int[] Ids, float[][] Logits, int[] Greedy, float[] GreedyMargins);
    public sealed record Goldens(string Generator, string Model, int NewTokens, GoldenPrompt[] Prompts);

    public static Goldens ReadGoldens(string model) => ReadGoldensAt(Dir(model));

    /// <summary>The goldens.json in <paramref name="dir"/> (make_model_goldens.py's format).</summary>
    public static Goldens ReadGoldensAt(string dir)
    {
        using var stream = File.OpenRead(Path.Combine(dir, "goldens.json"));
        using var doc = JsonDocument.Parse(stream);
        var root = doc.RootElement;
        var prompts = root.GetProperty("prompts").EnumerateArray().Select(p => new GoldenPrompt(
            p.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
            p.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetSingle()).ToArray()).ToArray(),
            p.GetProperty("greedy").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
            p.GetProperty("greedy_margins").EnumerateArray().Select(x => x.GetSingle()).ToArray())).ToArray();
        return new Goldens(root.GetProperty("generator").GetString()!, root.GetProperty("model").GetString()!,
                           root.GetProperty("new_tokens").GetInt32(), prompts);
    }
}

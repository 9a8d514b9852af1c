using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using CudaProbe = global::QwQ.Cuda.Native.Cuda;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>Greedy continuations of the tiny golden models (tests/fixtures/models/NAME/goldens.json), token for token.</summary>
internal static class Goldens
{
    public static readonly string[] Models = ["tiny-gqa", "tiny-yarn"];

    public static (ModelConfig Config, string Dir, List<(int[] Prompt, int[] Greedy)> Cases) Load(string name)
    {
        var (config, dir, cases) = LoadWithMargins(name);
        return (config, dir, cases.Select(c => (c.Prompt, c.Greedy)).ToList());
    }

    /// <summary>
    /// Also the golden top-1 minus top-2 logit gap of every greedy step: where it is below bf16's noise the
    /// fp32 reference's choice is a coin toss for a bf16 engine, and the continuations may part from there on.
    /// </summary>
    public static (ModelConfig Config, string Dir, List<(int[] Prompt, int[] Greedy, float[] Margins)> Cases) LoadWithMargins(string name)
    {
        string dir = TestModels.GoldenModelDir(name);
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "goldens.json")));
        var cases = doc.RootElement.GetProperty("prompts").EnumerateArray()
            .Select(p => (p.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                          p.GetProperty("greedy").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                          p.GetProperty("greedy_margins").EnumerateArray().Select(e => e.GetSingle()).ToArray()))
            .ToList();
        return (config, dir, cases);
    }

    /// <summary>
    /// What the goldens were made with: transformers applies rope_scaling as static YaRN at every position (tiny-yarn
    /// would switch at 16 under the default, adaptive); the model's whole context.
    /// </summary>
    public static EngineOptions Options(ModelConfig config) =>
        new() { MaxContext = config.MaxPositionEmbeddings, RopeScaling = RopeScalingMode.Static };

    /// <summary>Golden logit gaps below this are within bf16 noise of the fp32 reference (measured: ‖Δ‖/‖ref‖ ≈ 4e-3).</summary>
    public const float Bf16TieMargin = 5e-3f;

    /// <summary>
    /// How many golden greedy tokens a bf16 engine must reproduce: those before the first near-tie, where the
    /// fp32 reference's own choice is within bf16 noise and either token is an honest answer.
    /// </summary>
    public static int TokensBeforeFirstTie(float[] margins)
    {
        int firstTie = Array.FindIndex(margins, m => m < Bf16TieMargin);
        return firstTie < 0 ? margins.Length : firstTie;
    }

    /// <summary>Greedy generation through the Generator loop (no eos: the tiny vocabularies have none).</summary>
    public static int[] Greedy(ISequence seq, int[] prompt, int count, CancellationToken ct = default)
    {
        var o = new Generator(seq).Run(prompt, SamplingOptions.Greedy, new GenerationOptions { MaxNewTokens = count }, [], null, null, ct);
        return [.. o.GeneratedTokens];
    }
}

public class GoldenGenerationCpuTests
{
    [TestCaseSource(typeof(Goldens), nameof(Goldens.Models))]
    public void CpuBackendMatchesTheGoldens(string name)
    {
        var (config, dir, cases) = Goldens.Load(name);
        using var backend = CpuReferenceBackend.Load(config, dir, Goldens.Options(config));
        foreach (var (prompt, greedy) in cases)
        {
            using var seq = backend.CreateSequence();
            Assert.That(Goldens.Greedy(seq, prompt, greedy.Length), Is.EqualTo(greedy), $"{name}: prompt [{string.Join(",", prompt)}]");
        }
    }
}

/// <summary>End to end on the GPU: the CUDA backend through the same generation loop. Skipped without a device.</summary>
public class GoldenGenerationGpuTests
{
    [SetUp]
    public void RequireGpu()
    {
        if (!CudaProbe.IsAvailable(out var reason)) Assert.Ignore($"no CUDA device ({reason})");
    }

    private static IModelBackend LoadCuda(ModelConfig config, string dir) =>
        BackendFactory.Create(BackendKind.Cuda, config, dir, Goldens.Options(config), config.VocabSize, null, default);

    /// <summary>
    /// Token for token up to the first step whose golden top-1/top-2 gap is a bf16 near-tie (the goldens' prompts have
    /// their first tie at step 11 or later, so at least 11 tokens are compared).
    /// </summary>
    [TestCaseSource(typeof(Goldens), nameof(Goldens.Models))]
    public void CudaGreedyEqualsTransformersTokenForToken(string name)
    {
        var (config, dir, cases) = Goldens.LoadWithMargins(name);
        using var backend = LoadCuda(config, dir);
        foreach (var (prompt, greedy, margins) in cases)
        {
            using var seq = backend.CreateSequence();
            int compared = Goldens.TokensBeforeFirstTie(margins);
            Assert.That(compared, Is.GreaterThanOrEqualTo(8), "the goldens must leave a meaningful comparison");
            int[] got = Goldens.Greedy(seq, prompt, greedy.Length);
            TestContext.Out.WriteLine($"{name}: comparing {compared} of {greedy.Length} tokens (the first near-tie is at {compared})");
            Assert.That(got.Take(compared), Is.EqualTo(greedy.Take(compared)), $"{name}: prompt [{string.Join(",", prompt)}]");
        }
    }

    [Test]
    public void CancellationMidStreamLeavesTheSequenceUsable()
    {
        var (config, dir, cases) = Goldens.LoadWithMargins("tiny-gqa");
        var (prompt, greedy, margins) = cases[0];
        int compared = Goldens.TokensBeforeFirstTie(margins);
        using var backend = LoadCuda(config, dir);
        using var inner = backend.CreateSequence();
        var seq = new CountingSequence(inner);
        using var cts = new CancellationTokenSource();
        int appends = 0;
        seq.BeforeAppend = () => { if (++appends == 6) cts.Cancel(); };
        var o = new Generator(seq).Run(prompt, SamplingOptions.Greedy, new GenerationOptions { MaxNewTokens = 32 }, [], null, null, cts.Token);
        seq.BeforeAppend = null;
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(seq.Length, Is.EqualTo(prompt.Length + o.AppendedGeneratedTokens));
        Assert.That(o.GeneratedTokens, Is.EqualTo(greedy.Take(o.GeneratedTokens.Count)));

        // Continue on the same cache: truncate to the prompt (all but its last token) and regenerate everything.
        seq.Truncate(prompt.Length - 1);
        Assert.That(Goldens.Greedy(seq, prompt, greedy.Length).Take(compared), Is.EqualTo(greedy.Take(compared)));
    }

    [Test]
    public void LoadAndDisposeRepeatedlyDoesNotLeakDeviceMemory()
    {
        var (config, dir, _) = Goldens.Load("tiny-gqa");
        using var probe = global::QwQ.Cuda.Native.CudaContext.Create();
        using (LoadCuda(config, dir)) { } // warm-up: lazily created library handles may stay
        long before = probe.GetMemoryInfo().Free;
        for (int i = 0; i < 5; i++)
        {
            using var backend = LoadCuda(config, dir);
            using var seq = backend.CreateSequence();
            Goldens.Greedy(seq, [1, 2, 3], 4);
        }
        probe.MakeCurrent();
        long after = probe.GetMemoryInfo().Free;
        Assert.That(before - after, Is.LessThan(32L << 20), $"free device memory fell by {(before - after) / (1 << 20)} MiB over 5 load/dispose cycles");
    }
}

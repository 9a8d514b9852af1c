using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Tests.Engine;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Quantization;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// The quantized checkpoint layouts at QwQ-32B's full width (2 layers, hidden 5120, 40/8 heads, intermediate 27648,
/// vocabulary 152064; AWQ group 128) on the GPU, against transformers' float32 Qwen2ForCausalLM on the dequantized
/// weights: logits at every prompt position within ‖Δ‖/‖ref‖ ≤ 2e-2, and greedy tokens equal up to the first near-tie.
/// The checkpoints are several GB and not committed: <c>python3 tests/goldens/make_quantized_goldens.py --full-width
/// DIR --device cuda</c> writes DIR/full-fp8 and DIR/full-awq, and <c>QWQ_FULL_WIDTH_GOLDENS=DIR</c> points the tests
/// at them (skipped without it).
/// </summary>
public sealed class FullWidthQuantizedGoldenTests
{
    public const string DirVariable = "QWQ_FULL_WIDTH_GOLDENS";

    [TestCase("full-fp8", WeightKind.Fp8)]
    [TestCase("full-awq", WeightKind.Int4Awq)]
    public void MatchesTransformers(string model, WeightKind kind)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        string? root = Environment.GetEnvironmentVariable(DirVariable);
        string dir = Path.Combine(root ?? "", model);
        if (root is null || !File.Exists(Path.Combine(dir, "goldens.json")))
            Assert.Ignore($"{DirVariable} does not point at make_quantized_goldens.py --full-width output ({model}/goldens.json)");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var goldens = ModelFixtures.ReadGoldensAt(dir);
        TestContext.Out.WriteLine($"{model}: goldens by {goldens.Generator}");
        using var backend = CudaBackend.Load(config, dir, new EngineOptions { MaxContext = 256, TuneDecodeGemm = false });
        Assert.That(backend.Weights.LinearKind, Is.EqualTo(kind));
        int compared = 0;
        foreach (var prompt in goldens.Prompts)
        {
            using (var seq = (CudaSequence)backend.CreateSequence())
            {
                int[] positions = Enumerable.Range(0, prompt.Ids.Length).ToArray();
                double err = CudaModelTests.RelErr(seq.AppendWithLogits(prompt.Ids, positions), prompt.Logits.SelectMany(r => r).ToArray());
                TestContext.Out.WriteLine($"{model}, {prompt.Ids.Length} tokens: ‖Δ‖/‖ref‖ = {err:E2}");
                Assert.That(err, Is.LessThanOrEqualTo(2e-2));
            }
            using (var seq = backend.CreateSequence())
            {
                int count = Goldens.TokensBeforeFirstTie(prompt.GreedyMargins);
                int[] got = Goldens.Greedy(seq, prompt.Ids, prompt.Greedy.Length);
                TestContext.Out.WriteLine($"{model} greedy: comparing {count} of {prompt.Greedy.Length} tokens");
                Assert.That(got.Take(count), Is.EqualTo(prompt.Greedy.Take(count)));
                compared += count;
            }
        }
        Assert.That(compared, Is.GreaterThanOrEqualTo(8), "the goldens must leave a meaningful comparison");
    }
}

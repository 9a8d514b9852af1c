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
/// At full width a near-tie is measured, not fixed: a golden top-1/top-2 gap under 8 times the prompt's rms logit error
/// (the tiny models' 5e-3 is far below the ~0.01–0.02 absolute error of 152,064 bf16 logits of std ~1.4; on the H100
/// the fp8 model's second prompt parted at token 21 of 32 with the fixed threshold).
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
            double rmsError;
            using (var seq = (CudaSequence)backend.CreateSequence())
            {
                int[] positions = Enumerable.Range(0, prompt.Ids.Length).ToArray();
                float[] got = seq.AppendWithLogits(prompt.Ids, positions), want = prompt.Logits.SelectMany(r => r).ToArray();
                double err = CudaModelTests.RelErr(got, want), sq = 0;
                for (int i = 0; i < got.Length; i++) sq += (double)(got[i] - want[i]) * (got[i] - want[i]);
                rmsError = Math.Sqrt(sq / got.Length);
                TestContext.Out.WriteLine($"{model}, {prompt.Ids.Length} tokens: ‖Δ‖/‖ref‖ = {err:E2}, rms logit error {rmsError:E2}");
                Assert.That(err, Is.LessThanOrEqualTo(2e-2));
            }
            using (var seq = backend.CreateSequence())
            {
                float tie = (float)Math.Max(Goldens.Bf16TieMargin, 8 * rmsError);
                int firstTie = Array.FindIndex(prompt.GreedyMargins, m => m < tie);
                int count = firstTie < 0 ? prompt.GreedyMargins.Length : firstTie;
                int[] got = Goldens.Greedy(seq, prompt.Ids, prompt.Greedy.Length);
                TestContext.Out.WriteLine($"{model} greedy: comparing {count} of {prompt.Greedy.Length} tokens (near-tie: gap < {tie:E2})");
                Assert.That(got.Take(count), Is.EqualTo(prompt.Greedy.Take(count)));
                compared += count;
            }
        }
        Assert.That(compared, Is.GreaterThanOrEqualTo(8), "the goldens must leave a meaningful comparison");
    }
}

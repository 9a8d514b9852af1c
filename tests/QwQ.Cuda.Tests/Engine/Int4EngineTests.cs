using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Kernels;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// INT4 weights end to end on the GPU: <c>--quantize int4</c> (a bf16 checkpoint quantized on load) against the fp32
/// CPU reference running the same weights quantized here by the formula (<see cref="Int4KernelTests.Rtn"/>), over every
/// kernel path of the kind (prefill in 32-row tensor-core slices and past 128 rows dequantized to bf16 for the GEMM;
/// decode at 1, 3, 8 and 20 rows, eager and as graphs); and the AWQ fixture against transformers' goldens, logits and
/// greedy tokens. bf16 activations: ‖Δ‖/‖ref‖ ≤ 2e-2.
/// </summary>
public sealed class Int4EngineTests
{
    // Input sizes 256 and 384: multiples of the group size, 128.
    private static readonly string ConfigJson = QuantizedOnLoad.ConfigJson(hidden: 256, heads: 8);

    [Test]
    public void QuantizedOnLoadMatchesCpuReferenceOnTheSameInt4Weights([Values(true, false)] bool cudaGraphs) =>
        QuantizedOnLoad.MatchesCpuReference(ConfigJson, QuantizeMode.Int4, WeightKind.Int4Awq, (m, rows, cols) => Int4KernelTests.RtnDequantized(m, rows, cols), cudaGraphs);

    /// <summary>The AWQ fixture (AutoAWQ's packing, group 64) on the GPU against transformers on its dequantized weights.</summary>
    [Test]
    public void AwqCheckpointMatchesTransformersGoldens()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        string dir = ModelFixtures.Dir("tiny-awq");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var goldens = ModelFixtures.ReadGoldens("tiny-awq");
        using var backend = CudaBackend.Load(config, dir, new EngineOptions { MaxContext = config.MaxPositionEmbeddings });
        Assert.That(backend.Weights.LinearKind, Is.EqualTo(WeightKind.Int4Awq));
        int compared = 0;
        foreach (var prompt in goldens.Prompts)
        {
            using (var seq = (CudaSequence)backend.CreateSequence())
            {
                int[] positions = Enumerable.Range(prompt.Ids.Length - prompt.Logits.Length, prompt.Logits.Length).ToArray();
                double err = CudaModelTests.RelErr(seq.AppendWithLogits(prompt.Ids, positions), prompt.Logits.SelectMany(r => r).ToArray());
                TestContext.Out.WriteLine($"tiny-awq, {prompt.Ids.Length} tokens: ‖Δ‖/‖ref‖ = {err:E2}");
                Assert.That(err, Is.LessThanOrEqualTo(2e-2));
            }
            using (var seq = backend.CreateSequence())
            {
                int count = Goldens.TokensBeforeFirstTie(prompt.GreedyMargins);
                int[] got = Goldens.Greedy(seq, prompt.Ids, prompt.Greedy.Length);
                TestContext.Out.WriteLine($"tiny-awq greedy: comparing {count} of {prompt.Greedy.Length} tokens");
                Assert.That(got.Take(count), Is.EqualTo(prompt.Greedy.Take(count)));
                compared += count;
            }
        }
        Assert.That(compared, Is.GreaterThanOrEqualTo(8), "the goldens must leave a meaningful comparison");
    }
}

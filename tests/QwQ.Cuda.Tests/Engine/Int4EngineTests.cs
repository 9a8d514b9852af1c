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
    private const string ConfigJson = """
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":256,"intermediate_size":384,
         "num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"vocab_size":256,
         "rms_norm_eps":1e-5,"rope_theta":1000000.0,"max_position_embeddings":4096,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16","use_sliding_window":false}
        """;

    [Test]
    public void QuantizedOnLoadMatchesCpuReferenceOnTheSameInt4Weights([Values(true, false)] bool cudaGraphs)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        int seed = Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var config = ModelConfig.Parse(ConfigJson, "config.json");
        var weights = CpuWeights.Random(config, seed, bf16Exact: true);
        using var tmp = new TestModels.TempDir();
        TestModels.WriteSafetensors(Path.Combine(tmp.Path, "model.safetensors"), config, weights);
        File.WriteAllText(Path.Combine(tmp.Path, "config.json"), ConfigJson);
        var cpu = new Qwen2CpuModel(config, weights.WithLayerLinears((m, rows, cols) => Int4KernelTests.RtnDequantized(m, rows, cols)));
        using var backend = CudaBackend.Load(config, tmp.Path, new EngineOptions { MaxContext = 512, Quantize = QuantizeMode.Int4, UseCudaGraphs = cudaGraphs });
        Assert.That(backend.Weights.LinearKind, Is.EqualTo(WeightKind.Int4Awq));
        var rng = new Random(seed);

        foreach (int length in new[] { 67, 150 })
        {
            int[] prompt = Enumerable.Range(0, length).Select(_ => rng.Next(config.VocabSize)).ToArray();
            using var seq = (CudaSequence)backend.CreateSequence();
            int[] positions = Enumerable.Range(0, Math.Min(length, 128)).Select(i => i * length / Math.Min(length, 128)).ToArray();
            float[] want = cpu.Forward(prompt);
            float[] wanted = positions.SelectMany(p => want.AsSpan(p * config.VocabSize, config.VocabSize).ToArray()).ToArray();
            double err = CudaModelTests.RelErr(seq.AppendWithLogits(prompt, positions), wanted);
            TestContext.Out.WriteLine($"prefill of {length}: ‖Δ‖/‖ref‖ = {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(2e-2), $"prefill of {length}");
        }

        foreach (int batch in new[] { 1, 3, 8, 20 })
        {
            var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, rng.Next(3, 40)).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray();
            var seqs = prompts.Select(p => { var s = backend.CreateSequence(); s.Append(p); return s; }).ToArray();
            var history = prompts.Select(p => p.ToList()).ToArray();
            double worst = 0;
            var logits = new float[config.VocabSize];
            for (int step = 0; step < 4; step++)
            {
                int[] next = Enumerable.Range(0, batch).Select(_ => rng.Next(config.VocabSize)).ToArray();
                backend.Step(seqs.Select((s, b) => new SequenceChunk(s, new[] { next[b] })).ToArray());
                for (int b = 0; b < batch; b++)
                {
                    history[b].Add(next[b]);
                    seqs[b].CopyLastLogits(logits);
                    float[] all = cpu.Forward(history[b].ToArray());
                    worst = Math.Max(worst, CudaModelTests.RelErr(logits, all.AsSpan(all.Length - config.VocabSize)));
                }
            }
            foreach (var s in seqs) s.Dispose();
            TestContext.Out.WriteLine($"decode at batch {batch}: worst ‖Δ‖/‖ref‖ = {worst:E2}");
            Assert.That(worst, Is.LessThanOrEqualTo(2e-2), $"batch {batch}");
        }
    }

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

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Reference;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// <c>--backend cpu --quantize int4</c>: every layer linear of a bf16 model rounded by <see cref="Int4Rtn"/> in groups of
/// 128 inputs and run dequantized; refused, before any weight loads, where it cannot apply.
/// </summary>
public class Int4ReferenceTests
{
    // Input sizes hidden 128, q 4 · 32 = 128, intermediate 256: all multiples of the group. kv 64 is an output size only.
    private static ModelConfig Config(int hidden = 128, int intermediate = 256) => ModelConfig.Parse($$"""
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":{{hidden}},"intermediate_size":{{intermediate}},
         "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":96,
         "rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":256,"tie_word_embeddings":false}
        """, "config.json");

    [Test]
    public void EveryLayerLinearIsRoundedInGroupsOf128()
    {
        var config = Config();
        var w = CpuWeights.Random(config, 7);
        var q = CpuReferenceBackend.QuantizeInt4(w);
        int h = config.HiddenSize, qd = config.QDim, kv = config.KvDim, inter = config.IntermediateSize;
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            var (a, b) = (w.Layers[l], q.Layers[l]);
            foreach (var (name, original, quantized, rows, cols) in new[]
                     {
                         ("q", a.QWeight, b.QWeight, qd, h), ("k", a.KWeight, b.KWeight, kv, h), ("v", a.VWeight, b.VWeight, kv, h),
                         ("o", a.OWeight, b.OWeight, h, qd), ("gate", a.GateWeight, b.GateWeight, inter, h),
                         ("up", a.UpWeight, b.UpWeight, inter, h), ("down", a.DownWeight, b.DownWeight, h, inter),
                     })
            {
                var codes = new byte[rows * cols];
                var scales = new Half[rows * cols / 128];
                var zeros = new byte[scales.Length];
                Int4Rtn.Quantize(original, rows, cols, 128, codes, scales, zeros);
                var expected = new float[rows * cols];
                Int4Rtn.Dequantize(codes, scales, zeros, rows, cols, 128, expected);
                Assert.That(quantized, Is.EqualTo(expected), $"layer {l} {name}");
                Assert.That(quantized, Is.Not.EqualTo(original), $"layer {l} {name} changed");
                // Independent of the quantizer: 16 levels per group of 128 inputs, so no group has more distinct values.
                for (int at = 0; at < quantized.Length; at += 128)
                    Assert.That(quantized.AsSpan(at, 128).ToArray().Distinct().Count(), Is.LessThanOrEqualTo(16), $"layer {l} {name} at {at}");
            }
            Assert.That((b.QBias, b.InputNorm, b.PostAttentionNorm), Is.EqualTo((a.QBias, a.InputNorm, a.PostAttentionNorm)));
        }
        Assert.That((q.Embedding, q.LmHead, q.FinalNorm), Is.EqualTo((w.Embedding, w.LmHead, w.FinalNorm)), "only layer linears are quantized");
    }

    [Test]
    public void TheBackendRunsTheRoundedWeights()
    {
        var config = Config();
        const ulong seed = 21;
        int[] prompt = [3, 1, 4, 1, 5, 9, 2, 6];
        float[] Last(QuantizeMode mode)
        {
            using var backend = CpuReferenceBackend.Load(config, null, new EngineOptions { Quantize = mode, SyntheticSeed = seed });
            using var seq = backend.CreateSequence();
            backend.Step([new SequenceChunk(seq, prompt)]);
            var logits = new float[config.VocabSize];
            seq.CopyLastLogits(logits);
            return logits;
        }
        var weights = CpuReferenceBackend.QuantizeInt4(CpuWeights.Random(config, (int)seed));
        var expected = new Qwen2CpuModel(config, weights).Forward(prompt).AsSpan((prompt.Length - 1) * config.VocabSize).ToArray();
        var int4 = Last(QuantizeMode.Int4);
        Assert.That(int4, Is.EqualTo(expected).Within(1e-5f));
        Assert.That(int4, Is.Not.EqualTo(Last(QuantizeMode.None)).Within(1e-5f), "a different model from the bf16 one");
    }

    [TestCase(64, 256, 64)]   // hidden: q, k, v, gate, up take it
    [TestCase(128, 320, 320)] // intermediate: down takes it
    public void InputSizesTheGroupDoesNotDivideAreRefused(int hidden, int intermediate, int bad)
    {
        var e = Assert.Throws<OptionException>(() => CpuReferenceBackend.Load(Config(hidden, intermediate), null, new EngineOptions { Quantize = QuantizeMode.Int4 }).Dispose());
        Assert.That(e!.Message, Does.Contain("--quantize int4").And.Contain("multiple of its group size, 128").And.Contain($"one of {bad}")
            .And.Contain("bf16").And.Contain("--quantize fp8"));
        // The same model loads without it.
        CpuReferenceBackend.Load(Config(hidden, intermediate), null, new EngineOptions { Quantize = QuantizeMode.Fp8 }).Dispose();
    }

    [Test]
    public void AnFp8CheckpointIsRefused()
    {
        string dir = ModelFixtures.Dir("tiny-fp8");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var e = Assert.Throws<OptionException>(() => CpuReferenceBackend.Load(config, dir, new EngineOptions { Quantize = QuantizeMode.Int4 }).Dispose());
        Assert.That(e!.Message, Does.StartWith("--quantize int4 takes a bf16 checkpoint").And.Contain("already FP8 e4m3").And.Contain("drop --quantize"));
    }

    [Test]
    public void AnAwqCheckpointRunsAsItIs()
    {
        // INT4 already (group 64 here): --quantize int4 asks for what it is, as on the GPU, and nothing is rounded again.
        string dir = ModelFixtures.Dir("tiny-awq");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        int[] prompt = [1, 2, 3, 4, 5];
        float[] Last(QuantizeMode mode)
        {
            using var backend = CpuReferenceBackend.Load(config, dir, new EngineOptions { Quantize = mode });
            using var seq = backend.CreateSequence();
            backend.Step([new SequenceChunk(seq, prompt)]);
            var logits = new float[config.VocabSize];
            seq.CopyLastLogits(logits);
            return logits;
        }
        Assert.That(Last(QuantizeMode.Int4), Is.EqualTo(Last(QuantizeMode.None)));
    }
}

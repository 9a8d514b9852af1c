using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Tests.Cli;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Reference;
using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// The committed tiny-fp8 and tiny-awq fixtures (tests/goldens/make_quantized_goldens.py): their layout, and the CPU
/// reference on them against the same model stored unquantized, with weights dequantized by the tests' own code.
/// </summary>
public class QuantizedFixtureTests
{
    public static readonly string[] Models = ["tiny-fp8", "tiny-awq"];

    private static SafetensorsCheckpoint Open(string model) => SafetensorsCheckpoint.Open(ModelFixtures.Dir(model));

    [Test]
    public void Fp8FixtureIsLlmCompressorsLayout()
    {
        var (config, _) = ModelFixtures.Load("tiny-fp8");
        Assert.That(config.TorchDtype, Is.EqualTo("bfloat16"));
        var q = (Fp8QuantizationConfig)config.Quantization!;
        Assert.That(q.Schemes.Single().Strategy, Is.EqualTo(Fp8ScaleStrategy.Channel));
        Assert.That(q.Ignore, Is.EqualTo(new[] { "lm_head" }));

        using var ck = Open("tiny-fp8");
        Assert.That(ck.Get("model.layers.1.mlp.down_proj.weight") is { DType: DType.F8_E4M3, Shape: [320, 384] });
        Assert.That(ck.Get("model.layers.1.mlp.down_proj.weight_scale") is { DType: DType.BF16, Shape: [320, 1] });
        Assert.That(ck.Get("lm_head.weight") is { DType: DType.BF16, Shape: [256, 320] });
        Assert.That(ck.Get("model.layers.0.self_attn.k_proj.bias").DType, Is.EqualTo(DType.BF16));
        Assert.That(ck.Tensors.Keys.Where(k => k.StartsWith("lm_head", StringComparison.Ordinal)), Is.EqualTo(new[] { "lm_head.weight" }));
    }

    [Test]
    public void AwqFixtureIsAutoAwqsLayout()
    {
        var (config, _) = ModelFixtures.Load("tiny-awq");
        Assert.That(config.TorchDtype, Is.EqualTo("float16"));
        Assert.That(config.Quantization, Is.EqualTo(new AwqQuantizationConfig { GroupSize = 64 }));

        using var ck = Open("tiny-awq");
        Assert.That(ck.Get("model.layers.0.self_attn.q_proj.qweight") is { DType: DType.I32, Shape: [320, 40] });
        Assert.That(ck.Get("model.layers.0.self_attn.k_proj.qweight") is { DType: DType.I32, Shape: [320, 8] });
        Assert.That(ck.Get("model.layers.0.mlp.down_proj.qweight") is { DType: DType.I32, Shape: [384, 40] });
        Assert.That(ck.Get("model.layers.0.mlp.down_proj.qzeros") is { DType: DType.I32, Shape: [6, 40] });
        Assert.That(ck.Get("model.layers.0.mlp.down_proj.scales") is { DType: DType.F16, Shape: [6, 320] });
        Assert.That(ck.Get("model.layers.0.self_attn.q_proj.bias").DType, Is.EqualTo(DType.F16));
        Assert.That(ck.Get("lm_head.weight") is { DType: DType.F16, Shape: [256, 320] });
        Assert.That(ck.Tensors.Keys, Has.No.Member("model.layers.0.self_attn.q_proj.weight"));
    }

    /// <summary>
    /// Every weight the CPU reference loaded equals the tests' own dequantization of the file (bit for bit), and the
    /// quantization is not trivial: each layer uses most of its codes.
    /// </summary>
    [TestCaseSource(nameof(Models))]
    public void LoadedWeightsAreTheDequantizedFile(string model)
    {
        var (config, weights) = ModelFixtures.Load(model);
        using var ck = Open(model);
        var arrays = TinyGqaFixture.Arrays(weights).ToDictionary(a => a.Name, a => a.Values);
        var projections = new (Projection P, string Field)[]
        {
            (Projection.Q, "QWeight"), (Projection.K, "KWeight"), (Projection.V, "VWeight"), (Projection.O, "OWeight"),
            (Projection.Gate, "GateWeight"), (Projection.Up, "UpWeight"), (Projection.Down, "DownWeight"),
        };
        for (int layer = 0; layer < config.NumHiddenLayers; layer++)
            foreach (var (p, field) in projections)
            {
                var linear = QuantizedTensorNames.Linear(config, layer, p);
                Assert.That(linear, Is.Not.TypeOf<PlainLinearTensors>(), linear.Module);
                var expected = QuantizedCheckpoints.Dequantize(ck, linear);
                Assert.That(arrays[$"Layers[{layer}].{field}"], Is.EqualTo(expected), linear.Module);
                Assert.That(expected.Distinct().Count(), Is.GreaterThan(model == "tiny-awq" ? 100 : 50), $"{linear.Module}: distinct values");
            }
        Assert.That(weights.LmHead, Is.EqualTo(ck.ReadFloat32(TensorNames.LmHead)));
        Assert.That(weights.Layers[1].VBias, Is.EqualTo(ck.ReadFloat32(TensorNames.VBias(1))));
    }

    /// <summary>
    /// The same model stored unquantized (F32, the dequantized weights, a config without quantization_config) runs
    /// the same logits: the quantized load changes nothing but where the weights come from.
    /// </summary>
    [TestCaseSource(nameof(Models))]
    public void ReferenceEqualsTheSameModelStoredUnquantized(string model)
    {
        var (config, quantized) = ModelFixtures.Load(model);
        using var ck = Open(model);
        var plainConfig = config with { Quantization = null, TorchDtype = "float32" };
        var independent = new CpuWeights
        {
            Config = plainConfig,
            Embedding = ck.ReadFloat32(TensorNames.Embedding),
            FinalNorm = ck.ReadFloat32(TensorNames.FinalNorm),
            LmHead = ck.ReadFloat32(TensorNames.LmHead),
            Layers = Enumerable.Range(0, config.NumHiddenLayers).Select(i =>
            {
                float[] L(Projection p) => QuantizedCheckpoints.Dequantize(ck, QuantizedTensorNames.Linear(config, i, p));
                float[] R(string name) => ck.ReadFloat32(name);
                return new CpuLayerWeights
                {
                    InputNorm = R(TensorNames.InputNorm(i)), PostAttentionNorm = R(TensorNames.PostAttentionNorm(i)),
                    QWeight = L(Projection.Q), KWeight = L(Projection.K), VWeight = L(Projection.V), OWeight = L(Projection.O),
                    QBias = R(TensorNames.QBias(i)), KBias = R(TensorNames.KBias(i)), VBias = R(TensorNames.VBias(i)),
                    GateWeight = L(Projection.Gate), UpWeight = L(Projection.Up), DownWeight = L(Projection.Down),
                };
            }).ToArray(),
        };

        using var dir = new TempDir();
        TestModels.WriteSafetensors(dir.File(SafetensorsCheckpoint.SingleFileName), plainConfig, independent);
        using var plainCk = SafetensorsCheckpoint.Open(dir.Path);
        var plain = CpuWeights.Load(plainCk, plainConfig);

        int[] prompt = [3, 141, 59, 26, 53, 58, 97, 93, 238, 46, 2, 64, 33, 83, 27, 95];
        var expected = new Qwen2CpuModel(plainConfig, plain).Forward(prompt);
        var actual = new Qwen2CpuModel(config, quantized).Forward(prompt);
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            diff += Math.Pow(actual[i] - expected[i], 2);
            norm += Math.Pow(expected[i], 2);
        }
        double rel = Math.Sqrt(diff / norm);
        TestContext.Out.WriteLine($"{model}: ‖Δ‖/‖ref‖ = {rel:E2} over {prompt.Length} positions");
        Assert.That(norm, Is.GreaterThan(0));
        Assert.That(rel, Is.LessThan(1e-6));
    }

    /// <summary>The CPU backend (`--backend cpu`) loads the quantized fixture directory and runs it.</summary>
    [TestCaseSource(nameof(Models))]
    public void CpuBackendRunsIt(string model)
    {
        var (config, weights) = ModelFixtures.Load(model);
        using var backend = CpuReferenceBackend.Load(config, ModelFixtures.Dir(model));
        using var seq = backend.CreateSequence();
        int[] prompt = [1, 2, 3, 4, 5, 6, 7];
        backend.Step([new SequenceChunk(seq, prompt)]);
        var logits = new float[config.VocabSize];
        seq.CopyLastLogits(logits);
        var expected = new Qwen2CpuModel(config, weights).Forward(prompt).AsSpan((prompt.Length - 1) * config.VocabSize).ToArray();
        Assert.That(logits, Is.EqualTo(expected).Within(1e-5f));
    }

    [Test]
    public async Task InfoShowsTheQuantization()
    {
        var r = await CliTests.Qwq("info", "--model", ModelFixtures.Dir("tiny-awq"));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("quantization").And.Contain("AWQ INT4 (gemm packing, group size 64, zero points)"));
        Assert.That(r.Out, Does.Contain("int4-awq (checkpoint)"));

        r = await CliTests.Qwq("info", "--model", ModelFixtures.Dir("tiny-fp8"), "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var q = doc.RootElement.GetProperty("quantization");
        Assert.That(q.GetProperty("method").GetString(), Is.EqualTo("compressed-tensors"));
        Assert.That(q.GetProperty("description").GetString(), Does.Contain("FP8 e4m3 weights, per-channel scales"));
        Assert.That(doc.RootElement.GetProperty("checkpoint_kind").GetString(), Is.EqualTo("fp8"));
        Assert.That(doc.RootElement.GetProperty("plan").GetProperty("kind").GetString(), Is.EqualTo("fp8"), "planned as it loads");

        r = await CliTests.Qwq("info", "--model", ModelFixtures.Dir("tiny-gqa"), "--json");
        using var plain = JsonDocument.Parse(r.Out);
        Assert.That(plain.RootElement.GetProperty("quantization").ValueKind, Is.EqualTo(JsonValueKind.Null));
    }
}

using System.Text.Json.Nodes;
using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Quantized.QuantizedConfigs;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>Quantized checkpoints are validated as strictly as plain ones: names, exact shapes, and dtypes.</summary>
public class QuantizedValidatorTests
{
    private const string Q = "model.layers.0.self_attn.q_proj", K = "model.layers.0.self_attn.k_proj", Down = "model.layers.0.mlp.down_proj";

    private TempDir _dir = null!;
    [SetUp] public void SetUp() => _dir = new TempDir();
    [TearDown] public void TearDown() => _dir.Dispose();

    private static ModelConfig Fp8Config(string strategy = "channel", bool staticInput = false) => Parse(Fp8(strategy, staticInput));
    private static ModelConfig AwqConfig(params string[] notConverted) => Parse(Awq(32, notConverted), dtype: "float16");

    private void Write(ModelConfig c, Func<Entry, Entry?>? edit = null, string plainDType = "F32", params Entry[] extra) =>
        QuantizedCheckpoints.Write(_dir.Path, QuantizedCheckpoints.Entries(c, plainDType: plainDType, edit: edit).Concat(extra));

    private void Passes(ModelConfig c)
    {
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.DoesNotThrow(() => CheckpointValidator.Validate(ck, c));
    }

    private string Fails(ModelConfig c)
    {
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        var e = Assert.Throws<WeightsException>(() => CheckpointValidator.Validate(ck, c))!;
        TestContext.Out.WriteLine(e.Message);
        return e.Message;
    }

    private static Dictionary<string, ExpectedTensor> Expected(ModelConfig c) => TensorNames.Expected(c).ToDictionary(e => e.Name);

    // ---- what is expected ----------------------------------------------------------------------

    [Test]
    public void Fp8ConfigExpectsFp8WeightsWithChannelScalesAndAPlainLmHead()
    {
        var e = Expected(Fp8Config());
        Assert.That((e[Q + ".weight"].Shape, e[Q + ".weight"].DTypes), Is.EqualTo((new long[] { 64, 64 }, new[] { DType.F8_E4M3 })));
        Assert.That((e[Q + ".weight_scale"].Shape, e[Q + ".weight_scale"].DTypes), Is.EqualTo((new long[] { 64, 1 }, ExpectedTensor.PlainFloat)));
        Assert.That(e[K + ".weight_scale"].Shape, Is.EqualTo(new long[] { 32, 1 }));
        Assert.That(e[Down + ".weight"].Shape, Is.EqualTo(new long[] { 64, 128 }));
        Assert.That(e[Q + ".bias"].DTypes, Is.EqualTo(ExpectedTensor.PlainFloat));
        Assert.That(e["lm_head.weight"].DTypes, Is.EqualTo(ExpectedTensor.PlainFloat));
        Assert.That(e.Keys, Has.No.Member("lm_head.weight_scale"));
        Assert.That(e, Has.Count.EqualTo(1 + 2 + 7 * 2 + 3 + 1 + 1)); // embedding, norms, 7 weights + scales, 3 biases, final norm, lm_head

        var perTensor = Expected(Fp8Config("tensor"));
        Assert.That(perTensor[Q + ".weight_scale"].ShapeText, Is.EqualTo("[1] or []"));
    }

    [Test]
    public void AwqConfigExpectsPackedTensorsAndAPlainLmHead()
    {
        var e = Expected(AwqConfig());
        Assert.That(e.Keys, Has.No.Member(Q + ".weight"));
        Assert.That((e[Q + ".qweight"].Shape, e[Q + ".qweight"].DTypes), Is.EqualTo((new long[] { 64, 8 }, new[] { DType.I32 })));
        Assert.That((e[Q + ".qzeros"].Shape, e[Q + ".qzeros"].DTypes), Is.EqualTo((new long[] { 2, 8 }, new[] { DType.I32 })));
        Assert.That(e[Q + ".scales"].Shape, Is.EqualTo(new long[] { 2, 64 }));
        Assert.That(e[K + ".qweight"].Shape, Is.EqualTo(new long[] { 64, 4 }));
        Assert.That(e[Down + ".qweight"].Shape, Is.EqualTo(new long[] { 128, 8 }));  // [in, out/8]: the transpose
        Assert.That(e[Down + ".qzeros"].Shape, Is.EqualTo(new long[] { 4, 8 }));
        Assert.That(e[Down + ".scales"].Shape, Is.EqualTo(new long[] { 4, 64 }));
        Assert.That(e[Q + ".bias"].Shape, Is.EqualTo(new long[] { 64 }));
        Assert.That(e["lm_head.weight"].Shape, Is.EqualTo(new long[] { 40, 64 }));

        var skipped = Expected(AwqConfig("mlp.down_proj"));
        Assert.That(skipped.Keys, Has.Member(Down + ".weight").And.No.Member(Down + ".qweight"));
    }

    // ---- complete checkpoints pass -------------------------------------------------------------

    [Test]
    public void CompleteFp8CheckpointPasses([Values("F32", "BF16", "F16")] string plain)
    {
        Write(Fp8Config(), plainDType: plain);
        Passes(Fp8Config());
    }

    [Test]
    public void PerTensorScaleMayBeAScalar()
    {
        Write(Fp8Config("tensor"), e => e.Name == Q + ".weight_scale" ? e with { Shape = [] } : e);
        Passes(Fp8Config("tensor"));
    }

    [Test]
    public void CompleteAwqCheckpointPasses([Values("F16", "BF16")] string plain)
    {
        Write(AwqConfig(), plainDType: plain);
        Passes(AwqConfig());
        Write(AwqConfig("mlp.down_proj"));
        Passes(AwqConfig("mlp.down_proj"));
    }

    [Test]
    public void TiedConfigHasNoOutputProjection()
    {
        var c = Parse(Fp8(), tied: true);
        Assert.That(Expected(c).Keys, Has.No.Member("lm_head.weight"));
        Write(c);
        Passes(c);
    }

    // ---- each kind of mismatch is named --------------------------------------------------------

    [Test]
    public void MissingScaleIsNamed()
    {
        Write(Fp8Config(), e => e.Name == Q + ".weight_scale" ? null : e);
        Assert.That(Fails(Fp8Config()), Does.Contain($"tensor '{Q}.weight_scale' is missing; expected shape [64, 1]"));
    }

    [Test]
    public void MissingQZerosIsNamedWithItsDtype()
    {
        Write(AwqConfig(), e => e.Name == Down + ".qzeros" ? null : e);
        Assert.That(Fails(AwqConfig()), Does.Contain($"tensor '{Down}.qzeros' is missing; expected I32 shape [4, 8]"));
    }

    [Test]
    public void WrongScaleShapeIsNamed()
    {
        Write(Fp8Config(), e => e.Name == Q + ".weight_scale" ? e with { Shape = [64] } : e);
        Assert.That(Fails(Fp8Config()), Does.Contain($"'{Q}.weight_scale' in ").And.Contain("has shape [64], expected [64, 1]"));

        Write(Fp8Config("tensor"), e => e.Name == Q + ".weight_scale" ? F32(e.Name, [2], 1f, 1f) : e);
        Assert.That(Fails(Fp8Config("tensor")), Does.Contain("has shape [2], expected [1] or []"));
    }

    [Test]
    public void TransposedQWeightIsNamed()
    {
        // [out, in/8] (a GPTQ-like orientation) instead of AWQ's [in, out/8].
        Write(AwqConfig(), e => e.Name == Down + ".qweight" ? e with { Shape = [64, 16] } : e);
        Assert.That(Fails(AwqConfig()), Does.Contain($"'{Down}.qweight' in ").And.Contain("has shape [64, 16], expected [128, 8]"));
    }

    [Test]
    public void WrongDtypesAreNamed()
    {
        // An fp8 weight stored as bf16 (an unquantized layer where the config says FP8).
        Write(Fp8Config(), e => e.Name == Q + ".weight" ? Bf16(e.Name, e.Shape, new ushort[64 * 64]) : e);
        Assert.That(Fails(Fp8Config()), Does.Contain($"'{Q}.weight' in ").And.Contain("has dtype BF16, expected F8_E4M3"));

        Write(AwqConfig(), e => e.Name == Q + ".qweight" ? e with { DType = "F32" } : e.Name == Q + ".scales" ? e with { DType = "I32" } : e);
        string m = Fails(AwqConfig());
        Assert.That(m, Does.Contain($"'{Q}.qweight' in ").And.Contain("has dtype F32, expected I32"));
        Assert.That(m, Does.Contain($"'{Q}.scales' in ").And.Contain("has dtype I32, expected BF16, F16 or F32"));
    }

    [Test]
    public void PlainTensorsMustBeFloats()
    {
        Write(Fp8Config(), e => e.Name == "model.norm.weight" ? e with { DType = "I32" } : e);
        Assert.That(Fails(Fp8Config()), Does.Contain("'model.norm.weight' in ").And.Contain("has dtype I32, expected BF16, F16 or F32"));
    }

    [Test]
    public void ExtraTensorIsNamed()
    {
        // Zero points of a symmetric scheme are not written by compressed-tensors; one that is there is not ours to ignore.
        Write(Fp8Config(), extra: F32(Q + ".weight_zero_point", [64, 1], new float[64]));
        Assert.That(Fails(Fp8Config()), Does.Contain($"tensor '{Q}.weight_zero_point' in ").And.Contain("is not part of the model"));
    }

    [Test]
    public void InputScalesAreIgnoredOnlyForStaticActivations()
    {
        var inputScale = F32(Q + ".input_scale", [1], 0.5f);
        Write(Fp8Config(staticInput: true), extra: inputScale);
        Passes(Fp8Config(staticInput: true));
        Write(Fp8Config(staticInput: true));
        Passes(Fp8Config(staticInput: true));

        Write(Fp8Config(), extra: inputScale);
        Assert.That(Fails(Fp8Config()), Does.Contain($"tensor '{Q}.input_scale' in ").And.Contain("is not part of the model"));
    }

    [Test]
    public void Fp8CheckpointUnderAPlainConfigNamesBoth()
    {
        Write(Fp8Config());
        string m = Fails(Parse(null));
        Assert.That(m, Does.Contain("config.json has no quantization_config (an unquantized bfloat16 model), " +
                                    "but the checkpoint holds FP8 weights (F8_E4M3 tensors such as 'model.layers.0."));
        Assert.That(m, Does.Contain("has dtype F8_E4M3, expected BF16, F16 or F32"));
    }

    [Test]
    public void PlainCheckpointUnderAnFp8ConfigNamesBoth()
    {
        Write(Parse(null));
        string m = Fails(Fp8Config());
        Assert.That(m, Does.Contain("config.json's quantization_config says FP8 e4m3 weights").And
                          .Contain("but the checkpoint holds no quantized weights"));
        Assert.That(m, Does.Contain($"'{Q}.weight' in ").And.Contain("has dtype F32, expected F8_E4M3"));
    }

    [Test]
    public void AwqCheckpointUnderAnFp8ConfigNamesBoth()
    {
        Write(AwqConfig());
        Assert.That(Fails(Fp8Config()), Does.Contain("quantization_config says FP8").And
                                            .Contain("but the checkpoint holds AWQ INT4 weights (I32 tensors such as '"));
        Write(Fp8Config());
        Assert.That(Fails(AwqConfig()), Does.Contain("quantization_config says AWQ INT4").And.Contain("holds FP8 weights"));
    }

    [Test]
    public void LayerLeftUnconvertedMustBePlain()
    {
        // The checkpoint quantized down_proj, the config says it was not converted.
        Write(AwqConfig());
        string m = Fails(AwqConfig("mlp.down_proj"));
        Assert.That(m, Does.Contain($"tensor '{Down}.weight' is missing"));
        Assert.That(m, Does.Contain($"tensor '{Down}.qweight' in ").And.Contain("is not part of the model"));
    }

    // ---- reads ---------------------------------------------------------------------------------

    [Test]
    public void PlainReadsOfQuantizedTensorsAreRefused()
    {
        Write(AwqConfig());
        using (var ck = SafetensorsCheckpoint.Open(_dir.Path))
        {
            var e = Assert.Throws<WeightsException>(() => ck.ReadFloat32(Q + ".qweight"))!;
            Assert.That(e.Message, Does.Contain($"tensor '{Q}.qweight' is I32").And.Contain("AWQ").And.Contain("ReadDequantizedLinear"));
        }
        Write(Fp8Config());
        using (var ck = SafetensorsCheckpoint.Open(_dir.Path))
        {
            var e = Assert.Throws<WeightsException>(() => ck.CopyAsBf16(ck.Get(Q + ".weight"), new ushort[8], 0))!;
            Assert.That(e.Message, Does.Contain($"tensor '{Q}.weight' is F8_E4M3").And.Contain("scale"));
        }
    }

    [Test]
    public void DequantizedReadsMatchAnIndependentDequantization([Values("fp8", "fp8-tensor", "awq", "awq-skip")] string kind)
    {
        var c = kind switch
        {
            "fp8" => Fp8Config(),
            "fp8-tensor" => Fp8Config("tensor"),
            "awq" => AwqConfig(),
            _ => AwqConfig("self_attn.k_proj"),
        };
        Write(c, plainDType: kind.StartsWith("fp8") ? "BF16" : "F16");
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        foreach (var linear in QuantizedTensorNames.Linears(c))
        {
            var expected = QuantizedCheckpoints.Dequantize(ck, linear);
            Assert.That(ck.ReadDequantizedLinear(linear), Is.EqualTo(expected), linear.Module);
            Assert.That(expected.Any(v => v != 0), Is.True, linear.Module);
        }
    }

    [Test]
    public void DequantizedReadChecksTheTensorsItself()
    {
        // The GPU loader may call it without the validator: a wrong dtype is named, not misread.
        Write(Fp8Config(), e => e.Name == Q + ".weight_scale" ? e with { DType = "I32" } : e);
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        var e = Assert.Throws<WeightsException>(() => ck.ReadDequantizedLinear(QuantizedTensorNames.Linear(Fp8Config(), 0, Projection.Q)))!;
        Assert.That(e.Message, Does.Contain($"tensor '{Q}.weight_scale' is I32[64, 1]; layer '{Q}' needs BF16, F16 or F32 [64, 1]"));
    }
}

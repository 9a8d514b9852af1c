using System.Text.Json.Nodes;
using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using static QwQ.Cuda.Tests.Quantized.QuantizedConfigs;

namespace QwQ.Cuda.Tests.Quantized;

public class QuantizationConfigTests
{
    private static ConfigException Refused(JsonNode quantization, int hidden = 64, int intermediate = 128)
    {
        var e = Assert.Throws<ConfigException>(() => Parse(quantization, hidden, intermediate))!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Message, Does.StartWith("config.json: "));
        return e;
    }

    // ---- accepted ------------------------------------------------------------------------------

    [Test]
    public void NoQuantizationConfigMeansPlainWeights() => Assert.That(Parse(null).Quantization, Is.Null);

    [Test]
    public void LlmCompressorFp8DynamicIsPerChannelWithLmHeadIgnored()
    {
        var q = Parse(Fp8()).Quantization;
        Assert.That(q, Is.TypeOf<Fp8QuantizationConfig>());
        var fp8 = (Fp8QuantizationConfig)q!;
        Assert.That(fp8.Method, Is.EqualTo(QuantizationMethod.CompressedTensorsFp8));
        Assert.That(fp8.Ignore, Is.EqualTo(new[] { "lm_head" }));
        Assert.That(fp8.SchemeFor("model.layers.0.self_attn.q_proj"), Is.EqualTo(new Fp8WeightScheme("group_0", ["Linear"], Fp8ScaleStrategy.Channel, false)));
        Assert.That(fp8.SchemeFor("lm_head"), Is.Null);
        Assert.That(fp8.Description, Does.Contain("FP8").And.Contain("per-channel").And.Contain("lm_head"));
    }

    [Test]
    public void Fp8PerTensorAndStaticInputScales()
    {
        var fp8 = (Fp8QuantizationConfig)Parse(Fp8("tensor", staticInput: true)).Quantization!;
        var s = fp8.SchemeFor("model.layers.0.mlp.down_proj")!;
        Assert.That((s.Strategy, s.StaticInputScale), Is.EqualTo((Fp8ScaleStrategy.Tensor, true)));
    }

    [TestCase(null, -1, Fp8ScaleStrategy.Channel)]
    [TestCase(null, null, Fp8ScaleStrategy.Tensor)]
    [TestCase("CHANNEL", null, Fp8ScaleStrategy.Channel)]
    [TestCase("channel", -1, Fp8ScaleStrategy.Channel)]
    public void Fp8StrategyIsInferredAsCompressedTensorsDoes(string? strategy, int? groupSize, Fp8ScaleStrategy expected)
    {
        var q = Fp8();
        WeightArgs(q)["strategy"] = strategy;
        WeightArgs(q)["group_size"] = groupSize;
        Assert.That(((Fp8QuantizationConfig)Parse(q).Quantization!).Schemes[0].Strategy, Is.EqualTo(expected));
    }

    [Test]
    public void Fp8TargetsAndIgnoreTakeRegexesAndNames()
    {
        var q = Fp8(ignore: ["re:.*lm_head", "re:model\\.layers\\.0\\.mlp\\.", "model.layers.1.self_attn.o_proj"]);
        q["config_groups"]!["group_0"]!["targets"] = new JsonArray("re:.*_proj$", "lm_head");
        var fp8 = (Fp8QuantizationConfig)Parse(q, layers: 2).Quantization!;
        Assert.That(fp8.SchemeFor("model.layers.0.self_attn.q_proj"), Is.Not.Null);
        Assert.That(fp8.SchemeFor("model.layers.0.mlp.up_proj"), Is.Null, "ignored by a prefix regex (re.match anchors at the start only)");
        Assert.That(fp8.SchemeFor("model.layers.1.mlp.up_proj"), Is.Not.Null);
        Assert.That(fp8.SchemeFor("model.layers.1.self_attn.o_proj"), Is.Null, "ignored by exact name");
        Assert.That(fp8.SchemeFor("lm_head"), Is.Null);
    }

    [Test]
    public void Fp8NaiveQuantizedAndMixedPrecisionWithGroupFormats()
    {
        var naive = Fp8();
        naive["format"] = "naive-quantized";
        Assert.That(Parse(naive).Quantization, Is.TypeOf<Fp8QuantizationConfig>());

        var mixed = Fp8();
        mixed["format"] = "mixed-precision";
        mixed["config_groups"]!["group_0"]!["format"] = "float-quantized";
        Assert.That(Parse(mixed).Quantization, Is.TypeOf<Fp8QuantizationConfig>());
    }

    [Test]
    public void QwqAwqConfigIsAccepted()
    {
        var awq = (AwqQuantizationConfig)Parse(Awq(32), dtype: "float16").Quantization!;
        Assert.That((awq.Method, awq.Bits, awq.GroupSize), Is.EqualTo((QuantizationMethod.AwqInt4, 4, 32)));
        Assert.That(awq.Converts("model.layers.0.mlp.down_proj"), Is.True);
        Assert.That(awq.Description, Does.Contain("AWQ INT4").And.Contain("group size 32"));

        var official = ModelConfig.Parse("""
            {"architectures":["Qwen2ForCausalLM"],"hidden_act":"silu","hidden_size":5120,"intermediate_size":27648,
             "max_position_embeddings":40960,"model_type":"qwen2","num_attention_heads":40,"num_hidden_layers":64,
             "num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":1000000.0,"tie_word_embeddings":false,
             "torch_dtype":"float16","use_sliding_window":false,"vocab_size":152064,
             "quantization_config":{"bits":4,"group_size":128,"modules_to_not_convert":null,"quant_method":"awq",
                                    "version":"gemm","zero_point":true}}
            """, "QwQ-32B-AWQ/config.json");
        Assert.That(official.Quantization, Is.EqualTo(new AwqQuantizationConfig { GroupSize = 128 }));
    }

    [Test]
    public void AwqModulesToNotConvertMatchAsSubstrings()
    {
        var awq = (AwqQuantizationConfig)Parse(Awq(32, "mlp.down_proj", "layers.0.self_attn")).Quantization!;
        Assert.That(awq.Converts("model.layers.0.mlp.down_proj"), Is.False);
        Assert.That(awq.Converts("model.layers.0.self_attn.k_proj"), Is.False);
        Assert.That(awq.Converts("model.layers.0.mlp.up_proj"), Is.True);
    }

    [Test]
    public void ParsedConfigsCompareByValue()
    {
        ModelConfig fp8 = Parse(Fp8()), fp8Again = Parse(Fp8()), awq = Parse(Awq(32, "x")), awqAgain = Parse(Awq(32, "x"));
        Assert.That(fp8Again, Is.EqualTo(fp8));
        Assert.That(awqAgain, Is.EqualTo(awq));
        Assert.That(fp8Again.GetHashCode(), Is.EqualTo(fp8.GetHashCode()));
        Assert.That(Parse(Fp8()), Is.Not.EqualTo(Parse(Fp8("tensor"))));
        Assert.That(Parse(Awq(32)), Is.Not.EqualTo(Parse(Awq(64))));
    }

    // ---- refused: each message names the field, the value and what is supported ----------------

    [Test]
    public void UnknownMethodListsTheSupportedOnes()
    {
        var e = Refused(new JsonObject { ["quant_method"] = "gptq", ["bits"] = 4 });
        Assert.That(e.Message, Does.Contain("'quantization_config.quant_method' = \"gptq\" is not supported")
                                  .And.Contain("\"compressed-tensors\"").And.Contain("FP8").And.Contain("\"awq\""));
    }

    [Test]
    public void MissingMethodIsNamed() =>
        Assert.That(Refused(new JsonObject { ["bits"] = 4 }).Message, Does.Contain("'quantization_config.quant_method' is missing"));

    private static IEnumerable<TestCaseData> Fp8Refusals()
    {
        TestCaseData Case(string name, Action<JsonObject> edit, params string[] fragments) =>
            new TestCaseData(edit, fragments).SetName($"Fp8Refused({name})");
        const string w = "'quantization_config.config_groups.group_0.weights.";
        const string a = "'quantization_config.config_groups.group_0.input_activations.";
        yield return Case("4 bits", q => WeightArgs(q)["num_bits"] = 4, w + "num_bits' must be 8", "got number 4", "AWQ");
        yield return Case("int8", q => WeightArgs(q)["type"] = "int", w + "type' must be \"float\"", "got string \"int\"");
        yield return Case("no type", q => WeightArgs(q).Remove("type"), w + "type' is missing", "\"int\"");
        yield return Case("group strategy", q => { WeightArgs(q)["strategy"] = "group"; WeightArgs(q)["group_size"] = 128; },
                          w + "strategy' must be \"channel\" or \"tensor\"", "got string \"group\"");
        yield return Case("group by size", q => { WeightArgs(q)["strategy"] = null; WeightArgs(q)["group_size"] = 128; },
                          w + "group_size' implies strategy \"group\"", "\"channel\" or \"tensor\"");
        yield return Case("block", q => WeightArgs(q)["strategy"] = "block", w + "strategy' must be", "got string \"block\"");
        yield return Case("block structure", q => WeightArgs(q)["block_structure"] = new JsonArray(128, 128), w + "block_structure' must be null");
        yield return Case("channel with group size", q => WeightArgs(q)["group_size"] = 64, w + "group_size' does not fit strategy \"channel\"");
        yield return Case("asymmetric", q => WeightArgs(q)["symmetric"] = false, w + "symmetric' must be true", "zero points");
        yield return Case("dynamic weights", q => WeightArgs(q)["dynamic"] = true, w + "dynamic' must be false");
        yield return Case("no weights", q => q["config_groups"]!["group_0"]!["weights"] = null, "group_0.weights' is missing or null");
        yield return Case("int8 activations", q => InputArgs(q)["type"] = "int", a + "type' must be \"float\"", "bf16");
        yield return Case("4-bit activations", q => InputArgs(q)["num_bits"] = 4, a + "num_bits' must be 8");
        yield return Case("output activations", q => q["config_groups"]!["group_0"]!["output_activations"] = new JsonObject { ["num_bits"] = 8 },
                          "output_activations' is set");
        yield return Case("pack-quantized", q => q["format"] = "pack-quantized",
                          "'quantization_config.format' must be \"float-quantized\" or \"naive-quantized\"", "got string \"pack-quantized\"");
        yield return Case("no format", q => q.Remove("format"), "'quantization_config.format' is missing");
        yield return Case("mixed without group formats", q => q["format"] = "mixed-precision", "every group must say its format");
        yield return Case("nvfp4 group", q => { q["format"] = "mixed-precision"; q["config_groups"]!["group_0"]!["format"] = "nvfp4-pack-quantized"; },
                          "group_0.format' must be", "nvfp4-pack-quantized");
        yield return Case("kv cache", q => q["kv_cache_scheme"] = new JsonObject { ["num_bits"] = 8, ["type"] = "float" },
                          "'quantization_config.kv_cache_scheme' is set", "KV-cache quantization is not supported");
        yield return Case("frozen", q => q["quantization_status"] = "frozen", "'quantization_config.quantization_status' must be \"compressed\"", "\"frozen\"");
        yield return Case("sparse", q => q["sparsity_config"] = new JsonObject { ["format"] = "sparse-24-bitmask" }, "sparsity_config.format' must be \"dense\"");
        yield return Case("no groups", q => q["config_groups"] = new JsonObject(), "config_groups' is empty");
        yield return Case("no targets", q => q["config_groups"]!["group_0"]!["targets"] = new JsonArray(), "group_0.targets' is missing");
        yield return Case("bad regex", q => q["ignore"] = new JsonArray("re:(lm_head"), "'quantization_config.ignore' holds \"re:(lm_head\"");
    }

    [TestCaseSource(nameof(Fp8Refusals))]
    public void Fp8Refused(Action<JsonObject> edit, string[] fragments)
    {
        var q = Fp8();
        edit(q);
        var e = Refused(q);
        foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f));
    }

    private static IEnumerable<TestCaseData> AwqRefusals()
    {
        TestCaseData Case(string name, Action<JsonObject> edit, params string[] fragments) =>
            new TestCaseData(edit, fragments).SetName($"AwqRefused({name})");
        yield return Case("8 bits", q => q["bits"] = 8, "'quantization_config.bits' must be 4", "got number 8");
        yield return Case("no zero point", q => q["zero_point"] = false, "'quantization_config.zero_point' must be true", "got boolean false");
        yield return Case("gemv", q => q["version"] = "gemv", "'quantization_config.version' must be \"gemm\"", "got string \"gemv\"");
        yield return Case("marlin", q => q["version"] = "marlin", "'quantization_config.version' must be \"gemm\"");
        yield return Case("group 100", q => q["group_size"] = 100, "'quantization_config.group_size' must be a power of two of at least 32", "got number 100");
        yield return Case("group 16", q => q["group_size"] = 16, "'quantization_config.group_size' must be a power of two", "got number 16");
        yield return Case("per channel", q => q["group_size"] = -1, "'quantization_config.group_size' must be a power of two", "got number -1");
        yield return Case("llm-awq", q => q["backend"] = "llm-awq", "'quantization_config.backend' must be \"autoawq\"");
        yield return Case("no version", q => q.Remove("version"), "'quantization_config.version' is missing");
        yield return Case("no group size", q => q.Remove("group_size"), "'quantization_config.group_size' is missing");
        yield return Case("empty module name", q => q["modules_to_not_convert"] = new JsonArray(""), "modules_to_not_convert' must not hold an empty name");
    }

    [TestCaseSource(nameof(AwqRefusals))]
    public void AwqRefused(Action<JsonObject> edit, string[] fragments)
    {
        var q = Awq(32);
        edit(q);
        var e = Refused(q);
        foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f));
    }

    [Test]
    public void AwqGroupMustDivideEveryInputSize()
    {
        // The tiny-gqa shapes: hidden 320 is 2.5 groups of 128.
        var e = Refused(Awq(128), hidden: 320, intermediate: 384);
        Assert.That(e.Message, Does.Contain("'quantization_config.group_size' = 128 must divide").And.Contain("hidden_size = 320"));
        e = Refused(Awq(64), hidden: 64, intermediate: 96);
        Assert.That(e.Message, Does.Contain("intermediate_size = 96"));
        Assert.That(Parse(Awq(64), hidden: 320, intermediate: 384).Quantization, Is.Not.Null);
    }

    [Test]
    public void AwqOutputSizesMustPackBy8()
    {
        // 8 heads of 12 (q: 96, a multiple of the group) but one KV head: k and v have 12 outputs.
        var root = JsonNode.Parse(Json(Awq(32)))!.AsObject();
        (root["num_attention_heads"], root["num_key_value_heads"], root["head_dim"]) = (8, 1, 12);
        var e = Assert.Throws<ConfigException>(() => ModelConfig.Parse(root.ToJsonString(), "config.json"))!;
        Assert.That(e.Message, Does.Contain("num_key_value_heads × head_dim = 12 is not a multiple of 8"));
    }
}

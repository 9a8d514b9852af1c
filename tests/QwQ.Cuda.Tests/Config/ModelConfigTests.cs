using System.Text.Json.Nodes;
using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Tests.Config;

public class ModelConfigTests
{
    private static string FixturePath(string relative) =>
        Path.Combine(TestContext.CurrentContext.TestDirectory, "fixtures", relative);

    private static string QwqJson => File.ReadAllText(FixturePath("qwq-32b/config.json"));

    /// <summary>The QwQ config with one field changed (null value = removed).</summary>
    private static string QwqWith(string field, JsonNode? value, bool remove = false)
    {
        var node = JsonNode.Parse(QwqJson)!.AsObject();
        if (remove) node.Remove(field);
        else node[field] = value;
        return node.ToJsonString();
    }

    /// <summary>The QwQ config with one field set to raw JSON text (numbers beyond double, strings, anything).</summary>
    private static string QwqWithRaw(string field, string rawJson) =>
        QwqWith(field, JsonValue.Create("@raw@")).Replace("\"@raw@\"", rawJson);

    private static ConfigException ParseFails(string json) =>
        Assert.Throws<ConfigException>(() => ModelConfig.Parse(json, "config.json"))!;

    [Test]
    public void ParsesTheReleaseConfig()
    {
        var c = ModelConfig.Load(FixturePath("qwq-32b/config.json"));
        Assert.Multiple(() =>
        {
            Assert.That(c.ModelType, Is.EqualTo("qwen2"));
            Assert.That(c.Architecture, Is.EqualTo("Qwen2ForCausalLM"));
            Assert.That(c.HiddenSize, Is.EqualTo(5120));
            Assert.That(c.IntermediateSize, Is.EqualTo(27648));
            Assert.That(c.NumHiddenLayers, Is.EqualTo(64));
            Assert.That(c.NumAttentionHeads, Is.EqualTo(40));
            Assert.That(c.NumKeyValueHeads, Is.EqualTo(8));
            Assert.That(c.HeadDim, Is.EqualTo(128));
            Assert.That(c.VocabSize, Is.EqualTo(152064));
            Assert.That(c.RmsNormEps, Is.EqualTo(1e-5));
            Assert.That(c.RopeTheta, Is.EqualTo(1_000_000.0));
            Assert.That(c.MaxPositionEmbeddings, Is.EqualTo(40960));
            Assert.That(c.TieWordEmbeddings, Is.False);
            Assert.That(c.TorchDtype, Is.EqualTo("bfloat16"));
            Assert.That(c.RopeScaling, Is.Null);
            Assert.That(c.UseSlidingWindow, Is.False);
        });
    }

    [Test]
    public void DerivedSizesOfQwq32B()
    {
        var c = ModelPresets.Get("qwq-32b");
        Assert.Multiple(() =>
        {
            Assert.That(c.QkvDim, Is.EqualTo((40 + 16) * 128));
            Assert.That(c.QueriesPerKvHead, Is.EqualTo(5));
            Assert.That(c.KvBytesPerToken, Is.EqualTo(2L * 64 * 8 * 128 * 2)); // 256 KiB per token
            // QwQ-32B is advertised as 32.5B parameters (31.0B without embeddings).
            Assert.That(c.ParameterCount, Is.EqualTo(32_763_876_352L));
            Assert.That(c.WeightBytes, Is.EqualTo(c.ParameterCount * 2));
        });
    }

    [Test]
    public void PresetEqualsTheReleaseConfig()
    {
        Assert.That(ModelPresets.Get("qwq-32b"), Is.EqualTo(ModelConfig.Load(FixturePath("qwq-32b/config.json"))));
        Assert.That(ModelPresets.Get("QwQ-32B"), Is.EqualTo(ModelPresets.Get("qwq-32b")));
    }

    [Test]
    public void UnknownPresetListsKnownOnes()
    {
        var e = Assert.Throws<ConfigException>(() => ModelPresets.Get("llama-7b"))!;
        Assert.That(e.Message, Does.Contain("llama-7b").And.Contain("qwq-32b"));
    }

    [TestCase("hidden_size")]
    [TestCase("intermediate_size")]
    [TestCase("num_hidden_layers")]
    [TestCase("num_attention_heads")]
    [TestCase("num_key_value_heads")]
    [TestCase("vocab_size")]
    [TestCase("rms_norm_eps")]
    [TestCase("rope_theta")]
    [TestCase("max_position_embeddings")]
    [TestCase("model_type")]
    public void MissingFieldIsNamed(string field)
    {
        var e = ParseFails(QwqWith(field, null, remove: true));
        Assert.That(e.Message, Does.StartWith("config.json:").And.Contain($"'{field}'").And.Contain("missing"));
    }

    [Test]
    public void WrongTypeIsNamed()
    {
        var e = ParseFails(QwqWith("hidden_size", JsonValue.Create("5120")));
        Assert.That(e.Message, Is.EqualTo("config.json: 'hidden_size' must be an integer from 1 to 65536, got string \"5120\""));
        e = ParseFails(QwqWith("num_hidden_layers", JsonValue.Create(64.5)));
        Assert.That(e.Message, Is.EqualTo("config.json: 'num_hidden_layers' must be an integer from 1 to 1024, got number 64.5"));
        e = ParseFails(QwqWith("tie_word_embeddings", JsonValue.Create("no")));
        Assert.That(e.Message, Does.Contain("'tie_word_embeddings' must be true or false"));
    }

    [Test]
    public void IntegralFloatIsAcceptedAsInteger() =>
        Assert.That(ModelConfig.Parse(QwqWith("hidden_size", JsonValue.Create(5120.0)), "c").HiddenSize, Is.EqualTo(5120));

    [Test]
    public void NonPositiveSizeIsRejected()
    {
        var e = ParseFails(QwqWith("num_hidden_layers", JsonValue.Create(0)));
        Assert.That(e.Message, Is.EqualTo("config.json: 'num_hidden_layers' must be an integer from 1 to 1024, got number 0"));
    }

    // Each size is bounded (ModelConfig.Max*), so no product of sizes can wrap around; the message gives the range.
    [TestCase("num_hidden_layers", "1073741824", "from 1 to 1024")]
    [TestCase("hidden_size", "65537", "from 1 to 65536")]
    [TestCase("intermediate_size", "1048577", "from 1 to 1048576")]
    [TestCase("num_attention_heads", "1025", "from 1 to 1024")]
    [TestCase("num_key_value_heads", "-8", "from 1 to 1024")]
    [TestCase("vocab_size", "16777217", "from 1 to 16777216")]
    [TestCase("max_position_embeddings", "16777217", "from 1 to 16777216")]
    [TestCase("head_dim", "1073741840", "from 2 to 1024")]
    [TestCase("head_dim", "0", "from 2 to 1024")]
    [TestCase("vocab_size", "9223372036854775808", "from 1 to 16777216")]
    [TestCase("hidden_size", "1e400", "from 1 to 65536")]
    [TestCase("num_hidden_layers", "2147483648", "from 1 to 1024")]
    public void SizesOutOfRangeAreRejectedWithTheRange(string field, string rawValue, string range)
    {
        var e = ParseFails(QwqWithRaw(field, rawValue));
        Assert.That(e.Message, Does.StartWith($"config.json: '{field}' must be an integer {range}, got number "));
    }

    [Test]
    public void HeadDimThatWrapsToTheTrueShapesIsRejected()
    {
        // With 20/4 heads, head_dim 2^30 + 16 wraps 32-bit products to the shapes of head_dim 16 (q rows 320, qkv rows
        // 448), so a checkpoint of that shape would pass every shape check: the value must be refused on its own.
        var node = JsonNode.Parse(File.ReadAllText(FixturePath("models/tiny-gqa/config.json")))!.AsObject();
        node["num_attention_heads"] = 20;
        node["num_key_value_heads"] = 4;
        node["head_dim"] = 1073741840;
        Assert.That((unchecked(20 * 1073741840), unchecked(28 * 1073741840)), Is.EqualTo((320, 448)), "the crafted value wraps as the issue describes");
        Assert.That(ParseFails(node.ToJsonString()).Message, Is.EqualTo("config.json: 'head_dim' must be an integer from 2 to 1024, got number 1073741840"));
    }

    [Test]
    public void HeadDimFromHiddenOverHeadsIsBoundedToo()
    {
        var node = JsonNode.Parse(QwqJson)!.AsObject();
        node["hidden_size"] = 65536;
        node["num_attention_heads"] = 32;
        node["num_key_value_heads"] = 32;
        Assert.That(ParseFails(node.ToJsonString()).Message, Does.Contain("2048 must be at most 1024"));
    }

    [TestCase("rms_norm_eps", "0", "a number in (0, 1]")]
    [TestCase("rms_norm_eps", "\"1e-5\"", "a number in (0, 1]")]
    [TestCase("rms_norm_eps", "1.5", "a number in (0, 1]")]
    [TestCase("rope_theta", "1", "a finite number greater than 1")]
    [TestCase("rope_theta", "\"Infinity\"", "a finite number greater than 1")]
    [TestCase("rope_theta", "-10000", "a finite number greater than 1")]
    public void FloatsOutOfRangeAreRejectedWithTheRange(string field, string rawValue, string range)
    {
        var e = ParseFails(QwqWithRaw(field, rawValue));
        Assert.That(e.Message, Does.StartWith($"config.json: '{field}' must be {range}, got "));
    }

    [Test]
    public void DerivedSizesAreCheckedEvenForRecordsBuiltInCode()
    {
        // Parse bounds every size; a record built by hand is not parsed, and must not wrap silently either.
        var huge = ModelPresets.Get("qwq-32b") with { HeadDim = 1073741840, NumAttentionHeads = 20, NumKeyValueHeads = 4 };
        Assert.Throws<OverflowException>(() => _ = huge.QkvDim);
        Assert.Throws<OverflowException>(() => _ = huge.ParameterCount);
    }

    [Test]
    public void LargestAllowedConfigHasExactSizes()
    {
        // At every bound at once, the derived sizes still fit and are exact (no silent wrap).
        var node = JsonNode.Parse(QwqJson)!.AsObject();
        node["num_hidden_layers"] = ModelConfig.MaxLayers;
        node["hidden_size"] = ModelConfig.MaxHiddenSize;
        node["intermediate_size"] = ModelConfig.MaxIntermediateSize;
        node["num_attention_heads"] = ModelConfig.MaxHeads;
        node["num_key_value_heads"] = ModelConfig.MaxHeads;
        node["head_dim"] = ModelConfig.MaxHeadDim;
        node["vocab_size"] = ModelConfig.MaxVocabSize;
        node["max_position_embeddings"] = ModelConfig.MaxPositions;
        var c = ModelConfig.Parse(node.ToJsonString(), "c");
        long h = 1L << 16, i = 1L << 20, qkv = 3L << 20, v = 1L << 24;
        long perLayer = h + qkv * h + qkv + h * (1L << 20) + h + 3 * h * i;
        Assert.That(c.QkvDim, Is.EqualTo(qkv));
        Assert.That(c.ParameterCount, Is.EqualTo(2 * v * h + 1024 * perLayer + h));
        Assert.That(c.WeightBytes, Is.EqualTo(2 * c.ParameterCount));
        Assert.That(c.KvBytesPerToken, Is.EqualTo(2L * 1024 * 1024 * 1024 * 2));
    }

    [Test]
    public void YarnBoundsAreChecked()
    {
        var e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "factor": 1e12, "original_max_position_embeddings": 32768}""")));
        Assert.That(e.Message, Does.Contain("'rope_scaling.factor' must be a number in [1, 16777216]"));
        e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "factor": 1024, "original_max_position_embeddings": 32768}""")));
        Assert.That(e.Message, Does.Contain("33554432 positions must be at most 16777216"));
        e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "factor": 4, "beta_slow": -1}""")));
        Assert.That(e.Message, Does.Contain("'rope_scaling.beta_slow' must be a finite number of at least 0"));
        e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "factor": 4, "mscale_all_dim": -10}""")));
        Assert.That(e.Message, Does.Contain("'rope_scaling.mscale_all_dim'"));
    }

    [Test]
    public void DuplicateKeysAreRejected()
    {
        string json = QwqJson.TrimEnd().TrimEnd('}') + ", \"hidden_size\": 4096 }";
        Assert.That(ParseFails(json).Message, Does.Contain("malformed JSON").And.Contain("hidden_size"));
    }

    [Test]
    public void OversizedFileIsRefusedWithoutReadingItAll()
    {
        using var tmp = new Generation.TestModels.TempDir();
        string path = tmp.Combine("config.json");
        using (var f = File.Create(path)) f.SetLength(64L << 20); // sparse: no 64 MiB written
        var e = Assert.Throws<ConfigException>(() => ModelConfig.Load(path))!;
        Assert.That(e.Message, Does.StartWith(path).And.Contain("too large"));
    }

    [Test]
    public void UnsupportedModelTypeIsRejected()
    {
        var e = ParseFails(QwqWith("model_type", JsonValue.Create("llama")));
        Assert.That(e.Message, Does.Contain("'model_type' = \"llama\"").And.Contain("qwen2"));
    }

    [Test]
    public void UnsupportedArchitectureIsRejected()
    {
        var e = ParseFails(QwqWith("architectures", new JsonArray("Qwen2ForSequenceClassification")));
        Assert.That(e.Message, Does.Contain("'architectures'").And.Contain("Qwen2ForCausalLM"));
    }

    [Test]
    public void KvHeadsMustDivideHeads()
    {
        var e = ParseFails(QwqWith("num_key_value_heads", JsonValue.Create(7)));
        Assert.That(e.Message, Is.EqualTo("config.json: 'num_key_value_heads' = 7 must divide 'num_attention_heads' = 40"));
    }

    [Test]
    public void HeadsMustDivideHiddenUnlessHeadDimGiven()
    {
        var e = ParseFails(QwqWith("hidden_size", JsonValue.Create(5001)));
        Assert.That(e.Message, Does.Contain("'num_attention_heads' = 40 must divide 'hidden_size' = 5001"));

        var node = JsonNode.Parse(QwqWith("hidden_size", JsonValue.Create(5001)))!.AsObject();
        node["head_dim"] = 128;
        Assert.That(ModelConfig.Parse(node.ToJsonString(), "c").HeadDim, Is.EqualTo(128));
    }

    [Test]
    public void SlidingWindowIsRejected()
    {
        var e = ParseFails(QwqWith("use_sliding_window", JsonValue.Create(true)));
        Assert.That(e.Message, Does.Contain("'use_sliding_window'"));
    }

    [Test]
    public void OtherActivationIsRejected() =>
        Assert.That(ParseFails(QwqWith("hidden_act", JsonValue.Create("gelu"))).Message, Does.Contain("'hidden_act' = \"gelu\""));

    [Test]
    public void UnsupportedDtypeIsRejected() =>
        Assert.That(ParseFails(QwqWith("torch_dtype", JsonValue.Create("int8"))).Message, Does.Contain("'torch_dtype' = \"int8\""));

    [Test]
    public void MalformedJsonNamesFileAndLine()
    {
        string json = "{\n  \"model_type\": \"qwen2\",\n  \"hidden_size\": 5120\n  \"vocab_size\": 1\n}";
        var e = Assert.Throws<ConfigException>(() => ModelConfig.Parse(json, "/models/x/config.json"))!;
        Assert.That(e.Message, Does.StartWith("/models/x/config.json: malformed JSON at line 4"));
    }

    [Test]
    public void TopLevelMustBeAnObject() =>
        Assert.That(ParseFails("[1, 2]").Message, Does.Contain("expected a JSON object"));

    [Test]
    public void LoadNamesAMissingFile()
    {
        string path = Path.Combine(Path.GetTempPath(), "no-such-dir-qwq", "config.json");
        var e = Assert.Throws<ConfigException>(() => ModelConfig.Load(path))!;
        Assert.That(e.Message, Does.Contain(path));
    }

    [Test]
    public void YarnViaTypeKey()
    {
        var c = ModelConfig.Parse(QwqWith("rope_scaling", JsonNode.Parse(
            """{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}""")), "c");
        Assert.That(c.RopeScaling, Is.EqualTo(new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 32768 }));
    }

    [Test]
    public void YarnViaRopeTypeKeyWithOptionalFields()
    {
        var c = ModelConfig.Parse(QwqWith("rope_scaling", JsonNode.Parse(
            """{"rope_type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 16, "beta_slow": 2, "mscale": 1.0, "mscale_all_dim": 0.8, "attention_factor": 1.1, "truncate": false}""")), "c");
        Assert.That(c.RopeScaling, Is.EqualTo(new RopeScaling
        {
            Factor = 40, OriginalMaxPositionEmbeddings = 4096, BetaFast = 16, BetaSlow = 2,
            Mscale = 1.0, MscaleAllDim = 0.8, AttentionFactor = 1.1, Truncate = false,
        }));
    }

    [Test]
    public void YarnOriginalLengthDefaultsToMaxPositions()
    {
        var c = ModelConfig.Parse(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "factor": 2}""")), "c");
        Assert.That(c.RopeScaling!.OriginalMaxPositionEmbeddings, Is.EqualTo(40960));
    }

    [Test]
    public void YarnMissingFactorIsNamed()
    {
        var e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"type": "yarn", "original_max_position_embeddings": 32768}""")));
        Assert.That(e.Message, Is.EqualTo("config.json: required field 'rope_scaling.factor' is missing"));
    }

    [Test]
    public void OtherRopeScalingIsRejected()
    {
        var e = ParseFails(QwqWith("rope_scaling", JsonNode.Parse("""{"rope_type": "llama3", "factor": 8}""")));
        Assert.That(e.Message, Does.Contain("'rope_scaling.rope_type' = \"llama3\"").And.Contain("yarn"));
    }

    [Test]
    public void NullRopeScalingMeansNone() =>
        Assert.That(ModelConfig.Parse(QwqWith("rope_scaling", null), "c").RopeScaling, Is.Null);

    [Test]
    public void Transformers5Layout()
    {
        var node = JsonNode.Parse(QwqJson)!.AsObject();
        node.Remove("rope_theta");
        node.Remove("torch_dtype");
        node["dtype"] = "float32";
        node["rope_parameters"] = JsonNode.Parse(
            """{"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32768}""");
        var c = ModelConfig.Parse(node.ToJsonString(), "c");
        Assert.Multiple(() =>
        {
            Assert.That(c.RopeTheta, Is.EqualTo(10000.0));
            Assert.That(c.TorchDtype, Is.EqualTo("float32"));
            Assert.That(c.RopeScaling!.Factor, Is.EqualTo(4.0));
        });

        node["rope_parameters"] = JsonNode.Parse("""{"rope_type": "default", "rope_theta": 1000000.0}""");
        Assert.That(ModelConfig.Parse(node.ToJsonString(), "c").RopeScaling, Is.Null);
    }
}

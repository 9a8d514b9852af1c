using System.Text.Json;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--quantize none|fp8|int4</c>: parsed by member name in any case, bound into the engine options, and on the CPU
/// reference (no GPU needed) either run or refused with one clean message.
/// </summary>
public class QuantizeCliTests
{
    private static QuantizeMode Bind(params string[] args) => ModelFlags.Engine(args).Quantize;

    [TestCase("int4", QuantizeMode.Int4)]
    [TestCase("INT4", QuantizeMode.Int4)]
    [TestCase("Int4", QuantizeMode.Int4)]
    [TestCase("fp8", QuantizeMode.Fp8)]
    [TestCase("none", QuantizeMode.None)]
    public void ParsesEveryModeInAnyCase(string value, QuantizeMode mode) => Assert.That(Bind("--quantize", value), Is.EqualTo(mode));

    [Test]
    public void DefaultsToNone() => Assert.That(Bind(), Is.EqualTo(QuantizeMode.None));

    [TestCase("int8")]
    [TestCase("4")]
    [TestCase("awq")]
    public void AnythingElseIsAParseErrorNamingTheModes(string value)
    {
        Assert.That(ModelFlags.Errors("--quantize", value), Has.One.Contains($"--quantize expects one of none, fp8, int4, got '{value}'"));
    }

    [Test]
    public async Task HelpMentionsInt4()
    {
        foreach (var command in new[] { "generate", "bench" })
        {
            var r = await CliTests.Qwq(command, "--help");
            Assert.That(r.ExitCode, Is.Zero, r.Err);
            Assert.That(r.Out, Does.Contain("--quantize").And.Contain("Int4"), command);
        }
    }

    [Test]
    public async Task Int4OnAModelWhoseSizesTheGroupDoesNotDivideIsOneCleanError()
    {
        // tiny-chat: hidden 64
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--quantize", "int4", "--prompt", "Hello", "--max-tokens", "2");
        Assert.That(r.ExitCode, Is.EqualTo(ExitCodes.Usage), r.Err);
        Assert.That(r.Err.Split('\n').Count(l => l.StartsWith("error:", StringComparison.Ordinal)), Is.EqualTo(1), r.Err);
        Assert.That(r.Err, Does.Contain("multiple of its group size, 128").And.Contain("one of 64").And.Not.Contain("   at "));
        Assert.That(r.Out, Is.Empty);
    }

    [Test]
    public async Task Int4GeneratesOnTheCpuReference()
    {
        // tiny-chat's tokenizer and generation config over random weights whose input sizes are multiples of 128.
        const string configJson = """
            {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":128,"intermediate_size":256,
             "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":512,
             "rms_norm_eps":1e-6,"rope_theta":1000000.0,"max_position_embeddings":512,"tie_word_embeddings":false,
             "torch_dtype":"bfloat16"}
            """;
        var config = ModelConfig.Parse(configJson, "config.json");
        using var tmp = new TestModels.TempDir();
        File.WriteAllText(Path.Combine(tmp.Path, "config.json"), configJson);
        TestModels.WriteSafetensors(Path.Combine(tmp.Path, "model.safetensors"), config, CpuWeights.Random(config, 4));
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            File.Copy(Path.Combine(TinyChatFixtureTests.Dir, f), Path.Combine(tmp.Path, f));

        var r = await CliTests.Qwq("generate", "--model", tmp.Path, "--backend", "cpu", "--quantize", "int4", "--prompt", "Hello",
            "--temperature", "0", "--max-tokens", "4", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        using var done = JsonDocument.Parse(lines[^1]);
        Assert.That(done.RootElement.GetProperty("type").GetString(), Is.EqualTo("done"), r.Out);
        Assert.That(done.RootElement.GetProperty("usage").GetProperty("generated_tokens").GetInt32(), Is.InRange(1, 4));
    }
}

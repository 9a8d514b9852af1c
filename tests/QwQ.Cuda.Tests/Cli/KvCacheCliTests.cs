using System.CommandLine;
using System.Text.Json;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--kv-cache bf16|fp8</c>: parsed by name in any case, bound into the engine options on every command that loads a
/// model, run by the CPU reference and taken by the GPU engine (whose runs are Engine/Fp8KvCacheGpuTests), and planned
/// for by <c>qwq info</c>: about half the bytes per position, so about twice the positions in the same memory.
/// </summary>
public class KvCacheCliTests
{
    private static KvCacheKind Bind(params string[] args) => ModelFlags.Engine(args).KvCache;

    [TestCase("fp8", KvCacheKind.Fp8)]
    [TestCase("FP8", KvCacheKind.Fp8)]
    [TestCase("bf16", KvCacheKind.Bf16)]
    [TestCase("Bf16", KvCacheKind.Bf16)]
    public void ParsesBothKindsInAnyCase(string value, KvCacheKind kind) => Assert.That(Bind("--kv-cache", value), Is.EqualTo(kind));

    [Test]
    public void DefaultsToBf16()
    {
        Assert.That(Bind(), Is.EqualTo(KvCacheKind.Bf16));
        Assert.That(new EngineOptions().KvCache, Is.EqualTo(KvCacheKind.Bf16));
    }

    [TestCase("fp16")]
    [TestCase("int8")]
    [TestCase("8")]
    [TestCase("e4m3")]
    public void AnythingElseIsAParseErrorNamingTheKinds(string value)
    {
        Assert.That(ModelFlags.Errors("--kv-cache", value), Has.One.EqualTo($"--kv-cache expects one of bf16, fp8, got '{value}'"));
    }

    [Test]
    public async Task AnInvalidValueIsOneCleanErrorOnTheCommandLine()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--kv-cache", "fp16",
            "--prompt", "Hi", "--max-tokens", "1");
        Assert.That(r.ExitCode, Is.Not.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("--kv-cache expects one of bf16, fp8, got 'fp16'").And.Not.Contain("   at "));
        Assert.That(r.Out, Is.Empty);
    }

    [Test]
    public void EveryCommandThatLoadsAModelTakesIt()
    {
        var root = CliApp.CreateRootCommand(new CliHost(TextWriter.Null, TextWriter.Null));
        foreach (var name in new[] { "generate", "chat", "serve", "eval", "bench" })
        {
            var command = root.Subcommands.Single(c => c.Name == name);
            Assert.That(command.Options.Select(o => o.Name), Does.Contain("--kv-cache"), name);
        }
    }

    [TestCase("generate")]
    [TestCase("bench")]
    public async Task TheGpuEngineNoLongerRefusesFp8(string command)
    {
        // Without a GPU, fp8 gets exactly as far as bf16: to the missing device, not to a refusal of the option. (With one,
        // these would load a full synthetic QwQ-32B; the GPU engine's fp8 runs are Engine/Fp8KvCacheGpuTests.)
        if (global::QwQ.Cuda.Native.Cuda.IsAvailable(out _)) Assert.Ignore("would load a full synthetic QwQ-32B on this GPU; see Fp8KvCacheGpuTests");
        string[] Args(string kv) => command == "generate"
            ? ["generate", "--synthetic", "qwq-32b", "--tokenizer", TinyChatFixtureTests.Dir, "--kv-cache", kv, "--prompt", "Hi", "--max-tokens", "1"]
            : ["bench", "--synthetic", "qwq-32b", "--kv-cache", kv];
        var fp8 = await CliTests.Qwq(Args("fp8"));
        var bf16 = await CliTests.Qwq(Args("bf16"));
        Assert.That(fp8.ExitCode, Is.EqualTo(ExitCodes.Error), fp8.Err);
        Assert.That(fp8.Err, Does.Not.Contain("CPU reference only"));
        Assert.That((fp8.ExitCode, fp8.Err, fp8.Out), Is.EqualTo((bf16.ExitCode, bf16.Err, bf16.Out)));
    }

    [Test]
    public async Task InfoPlansAboutTwiceThePositionsWithFp8()
    {
        // For an 80 GB card (no GPU needed): per position 64 layers × 2 × 8 heads × (128 + 4) bytes against × 128 × 2.
        async Task<JsonDocument> Info(string kv)
        {
            var r = await CliTests.Qwq("info", "--synthetic", "qwq-32b", "--json", "--gpu-memory", "80GB", "--kv-cache", kv);
            Assert.That(r.ExitCode, Is.Zero, r.Err);
            return JsonDocument.Parse(r.Out);
        }
        using var fp8 = await Info("fp8");
        using var bf16 = await Info("bf16");
        Assert.That(fp8.RootElement.GetProperty("kv_cache").GetString(), Is.EqualTo("fp8"));
        Assert.That(fp8.RootElement.GetProperty("kv_bytes_per_token").GetInt64(), Is.EqualTo(64L * 2 * 8 * (128 + 4)));
        Assert.That(bf16.RootElement.GetProperty("kv_bytes_per_token").GetInt64(), Is.EqualTo(64L * 2 * 8 * 128 * 2));
        var fp8Rows = fp8.RootElement.GetProperty("memory")[0].GetProperty("rows").EnumerateArray().ToArray();
        var bf16Rows = bf16.RootElement.GetProperty("memory")[0].GetProperty("rows").EnumerateArray().ToArray();
        Assert.That(fp8Rows.Select(r => r.GetProperty("kind").GetString()), Is.EqualTo(bf16Rows.Select(r => r.GetProperty("kind").GetString())));
        for (int i = 0; i < fp8Rows.Length; i++)
        {
            string kind = fp8Rows[i].GetProperty("kind").GetString()!;
            Assert.That(fp8Rows[i].GetProperty("kv_bytes_per_token").GetInt64(), Is.EqualTo(135_168), kind);
            if (!bf16Rows[i].GetProperty("fits").GetBoolean()) continue;
            double ratio = (double)fp8Rows[i].GetProperty("kv_pool_positions").GetInt64() / bf16Rows[i].GetProperty("kv_pool_positions").GetInt64();
            TestContext.Out.WriteLine($"{kind}: fp8 pool / bf16 pool = {ratio:F3}");
            Assert.That(ratio, Is.InRange(1.9, 4096.0 / 2112 + 0.01), kind); // the same bytes over 2112 instead of 4096 per position and layer
        }
    }

    [Test]
    public async Task Fp8GeneratesOnTheCpuReference()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--kv-cache", "fp8",
            "--prompt", "Hello", "--temperature", "0", "--max-tokens", "4", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        using var done = JsonDocument.Parse(lines[^1]);
        Assert.That(done.RootElement.GetProperty("type").GetString(), Is.EqualTo("done"), r.Out);
        Assert.That(done.RootElement.GetProperty("usage").GetProperty("generated_tokens").GetInt32(), Is.InRange(1, 4));
    }
}

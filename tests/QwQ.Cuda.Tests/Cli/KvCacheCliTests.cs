using System.CommandLine;
using System.Text.Json;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--kv-cache bf16|fp8</c>: parsed by name in any case, bound into the engine options on every command that loads a
/// model, run by the CPU reference, and refused by the GPU engine with one clean message (no GPU needed: the check runs
/// before CUDA is touched).
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
        Assert.That(ModelFlags.Errors("--kv-cache", value), Has.One.EqualTo($"--kv-cache expects one of Bf16, Fp8, got '{value}'"));
    }

    [Test]
    public async Task AnInvalidValueIsOneCleanErrorOnTheCommandLine()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--kv-cache", "fp16",
            "--prompt", "Hi", "--max-tokens", "1");
        Assert.That(r.ExitCode, Is.Not.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("--kv-cache expects one of Bf16, Fp8, got 'fp16'").And.Not.Contain("   at "));
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
    public async Task TheGpuEngineRefusesFp8(string command)
    {
        string[] args = command == "generate"
            ? ["generate", "--synthetic", "qwq-32b", "--tokenizer", TinyChatFixtureTests.Dir, "--kv-cache", "fp8", "--prompt", "Hi", "--max-tokens", "1"]
            : ["bench", "--synthetic", "qwq-32b", "--kv-cache", "fp8"];
        var r = await CliTests.Qwq(args);
        Assert.That(r.ExitCode, Is.EqualTo(ExitCodes.Usage), r.Err);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines.Count(l => l.StartsWith("error:", StringComparison.Ordinal)), Is.EqualTo(1), r.Err);
        Assert.That(r.Err, Does.Contain("--kv-cache fp8 runs on the CPU reference only for now; use bf16 (the default)"));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace without --verbose");
        Assert.That(r.Out, Is.Empty);
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

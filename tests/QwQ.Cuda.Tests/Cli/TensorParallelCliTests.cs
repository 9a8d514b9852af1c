using System.CommandLine;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--tensor-parallel N</c>: bound on every command that loads a model, checked against the model's heads, the
/// checkpoint and the GPUs there are, with one clean message for whatever cannot run (never a silent single-GPU run).
/// No GPU needed: the checks run before CUDA is touched, or are about too few GPUs.
/// </summary>
public class TensorParallelCliTests
{
    // tiny-chat: 4 query / 2 KV heads, intermediate 128: N ∈ {1, 2}
    private static string Model => TinyChatFixtureTests.Dir;

    private static void AssertOneCleanError(CliTests.Result r, int exitCode, params string[] fragments)
    {
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.Err);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines.Count(l => l.StartsWith("error:", StringComparison.Ordinal)), Is.EqualTo(1), r.Err);
        foreach (var f in fragments) Assert.That(r.Err, Does.Contain(f));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace without --verbose");
        Assert.That(r.Out, Is.Empty, "nothing generated");
    }

    private static Task<CliTests.Result> Generate(params string[] more) =>
        CliTests.Qwq(["generate", "--model", Model, "--prompt", "Hello", "--max-tokens", "2", .. more]);

    [Test]
    public async Task MoreGpusThanThereAreIsOneCleanError()
    {
        bool cuda = QwQ.Cuda.Native.Cuda.IsAvailable(out _);
        if (cuda && QwQ.Cuda.Native.Cuda.DeviceCount >= 2) Assert.Ignore("this machine has the 2 GPUs: the run would go ahead (TensorParallelEngineTests)");
        var r = await Generate("--tensor-parallel", "2");
        if (cuda) AssertOneCleanError(r, ExitCodes.Error, "--tensor-parallel 2", "needs devices 0..1, and 1 are visible", "--tensor-parallel 1");
        else AssertOneCleanError(r, ExitCodes.Error, "NVIDIA");
    }

    [TestCase("tiny-fp8")]
    [TestCase("tiny-awq")]
    public void APreQuantizedCheckpointWhoseShardsTheKernelsCannotTakeIsRefusedBeforeAnyGpuWork(string model)
    {
        // both halve o_proj's 320 inputs to 160 per GPU: not whole fp8 chunks of 64, not whole AWQ groups of 64
        string dir = TestModels.GoldenModelDir(model);
        var e = Assert.Throws<OptionException>(() => CudaBackend.Load(ModelConfig.Load(Path.Combine(dir, "config.json")), dir, new EngineOptions { TensorParallel = 2 }))!;
        Assert.That(e.Message, Does.Contain("--tensor-parallel 2").And.Contain("this checkpoint's quantization").And.Contain("use fewer GPUs"));
    }

    [Test]
    public void AQuantizedKindTheShardsCannotTakeIsRefusedBeforeAnyGpuWork()
    {
        // tiny-gqa's 320-wide o_proj input (5 fp8 chunks of 64) halves to 160 per GPU: not whole chunks
        string dir = TestModels.GoldenModelDir("tiny-gqa");
        var options = new EngineOptions { TensorParallel = 2, Quantize = QuantizeMode.Fp8 };
        var e = Assert.Throws<OptionException>(() => CudaBackend.Load(ModelConfig.Load(Path.Combine(dir, "config.json")), dir, options))!;
        Assert.That(e.Message, Does.Contain("--tensor-parallel 2").And.Contain("--quantize fp8").And.Contain("use fewer GPUs"));
    }

    [Test]
    public async Task ASizeTheKvHeadsDoNotAllowNamesTheConstraint()
    {
        var r = await Generate("--tensor-parallel", "4");
        AssertOneCleanError(r, ExitCodes.Usage, "--tensor-parallel 4", "2 key/value heads", "valid sizes for this model: 1, 2");
    }

    [TestCase("0")]
    [TestCase("-1")]
    public async Task BelowOneIsRefused(string value)
    {
        var r = await Generate("--tensor-parallel", value);
        AssertOneCleanError(r, ExitCodes.Usage, $"--tensor-parallel {value} must be at least 1");
    }

    [Test]
    public async Task NotANumberIsAParseError()
    {
        var r = await Generate("--tensor-parallel", "two");
        AssertOneCleanError(r, ExitCodes.Usage, "--tensor-parallel expects a whole number");
    }

    [Test]
    public async Task TheCpuReferenceRunsOnOneDevice()
    {
        var r = await Generate("--backend", "cpu", "--tensor-parallel", "2");
        AssertOneCleanError(r, ExitCodes.Usage, "--tensor-parallel 2", "CPU reference backend runs on one device");
    }

    [Test]
    public async Task OneIsTheDefaultAndRuns()
    {
        var r = await Generate("--backend", "cpu", "--tensor-parallel", "1", "--temperature", "0");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
    }

    [Test]
    public async Task BenchRefusesASizeTheModelCannotTake()
    {
        var r = await CliTests.Qwq("bench", "--synthetic", "qwq-32b", "--tensor-parallel", "3");
        AssertOneCleanError(r, ExitCodes.Usage, "--tensor-parallel 3", "8 key/value heads", "1, 2, 4, 8");
    }

    [Test]
    public async Task InfoPlansEachGpuOfTheSplit()
    {
        // QwQ-32B with YaRN in bf16: 131,072 positions do not fit one 80 GB card beside 61 GiB of weights; on two, each
        // holds half the layers' weights and half the KV heads, and they do.
        var one = await CliTests.Qwq("info", "--synthetic", "qwq-32b-yarn", "--gpu-memory", "80GB");
        var two = await CliTests.Qwq("info", "--synthetic", "qwq-32b-yarn", "--gpu-memory", "80GB", "--tensor-parallel", "2");
        Assert.That(one.ExitCode, Is.Zero, one.Err);
        Assert.That(two.ExitCode, Is.Zero, two.Err);
        string Bf16Row(string text) => text.Split('\n').Single(l => l.TrimStart().StartsWith("bf16", StringComparison.Ordinal));
        Assert.That(Bf16Row(one.Out), Does.Not.Contain("131,072 tokens"));
        Assert.That(two.Out, Does.Contain("2 × 80GB card").And.Contain("on each of 2 GPUs").And.Contain("128 KiB on each of 2 GPUs"));
        Assert.That(Bf16Row(two.Out), Does.Contain("131,072 tokens"));
    }

    [Test]
    public async Task InfoJsonGivesPerGpuFigures()
    {
        var one = await CliTests.Qwq("info", "--synthetic", "qwq-32b", "--gpu-memory", "80GB", "--json");
        var four = await CliTests.Qwq("info", "--synthetic", "qwq-32b", "--gpu-memory", "80GB", "--json", "--tensor-parallel", "4");
        using var a = System.Text.Json.JsonDocument.Parse(one.Out);
        using var b = System.Text.Json.JsonDocument.Parse(four.Out);
        Assert.That(b.RootElement.GetProperty("tensor_parallel").GetInt32(), Is.EqualTo(4));
        long whole = a.RootElement.GetProperty("device_weight_bytes").GetProperty("bf16").GetInt64();
        long each = b.RootElement.GetProperty("device_weight_bytes").GetProperty("bf16").GetInt64();
        long embedding = 2L * 152064 * 5120; // replicated on every GPU
        Assert.That(each, Is.EqualTo((whole - embedding) / 4.0 + embedding).Within(0.01 * whole), "a quarter of the rest, and the whole embedding");
    }

    [Test]
    public async Task InfoRefusesASizeTheModelCannotTake()
    {
        var r = await CliTests.Qwq("info", "--synthetic", "qwq-32b", "--tensor-parallel", "3");
        AssertOneCleanError(r, ExitCodes.Usage, "--tensor-parallel 3", "1, 2, 4, 8");
    }

    [Test]
    public void EveryCommandThatLoadsAModelTakesIt()
    {
        var root = CliApp.CreateRootCommand(new CliHost(TextWriter.Null, TextWriter.Null));
        foreach (var name in new[] { "generate", "chat", "serve", "eval", "bench", "info" })
        {
            var command = root.Subcommands.Single(c => c.Name == name);
            Assert.That(command.Options.Select(o => o.Name), Does.Contain("--tensor-parallel"), name);
        }
    }

    [Test]
    public void TheFlagBindsToTheEngineOptions()
    {
        Assert.That(ModelFlags.Engine().TensorParallel, Is.EqualTo(1));
        Assert.That(ModelFlags.Engine("--tensor-parallel", "4").TensorParallel, Is.EqualTo(4));
        Assert.That(ModelFlags.Engine().AllReduce, Is.EqualTo(AllReduceKind.Custom));
        Assert.That(ModelFlags.Engine("--allreduce", "nccl").AllReduce, Is.EqualTo(AllReduceKind.Nccl));
        Assert.That(ModelFlags.Errors("--allreduce", "ring"), Has.One.Contains("--allreduce expects one of custom, nccl"));
        Assert.That(new EngineOptions().TensorParallel, Is.EqualTo(1));
    }

    // ---- the library gate, without the CLI ------------------------------------------------------------------------

    [Test]
    public void EveryBackendLoadGoesThroughTheGate()
    {
        var config = ModelPresets.Get("qwq-32b");
        var two = new EngineOptions { TensorParallel = 2 };
        // the GPU engine takes any valid size; the CPU reference is refused before any weight, tokenizer or GPU is touched
        Assert.DoesNotThrow(() => TensorParallelSupport.EnsureSupported(config, two, BackendKind.Cuda));
        var cpu = Assert.Throws<OptionException>(() => BackendFactory.Create(BackendKind.Cpu, config, null, two, config.VocabSize, null, default))!;
        Assert.That(cpu.Message, Does.Contain("CPU reference backend runs on one device"));

        Assert.DoesNotThrow(() => TensorParallelSupport.EnsureSupported(config, new EngineOptions(), BackendKind.Cuda));
        Assert.That(Assert.Throws<OptionException>(() => TensorParallelSupport.EnsureSupported(config, new EngineOptions { TensorParallel = 6 }, BackendKind.Cuda))!
            .Message, Does.Contain("--tensor-parallel 6 must divide the model's 8 key/value heads"));
    }
}

using QwQ.Cuda.Batching;
using QwQ.Cuda.Benchmarking;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Engine;

namespace QwQ.Cuda.Tests.Benchmarking;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>The kernel-by-kernel step profile of <c>qwq bench --profile-step</c>: its summary (CPU) and its timer (GPU).</summary>
public class StepProfileTests
{
    [Test]
    public void SummaryGroupsByKernelAndGridAndSeparatesKernelTimeFromTheSpan()
    {
        LaunchTimer.Launch[][] launches =
        [
            [
                new("gemv_bf16", new Dim3(224), 0f, 10f),
                new("rmsnorm", new Dim3(1), 12f, 2f),
                new("gemv_bf16", new Dim3(640), 15f, 8f),
                new("gemv_bf16", new Dim3(224), 30f, 12f),
            ],
            [new("gemv_bf16", new Dim3(224), 0f, 5f)],
            [],
        ];
        var p = StepProfile.Summarize(1, 1024, 7.5, launches);
        Assert.That(p.Gpus, Has.Count.EqualTo(3));
        var g0 = p.Gpus[0];
        Assert.That(g0.SpanUs, Is.EqualTo(42).Within(1e-9), "first start to last end");
        Assert.That(g0.KernelUs, Is.EqualTo(32).Within(1e-9));
        Assert.That(g0.Kernels.Select(k => (k.Kernel, k.Launches, k.TotalUs)), Is.EqualTo(new[]
        {
            ("gemv_bf16 (224,1,1)", 2, 22.0), ("gemv_bf16 (640,1,1)", 1, 8.0), ("rmsnorm (1,1,1)", 1, 2.0),
        }), "by grid, most time first");
        Assert.That(g0.Kernels[0].MeanUs, Is.EqualTo(11).Within(1e-9));
        Assert.That(p.Gpus[2].SpanUs, Is.Zero);
        Assert.That(p.Gpus[2].Kernels, Is.Empty);
    }

    [Test]
    public void TheMarkdownReportShowsEachGpusKernels()
    {
        var profile = StepProfile.Summarize(1, 1024, 7.5, [[new("gemv_bf16", new Dim3(224), 0f, 10f)]]);
        var report = new BenchReport("2026-11-28", "H100", "abc", "model", 1, 2048,
            new DeviceCeilings(3e12, 7.6e14), [], [], null, new TtftResult(64, 20), [], Profile: profile);
        string md = BenchOutput.ToMarkdown(report);
        Assert.That(md, Does.Contain("Graph replay: 7.50 ms"));
        Assert.That(md, Does.Contain("| gemv_bf16 (224,1,1) | 1 | 10 | 10.0 |"));
        Assert.That(BenchOutput.ToJson(report), Does.Contain("\"span_us\""));
    }

    // Every figure is reported against its floor; time to first token had none (floor_ms null in the JSON).
    [Test]
    public void TimeToFirstTokenIsReportedAgainstItsFloor()
    {
        BenchReport Report(TtftResult ttft) => new("2026-11-29", "H100", "abc", "model", 1, 2048,
            new DeviceCeilings(3e12, 7.6e14), [], [], null, ttft, []);
        Assert.That(BenchOutput.ToMarkdown(Report(new TtftResult(64, 25, 20))),
            Does.Contain("Time to first token, 64-token prompt: 25.0 ms (floor 20.0 ms: the weights read once, 80%)."));
        Assert.That(BenchOutput.ToMarkdown(Report(new TtftResult(64, 25))), Does.Contain("64-token prompt: 25.0 ms.").And.Not.Contain("floor 0"),
            "a result written before the floor was measured");
    }

    [Test]
    public void TheReportShowsTheBatchedStepsProfileAfterTheBatchOneProfile()
    {
        var one = StepProfile.Summarize(1, 1024, 7.5, [[new("gemv_bf16", new Dim3(224), 0f, 10f)]]);
        var many = StepProfile.Summarize(32, 1024, 24.7, [[new("gemv_tc_fp8_n32", new Dim3(80, 8), 0f, 40f), new("gemv_tc_fp8_n32", new Dim3(80, 8), 50f, 44f)]]);
        var report = new BenchReport("2026-11-28", "H200", "abc", "model", 1, 2048,
            new DeviceCeilings(4e12, 7.8e14), [], [], null, new TtftResult(64, 20), [], Profile: one, BatchProfile: many);
        string md = BenchOutput.ToMarkdown(report);
        int first = md.IndexOf("(batch 1)", StringComparison.Ordinal), second = md.IndexOf("(batch 32)", StringComparison.Ordinal);
        Assert.That(first, Is.GreaterThan(0), md);
        Assert.That(second, Is.GreaterThan(first), "batch 1 first, then the batched step");
        Assert.That(md, Does.Contain("Graph replay: 24.70 ms"));
        Assert.That(md, Does.Contain("| gemv_tc_fp8_n32 (80,8,1) | 2 | 84 | 42.0 |"));
        string json = BenchOutput.ToJson(report);
        Assert.That(json, Does.Contain("\"batch_profile\"").And.Contain("\"batch\": 32"));
    }

    [Test]
    public void APrefillProfileGroupsByKernelNameAcrossGridsAndCublasProductsAndComesFirstInTheReport()
    {
        var prefill = StepProfile.Summarize(1, 0, 1800.0,
        [[
            new("cublasGemmEx", new Dim3(4096, 55296, 5120), 0f, 1200f),
            new("attention_prefill_paged_bf16_d128_sm90a", new Dim3(40, 64, 1), 1300f, 400f),
            new("cublasGemmEx", new Dim3(4096, 7168, 5120), 1700f, 150f),
            new("rmsnorm", new Dim3(4096), 1900f, 30f),
        ]], prefillTokens: 16384);
        Assert.That(prefill.PrefillTokens, Is.EqualTo(16384));
        Assert.That(prefill.ByKernel().Select(k => (k.Kernel, k.Launches, k.TotalUs)), Is.EqualTo(new[]
        {
            ("cublasGemmEx", 2, 1350.0), ("attention_prefill_paged_bf16_d128_sm90a", 1, 400.0), ("rmsnorm", 1, 30.0),
        }), "every grid of one kernel together, most time first");
        var decode = StepProfile.Summarize(1, 1024, 7.5, [[new("gemv_bf16", new Dim3(224), 0f, 10f)]]);
        var report = new BenchReport("2026-11-28", "H200", "abc", "model", 1, 2048,
            new DeviceCeilings(4e12, 7.8e14), [], [], null, new TtftResult(64, 20), [], Profile: decode, PrefillProfile: prefill);
        string md = BenchOutput.ToMarkdown(report);
        int p = md.IndexOf("One prefill of 16384 tokens", StringComparison.Ordinal), d = md.IndexOf("One decode step", StringComparison.Ordinal);
        Assert.That(p, Is.GreaterThan(0), md);
        Assert.That(d, Is.GreaterThan(p), "the prefill profile first, then the decode step");
        Assert.That(md, Does.Contain("| cublasGemmEx | 2 | 1.35 | 675.0 |"));
        Assert.That(BenchOutput.ToJson(report), Does.Contain("\"prefill_profile\"").And.Contain("\"prefill_tokens\": 16384"));
    }

    private static readonly ModelConfig Tiny = ModelConfig.Parse(CudaModelTests.TinyConfigJson(), "config.json");

    [Test]
    public void AProfiledStepTimesEveryKernelAndLeavesTheSequenceAsAPlainStepWould()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        using var backend = CudaBackend.Load(Tiny, null, new EngineOptions { KvPoolPositions = 8192 });
        var greedy = new SamplingOptions { Temperature = 0 };
        int[] prompt = Enumerable.Range(0, 100).Select(i => i * 7 % Tiny.VocabSize).ToArray();
        using var profiled = backend.CreateSequence();
        using var plain = backend.CreateSequence();
        profiled.Append(prompt);
        plain.Append(prompt);
        int token = profiled.Sample(greedy, 0);

        var launches = backend.ProfileStep([new SequenceChunk(profiled, new[] { token })]);
        plain.Append([token]);

        Assert.That(launches, Has.Length.EqualTo(1));
        var kernels = launches[0].Select(l => l.Kernel).ToHashSet();
        // per layer: the norm, the products, rope, attention (split and combine), the activation
        Assert.That(launches[0], Has.Length.GreaterThanOrEqualTo(2 * 8));
        Assert.That(kernels, Does.Contain("residual_add_rmsnorm_f32_bf16").And.Contain("qkv_bias_rope_paged_f32_bf16").And.Contain("silu_mul_f32_bf16"));
        Assert.That(launches[0].Select(l => l.Us), Has.All.GreaterThan(0f).And.All.LessThan(1e6f));
        Assert.That(launches[0].Select(l => l.StartUs), Is.Ordered, "in launch order");
        var a = new float[Tiny.VocabSize];
        var b = new float[Tiny.VocabSize];
        profiled.CopyLastLogits(a);
        plain.CopyLastLogits(b);
        Assert.That(a, Is.EqualTo(b), "the profiled step computes what a plain step does");
    }

    // Two rows: a batch size the decode graphs are captured for, so the plain step replays the same kernels unpadded.
    [Test]
    public void AProfiledBatchedStepGivesEverySequenceWhatAPlainBatchedStepWould()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        using var backend = CudaBackend.Load(Tiny, null, new EngineOptions { KvPoolPositions = 8192 });
        var greedy = new SamplingOptions { Temperature = 0 };
        var profiled = Enumerable.Range(0, 2).Select(_ => backend.CreateSequence()).ToArray();
        var plain = Enumerable.Range(0, 2).Select(_ => backend.CreateSequence()).ToArray();
        try
        {
            var tokens = new int[2];
            for (int s = 0; s < 2; s++)
            {
                int[] prompt = Enumerable.Range(0, 40 + 17 * s).Select(i => (i * 7 + s) % Tiny.VocabSize).ToArray();
                profiled[s].Append(prompt);
                plain[s].Append(prompt);
                tokens[s] = profiled[s].Sample(greedy, 0);
            }

            var launches = backend.ProfileStep(profiled.Select((q, s) => new SequenceChunk(q, new[] { tokens[s] })).ToArray());
            backend.Step(plain.Select((q, s) => new SequenceChunk(q, new[] { tokens[s] })).ToArray());

            Assert.That(launches, Has.Length.EqualTo(1));
            Assert.That(launches[0], Has.Length.GreaterThanOrEqualTo(2 * 8));
            Assert.That(launches[0].Select(l => l.Us), Has.All.GreaterThan(0f).And.All.LessThan(1e6f));
            var a = new float[Tiny.VocabSize];
            var b = new float[Tiny.VocabSize];
            for (int s = 0; s < 2; s++)
            {
                profiled[s].CopyLastLogits(a);
                plain[s].CopyLastLogits(b);
                Assert.That(a, Is.EqualTo(b), $"sequence {s}: the profiled batched step computes what a plain one does");
            }
        }
        finally
        {
            foreach (var q in profiled.Concat(plain)) q.Dispose();
        }
    }
}

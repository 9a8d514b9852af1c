using System.Reflection;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Sampling.SamplingTestUtil;

namespace QwQ.Cuda.Tests.Sampling;

/// <summary>Kernel names exist in the embedded PTX (CPU only).</summary>
public class GpuSamplerKernelEntryTests
{
    [Test]
    public void KernelEntriesArePresentInEmbeddedPtx()
    {
        var entries = PtxLibrary.EmbeddedEntries();
        var names = typeof(GpuSampler).GetFields(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)
            .Where(f => f.IsDefined(typeof(KernelEntryAttribute)))
            .Select(f => (string)f.GetRawConstantValue()!)
            .ToList();
        Assert.That(names, Has.Count.EqualTo(8));
        foreach (var n in names) Assert.That(entries, Does.Contain(n));
    }
}

/// <summary>GPU sampler against the CPU reference: identical filtered distributions and tokens. Needs a GPU.</summary>
[NonParallelizable]
public class GpuSamplerTests
{
    private CudaContext? ctx;
    private PtxLibrary? lib;
    private CudaStream? stream;

    [OneTimeSetUp]
    public void Init()
    {
        if (!QwQ.Cuda.Native.Cuda.IsAvailable(out _)) return;
        ctx = CudaContext.Create();
        lib = PtxLibrary.Load(ctx);
        stream = CudaStream.Create();
    }

    [OneTimeTearDown]
    public void Done()
    {
        stream?.Dispose();
        lib?.Dispose();
        ctx?.Dispose();
    }

    [SetUp]
    public void RequireGpu()
    {
        if (ctx is null) Assert.Ignore("no CUDA device");
        ctx.MakeCurrent();
    }

    private CudaStream S => stream!;

    private GpuSampler NewGpu(ulong seed = 1) => new(lib!, VocabRows, ValidVocab, seed);

    private static CpuSampler NewCpu(ulong seed = 1) => new(VocabRows, ValidVocab, seed);

    private static IEnumerable<(string Name, float[] Logits)> LogitSets()
    {
        yield return ("concentrated", ConcentratedLogits(1));
        yield return ("gaussian1", GaussianLogits(2, 1f));   // nearly the whole vocabulary is a candidate
        yield return ("gaussian3", GaussianLogits(3, 3f));
        var ties = GaussianLogits(4, 2f);                     // many exact ties: radix select on equal keys
        for (int i = 0; i < ties.Length; i++) ties[i] = MathF.Round(ties[i] * 2f) / 2f;
        yield return ("ties", ties);
        var padded = ConcentratedLogits(5);                   // padded rows hold the largest logits
        yield return ("padded", padded);
    }

    private static IEnumerable<SamplingOptions> OptionSets()
    {
        yield return new() { Temperature = 1f };
        yield return SamplingOptions.FromGenerationConfig();
        yield return new() { Temperature = 0.05f };
        yield return new() { Temperature = 5f };
        yield return new() { Temperature = 1f, TopK = 1 };
        yield return new() { Temperature = 1f, TopK = 2 };
        yield return new() { Temperature = 1f, TopK = 1000 };
        yield return new() { Temperature = 1f, TopK = 100000 };
        yield return new() { Temperature = 1f, TopP = 0.1f };
        yield return new() { Temperature = 1f, TopP = 0.5f };
        yield return new() { Temperature = 1f, TopP = 0.999f };
        yield return new() { Temperature = 1f, MinP = 0.1f };
        yield return new() { Temperature = 0.7f, TopK = 500, TopP = 0.8f, MinP = 0.02f };
        yield return SamplingOptions.Greedy;
    }

    [Test]
    public void FilteredDistributionAndTokenEqualCpu()
    {
        using var gpu = NewGpu();
        var cpu = NewCpu();
        var cw = new ulong[ValidVocab];
        long step = 0;
        foreach (var (name, l) in LogitSets())
        {
            using var dl = DeviceBuffer.FromHost<float>(l);
            foreach (var o in OptionSets())
            {
                step++;
                int ct = cpu.FilteredWeights(l, o, step, cw);
                var gw = gpu.SampleWithWeights(S, dl.Ptr, o, step, out int gt);
                Assert.That(gw, Is.EqualTo(cw), $"{name} {o}: filtered weights differ");
                Assert.That(gt, Is.EqualTo(ct), $"{name} {o}: token differs");
                Assert.That(gt, Is.LessThan(ValidVocab));
            }
        }
    }

    [Test]
    public void TokensEqualCpuOverManySteps()
    {
        foreach (var (name, l) in LogitSets())
        {
            using var gpu = NewGpu(17);
            var cpu = NewCpu(17);
            using var dl = DeviceBuffer.FromHost<float>(l);
            var o = new SamplingOptions { Temperature = 0.9f, TopK = 200, TopP = 0.97f };
            for (long step = 0; step < 200; step++)
                Assert.That(gpu.Sample(S, dl.Ptr, o, step), Is.EqualTo(cpu.Sample(l, o, step)), $"{name} step {step}");
        }
    }

    [Test]
    public void DrawsFollowTheCpuDistribution()
    {
        var l = ConcentratedLogits(31, hot: 50, spread: 4f);
        using var dl = DeviceBuffer.FromHost<float>(l);
        using var gpu = NewGpu(5);
        var cpu = NewCpu(5);
        foreach (var o in new SamplingOptions[]
                 {
                     new() { Temperature = 1f },
                     new() { Temperature = 1.3f, TopK = 30, TopP = 0.8f, MinP = 0.02f },
                 })
        {
            var w = new ulong[ValidVocab];
            cpu.FilteredWeights(l, o, 0, w);
            var observed = new int[ValidVocab];
            for (long step = 0; step < 20000; step++)
            {
                gpu.SampleAsync(S, dl.Ptr, o, step);
                observed[gpu.ReadResult(S)]++;
            }
            Assert.That(ChiSquarePValue(w, observed, out int impossible), Is.GreaterThan(1e-4), $"{o}");
            Assert.That(impossible, Is.EqualTo(0));
        }
    }

    [Test]
    public void SameSeedSameTokens()
    {
        var l = GaussianLogits(8, 2f);
        using var dl = DeviceBuffer.FromHost<float>(l);
        var o = new SamplingOptions { Temperature = 1f, Seed = 4242 };
        int[] Run()
        {
            using var g = NewGpu(1);
            return Enumerable.Range(0, 50).Select(step => g.Sample(S, dl.Ptr, o, step)).ToArray();
        }
        var a = Run();
        Assert.That(Run(), Is.EqualTo(a));
        using var g2 = NewGpu(1);
        var b = Enumerable.Range(0, 50).Select(step => g2.Sample(S, dl.Ptr, o with { Seed = 4243 }, step)).ToArray();
        Assert.That(b, Is.Not.EqualTo(a));
    }

    [Test]
    public void PenaltiesUseCountsRecordedByTheKernel()
    {
        // A flat-ish distribution on a few tokens with strong penalties: every step depends on all earlier tokens.
        var hot = new int[20];
        var l = ConcentratedLogits(12, hot: 20, spread: 1f, hotIds: hot);
        using var dl = DeviceBuffer.FromHost<float>(l);
        foreach (var o in new SamplingOptions[]
                 {
                     new() { Temperature = 0.8f, RepetitionPenalty = 1.3f, PresencePenalty = 0.4f, FrequencyPenalty = 0.3f, Seed = 9 },
                     SamplingOptions.Greedy with { RepetitionPenalty = 1.2f, FrequencyPenalty = 0.2f },
                 })
        {
            using var gpu = NewGpu();
            var cpu = NewCpu();
            int[] prompt = [hot[0], hot[1], hot[1], 5];
            gpu.Reset(S);
            gpu.Record(S, prompt);
            cpu.Reset();
            cpu.Record(prompt);
            for (long step = 0; step < 100; step++)
            {
                gpu.SampleAsync(S, dl.Ptr, o, step); // counts never leave the device between steps
                int g = gpu.ReadResult(S);
                Assert.That(g, Is.EqualTo(cpu.Sample(l, o, step)), $"{o} step {step}");
            }
            Assert.That(DownloadCounts(gpu), Is.EqualTo(cpu.Counts.ToArray()));
            gpu.Reset(S);
            Assert.That(DownloadCounts(gpu).All(c => c == 0), Is.True);
        }
    }

    [Test]
    public void GreedyNeverPicksPaddedRows()
    {
        var l = new float[VocabRows];
        for (int i = 0; i < VocabRows; i++) l[i] = -1f;
        for (int i = ValidVocab; i < VocabRows; i++) l[i] = 1000f;
        l[70000] = 3f;
        l[90000] = 3f;
        using var dl = DeviceBuffer.FromHost<float>(l);
        using var gpu = NewGpu();
        Assert.That(gpu.Sample(S, dl.Ptr, SamplingOptions.Greedy, 0), Is.EqualTo(70000), "lowest id on ties");
        var result = new int[1];
        DeviceToHost(gpu.ResultDevicePtr, result);
        Assert.That(result[0], Is.EqualTo(70000));
        var all = new float[VocabRows];
        Array.Fill(all, 1000f, ValidVocab, VocabRows - ValidVocab);
        using var dAll = DeviceBuffer.FromHost<float>(all); // all real tokens tie at 0
        Assert.That(gpu.Sample(S, dAll.Ptr, SamplingOptions.Greedy, 1), Is.EqualTo(0));
        for (long step = 0; step < 100; step++)
            Assert.That(gpu.Sample(S, dAll.Ptr, new SamplingOptions { Temperature = 1f }, step), Is.LessThan(ValidVocab));
    }

    [Test]
    public void LogitBiasIsAppliedAndReuploadedWhenChanged()
    {
        var l = ConcentratedLogits(40);
        using var dl = DeviceBuffer.FromHost<float>(l);
        using var gpu = NewGpu();
        var force = new SamplingOptions { Temperature = 1f, LogitBias = new Dictionary<int, float> { [123] = float.PositiveInfinity } };
        Assert.That(gpu.Sample(S, dl.Ptr, force, 0), Is.EqualTo(123));
        var force2 = force with { LogitBias = new Dictionary<int, float> { [456] = 1000f } };
        Assert.That(gpu.Sample(S, dl.Ptr, force2, 1), Is.EqualTo(456));
        int greedy = gpu.Sample(S, dl.Ptr, SamplingOptions.Greedy, 2);
        var ban = SamplingOptions.Greedy with { LogitBias = new Dictionary<int, float> { [greedy] = float.NegativeInfinity } };
        Assert.That(gpu.Sample(S, dl.Ptr, ban, 3), Is.Not.EqualTo(greedy));
        Assert.That(gpu.Sample(S, dl.Ptr, SamplingOptions.Greedy, 4), Is.EqualTo(greedy), "no bias once options without bias are used");
    }

    // Every logit NaN (NaN weights) used to come out as id 0 when greedy and as a uniform draw over the vocabulary when
    // sampling, counted for the penalties, without a word. Now the kernels write no token and count nothing, and
    // Sample says whose the fault is, as the CPU sampler does.
    [Test]
    public void NoTokenIsPickedWhenEveryLogitIsNaNOrBanned()
    {
        var nan = new float[VocabRows];
        Array.Fill(nan, float.NaN);
        using var dNan = DeviceBuffer.FromHost<float>(nan);
        var banned = new float[VocabRows];
        Array.Fill(banned, float.NegativeInfinity);
        banned[5] = 3f;
        using var dBanned = DeviceBuffer.FromHost<float>(banned);
        var ban5 = new Dictionary<int, float> { [5] = float.NegativeInfinity };
        using var gpu = NewGpu();
        long step = 0;
        foreach (var o in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 1f }, SamplingOptions.FromGenerationConfig(),
                     new SamplingOptions { Temperature = 1f, TopP = 0.5f, MinP = 0.1f } })
        {
            var e = Assert.Throws<QwQ.Cuda.Errors.QwqException>(() => gpu.Sample(S, dNan.Ptr, o, step++))!;
            Assert.That(e, Is.Not.InstanceOf<QwQ.Cuda.Errors.OptionException>(), $"{o}: the model's fault, not the options'");
            Assert.That(e.Message, Does.Contain("no token can be sampled").And.Contain("NaN"), $"{o}");
            var b = Assert.Throws<QwQ.Cuda.Errors.OptionException>(() => gpu.Sample(S, dBanned.Ptr, o with { LogitBias = ban5 }, step++))!;
            Assert.That(b.Message, Does.Contain("logit_bias"), $"{o}");
            gpu.SampleAsync(S, dNan.Ptr, o, step++);
            Assert.That(gpu.ReadResult(S), Is.EqualTo(SampleRequest.NoToken), $"{o}: the asynchronous form leaves the check to its caller");
        }
        Assert.That(DownloadCounts(gpu).All(c => c == 0), Is.True, "nothing counted");
        Assert.That(gpu.Sample(S, dBanned.Ptr, SamplingOptions.Greedy, step++), Is.EqualTo(5), "the sampler works on after");
    }

    private int[] DownloadCounts(GpuSampler g)
    {
        var c = new int[VocabRows];
        S.Synchronize();
        DeviceToHost(g.CountsDevicePtr, c);
        return c;
    }

    /// <summary>Copies from a raw device pointer through a device-to-device hop into a buffer we own.</summary>
    private void DeviceToHost(ulong src, int[] dst)
    {
        using var tmp = DeviceBuffer.Allocate(4L * dst.Length);
        tmp.CopyFromDevice(src, 4L * dst.Length, 0, S);
        S.Synchronize();
        tmp.CopyToHost<int>(dst);
    }
}

using System.Diagnostics;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Sampling.SamplingTestUtil;

namespace QwQ.Cuda.Tests.Sampling;

/// <summary>
/// Per-token sampler cost on QwQ's 152064-row logits, printed (not asserted: timings depend on the machine).
/// Run explicitly: dotnet test --filter "FullyQualifiedName~SamplerTimingTests". Budgets: GPU &lt;= ~30-50 µs at
/// QwQ's defaults and well under 1 ms in the broad worst case; CPU a few ms.
/// </summary>
[Explicit("timing report")]
[NonParallelizable]
public class SamplerTimingTests
{
    private static IEnumerable<(string Name, SamplingOptions Options, float[] Logits)> Cases()
    {
        var concentrated = ConcentratedLogits(31, hot: 50, spread: 4f);
        var broad = GaussianLogits(2, 1f); // every id is a candidate
        yield return ("greedy, broad", SamplingOptions.Greedy, broad);
        yield return ("QwQ defaults (T=0.6 k=40 p=0.95), concentrated", SamplingOptions.FromGenerationConfig(), concentrated);
        yield return ("QwQ defaults (T=0.6 k=40 p=0.95), broad", SamplingOptions.FromGenerationConfig(), broad);
        yield return ("T=1 no filter, broad", new SamplingOptions { Temperature = 1f }, broad);
        yield return ("T=1.3 top_p=0.7 min_p=0.05, broad (worst case)", new SamplingOptions { Temperature = 1.3f, TopP = 0.7f, MinP = 0.05f }, broad);
        yield return ("T=1 k=100000 p=0.99, broad", new SamplingOptions { Temperature = 1f, TopK = 100000, TopP = 0.99f }, broad);
    }

    [Test]
    public void GpuMicrosecondsPerSample()
    {
        if (!QwQ.Cuda.Native.Cuda.IsAvailable(out _)) Assert.Ignore("no CUDA device");
        using var ctx = CudaContext.Create();
        using var lib = PtxLibrary.Load(ctx);
        using var s = CudaStream.Create();
        using var gpu = new GpuSampler(lib, VocabRows, ValidVocab, 1);
        foreach (var (name, o, l) in Cases())
        {
            using var dl = DeviceBuffer.FromHost<float>(l);
            for (int i = 0; i < 50; i++) // warm-up (JIT of the PTX, caches); the draws must be tokens of the vocabulary
                Assert.That(gpu.Sample(s, dl.Ptr, o, i), Is.InRange(0, ValidVocab - 1), name);
            const int n = 2000;
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) gpu.Sample(s, dl.Ptr, o, i); // enqueue + sync + read: per-token latency
            double latency = sw.Elapsed.TotalMicroseconds / n;
            sw.Restart();
            for (int i = 0; i < n; i++) gpu.SampleAsync(s, dl.Ptr, o, i); // back to back: device + launch cost
            gpu.ReadResult(s);
            double throughput = sw.Elapsed.TotalMicroseconds / n;
            TestContext.Out.WriteLine($"GPU {name}: {latency:F1} µs/sample (sample+read), {throughput:F1} µs/sample (queued)");
        }
    }

    [Test]
    public void CpuMillisecondsPerSample()
    {
        var cpu = new CpuSampler(VocabRows, ValidVocab, 1);
        foreach (var (name, o, l) in Cases())
        {
            for (int i = 0; i < 3; i++) Assert.That(cpu.Sample(l, o, i), Is.InRange(0, ValidVocab - 1), name);
            const int n = 30;
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) cpu.Sample(l, o, i);
            TestContext.Out.WriteLine($"CPU {name}: {sw.Elapsed.TotalMilliseconds / n:F2} ms/sample");
        }
    }
}

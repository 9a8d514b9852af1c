using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// Engine v2 on the GPU: a step over rows from many sequences gives each sequence what it gets alone (bf16
/// tolerance: the row count picks other product kernels), state stays with its sequence, graphs replay what eager
/// launches compute, forks share blocks and diverge correctly, and a full pool is a clear error, not an OOM.
/// A tiny synthetic model (10/2 heads of 32, 2 layers) with room for long contexts, seeds printed.
/// </summary>
public class BatchedStepTests
{
    private const double Tolerance = 2e-2;
    private static readonly SamplingOptions Greedy = new() { Temperature = 0 };

    private static readonly ModelConfig Tiny = ModelConfig.Parse(CudaModelTests.TinyConfigJson(), "config.json");

    private static Random NewRandom()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int s) ? s : Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        return new Random(seed);
    }

    private static CudaBackend Load(EngineOptions? options = null)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        // Synthetic std-0.02 weights give nearly flat logits; a seed per backend keeps the two backends of a test equal.
        return CudaBackend.Load(Tiny, null, options ?? new EngineOptions { KvPoolPositions = 64 * 1024 });
    }

    private static int[] Tokens(Random r, int n) => Enumerable.Range(0, n).Select(_ => r.Next(Tiny.VocabSize)).ToArray();

    private static float[] Logits(ISequence s)
    {
        var l = new float[Tiny.VocabSize];
        s.CopyLastLogits(l);
        return l;
    }

    private static void AssertClose(float[] got, float[] want, string what)
    {
        double err = CudaModelTests.RelErr(got, want);
        Assert.That(err, Is.LessThanOrEqualTo(Tolerance), $"{what}: ‖Δ‖/‖ref‖ = {err:E2}");
    }

    [Test]
    public void InterleavedSequencesKeepTheirOwnLogits()
    {
        using var backend = Load();
        var r = NewRandom();
        int[] pa = Tokens(r, 37), pb = Tokens(r, 53);
        using var a = backend.CreateSequence();
        using var b = backend.CreateSequence();
        using var aloneA = backend.CreateSequence();
        aloneA.Append(pa);
        float[] wantA = Logits(aloneA);
        int wantTokenA = aloneA.Sample(Greedy, 0);

        a.Append(pa);
        b.Append(pb); // used to overwrite the backend-wide logits that A's Sample then read
        Assert.That(Logits(a), Is.EqualTo(wantA), "A's logits after B appended");
        Assert.That(a.Sample(Greedy, 0), Is.EqualTo(wantTokenA));
    }

    [TestCase(1), TestCase(2), TestCase(3), TestCase(8), TestCase(9), TestCase(17), TestCase(33), TestCase(64)]
    public void BatchedStepEqualsEachSequenceAlone(int batch)
    {
        using var backend = Load();
        var r = NewRandom();
        var batched = new List<ISequence>();
        var alone = new List<ISequence>();
        try
        {
            var items = new List<SequenceChunk>();
            for (int i = 0; i < batch; i++)
            {
                int[] history = Tokens(r, r.Next(0, 300));                 // mixed context lengths, some empty
                int[] next = Tokens(r, r.Next(3) == 0 ? r.Next(2, 200) : 1); // prefill chunks and decode rows
                var s = backend.CreateSequence();
                var t = backend.CreateSequence();
                batched.Add(s);
                alone.Add(t);
                if (history.Length > 0) { s.Append(history); t.Append(history); }
                t.Append(next);
                items.Add(new SequenceChunk(s, next));
            }
            backend.Step(items.ToArray());
            for (int i = 0; i < batch; i++)
            {
                Assert.That(batched[i].Length, Is.EqualTo(alone[i].Length));
                AssertClose(Logits(batched[i]), Logits(alone[i]), $"sequence {i} of {batch}");
            }
        }
        finally
        {
            foreach (var s in batched.Concat(alone)) s.Dispose();
        }
    }

    [Test]
    public void RandomInterleavingOfFourSequencesEqualsEachAlone()
    {
        using var backend = Load();
        var r = NewRandom();
        const int n = 4;
        var seqs = Enumerable.Range(0, n).Select(_ => backend.CreateSequence()).ToArray();
        var history = Enumerable.Range(0, n).Select(_ => new List<int>()).ToArray();
        try
        {
            for (int op = 0; op < 40; op++)
            {
                int i = r.Next(n);
                if (seqs[i].Length == 0 || r.Next(3) > 0)
                {
                    int[] t = Tokens(r, seqs[i].Length == 0 || r.Next(4) > 0 ? 1 : r.Next(2, 40));
                    seqs[i].Append(t);
                    history[i].AddRange(t);
                }
                else
                {
                    int j = r.Next(n);
                    if (j != i && seqs[j].Length > 0) Assert.That(seqs[j].Sample(Greedy, 0), Is.InRange(0, Tiny.VocabSize - 1));
                    using var fresh = backend.CreateSequence();
                    fresh.Append(history[i].ToArray());
                    AssertClose(Logits(seqs[i]), Logits(fresh), $"op {op}, sequence {i}");
                }
            }
        }
        finally
        {
            foreach (var s in seqs) s.Dispose();
        }
    }

    [Test]
    public void GraphReplayEqualsEagerLaunchesAtEveryCapturedBatchSize()
    {
        // Both on cublasGemmEx: each backend's own algorithm tuning could pick different (equally right) algorithms.
        using var graphs = Load(new EngineOptions { KvPoolPositions = 64 * 1024, TuneDecodeGemm = false });
        using var eager = Load(new EngineOptions { KvPoolPositions = 64 * 1024, UseCudaGraphs = false, TuneDecodeGemm = false });
        var r = NewRandom();
        foreach (int batch in new[] { 1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 100, 128 })
        {
            var g = Enumerable.Range(0, batch).Select(_ => graphs.CreateSequence()).ToArray();
            var e = Enumerable.Range(0, batch).Select(_ => eager.CreateSequence()).ToArray();
            try
            {
                for (int i = 0; i < batch; i++)
                {
                    int[] prompt = Tokens(r, r.Next(1, 150));
                    g[i].Append(prompt);
                    e[i].Append(prompt);
                }
                for (int step = 0; step < 3; step++) // the first decode step captures, the next ones replay
                {
                    int[] next = Tokens(r, batch);
                    graphs.Step(g.Select((s, i) => new SequenceChunk(s, new[] { next[i] })).ToArray());
                    eager.Step(e.Select((s, i) => new SequenceChunk(s, new[] { next[i] })).ToArray());
                    for (int i = 0; i < batch; i++)
                        Assert.That(Logits(g[i]), Is.EqualTo(Logits(e[i])), $"batch {batch}, step {step}, sequence {i}");
                }
            }
            finally
            {
                foreach (var s in g.Concat(e)) s.Dispose();
            }
        }
    }

    [Test]
    public void ProgrammaticLaunchEqualsOrdinaryLaunches()
    {
        // The compute_90 build launched with programmatic dependent launch (the default on sm_90+) against the
        // compute_80 build launched the ordinary way: the same arithmetic, so the logits agree to rounding at most,
        // through prefill, eager steps and replayed graphs, at row counts that take every product kernel.
        using var pdl = Load(new EngineOptions { KvPoolPositions = 64 * 1024, TuneDecodeGemm = false });
        using var plain = Load(new EngineOptions { KvPoolPositions = 64 * 1024, TuneDecodeGemm = false, ProgrammaticLaunch = false });
        Assert.That(plain.ProgrammaticLaunch, Is.False);
        if (!pdl.ProgrammaticLaunch) Assert.Ignore($"{pdl.DeviceDescription}: programmatic launch needs sm_90 or newer");
        var r = NewRandom();
        foreach (int batch in new[] { 1, 5, 8, 32, 100 })
        {
            var a = Enumerable.Range(0, batch).Select(_ => pdl.CreateSequence()).ToArray();
            var b = Enumerable.Range(0, batch).Select(_ => plain.CreateSequence()).ToArray();
            try
            {
                for (int i = 0; i < batch; i++)
                {
                    int[] prompt = Tokens(r, r.Next(1, 150));
                    a[i].Append(prompt);
                    b[i].Append(prompt);
                    Assert.That(CudaModelTests.RelErr(Logits(a[i]), Logits(b[i])), Is.LessThanOrEqualTo(1e-5), $"prefill, batch {batch}, sequence {i}");
                }
                for (int step = 0; step < 3; step++)
                {
                    int[] next = Tokens(r, batch);
                    pdl.Step(a.Select((s, i) => new SequenceChunk(s, new[] { next[i] })).ToArray());
                    plain.Step(b.Select((s, i) => new SequenceChunk(s, new[] { next[i] })).ToArray());
                    for (int i = 0; i < batch; i++)
                    {
                        double err = CudaModelTests.RelErr(Logits(a[i]), Logits(b[i]));
                        Assert.That(err, Is.LessThanOrEqualTo(1e-5), $"batch {batch}, step {step}, sequence {i}");
                    }
                }
            }
            finally
            {
                foreach (var s in a.Concat(b)) s.Dispose();
            }
        }
    }

    [Test]
    public void ForkSharesBlocksThenDivergesLikeSeparateRuns()
    {
        using var backend = Load();
        var r = NewRandom();
        int[] prompt = Tokens(r, 150); // two full blocks and a partial third, which the fork shares until it writes
        using var parent = backend.CreateSequence();
        parent.Append(prompt);
        int freeBefore = backend.KvPool.FreeBlocks;
        using var child = parent.Fork();
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(freeBefore), "a fork takes no blocks until it writes");
        Assert.That(Logits(child), Is.EqualTo(Logits(parent)));

        int[] a = Tokens(r, 20), b = Tokens(r, 1);
        parent.Append(a);
        child.Append(b); // copy-on-write of the shared partial block
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(freeBefore - 1), "only the written partial block was copied");

        using var soloA = backend.CreateSequence();
        using var soloB = backend.CreateSequence();
        soloA.Append([.. prompt, .. a]);
        soloB.Append([.. prompt, .. b]);
        AssertClose(Logits(parent), Logits(soloA), "parent after divergence");
        AssertClose(Logits(child), Logits(soloB), "child after divergence");
    }

    [Test]
    public void AFullPoolIsAClearErrorAndLeavesTheSequenceUsable()
    {
        using var backend = Load(new EngineOptions { KvPoolPositions = 4 * 64 });
        var r = NewRandom();
        using var a = backend.CreateSequence();
        a.Append(Tokens(r, 200));
        using var b = backend.CreateSequence();
        var e = Assert.Throws<KvPoolExhaustedException>(() => b.Append(Tokens(r, 100)));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain("positions"));
        Assert.That(b.Length, Is.EqualTo(0));
        a.Truncate(0);
        b.Append(Tokens(r, 100)); // the blocks A gave back are enough now
        Assert.That(b.Length, Is.EqualTo(100));
    }

    [Test]
    public void ThousandSessionCyclesLeaveDeviceMemoryWhereItWas()
    {
        using var backend = Load();
        var r = NewRandom();
        long Free()
        {
            lock (backend.Gate) { backend.Context.MakeCurrent(); return backend.Context.GetMemoryInfo().Free; }
        }
        using (var warm = backend.CreateSequence()) warm.Append(Tokens(r, 70));
        long before = Free();
        int blocksBefore = backend.KvPool.FreeBlocks;
        for (int i = 0; i < 1000; i++)
        {
            using var s = backend.CreateSequence();
            s.Append(Tokens(r, 1 + i % 130));
        }
        Assert.That(Free(), Is.EqualTo(before), "device memory after 1000 sessions");
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(blocksBefore), "pool blocks after 1000 sessions");
    }

    [Test]
    public void BatchedSampleEqualsEachSequenceSampledAlone()
    {
        using var backend = Load();
        var r = NewRandom();
        const int n = 12;
        var seqs = Enumerable.Range(0, n).Select(_ => backend.CreateSequence()).ToArray();
        var twins = new ISequence[n];
        try
        {
            for (int i = 0; i < n; i++)
            {
                seqs[i].Append(Tokens(r, r.Next(1, 90)));
                twins[i] = seqs[i].Fork(); // same logits and penalty counts
            }
            // Plain greedy rows take the one-launch path; the others (sampled, penalised) the per-sequence one.
            SamplingOptions Options(int i) => (i % 3) switch
            {
                0 => Greedy,
                1 => new SamplingOptions { Temperature = 0.6f, TopP = 0.95f, TopK = 40, Seed = (ulong)i },
                _ => Greedy with { PresencePenalty = 1.5f },
            };
            for (int step = 0; step < 3; step++)
            {
                var got = new int[n];
                backend.Sample(seqs.Select((s, i) => new SampleRequest(s, Options(i), step)).ToArray(), got);
                for (int i = 0; i < n; i++)
                {
                    Assert.That(got[i], Is.EqualTo(twins[i].Sample(Options(i), step)), $"sequence {i}, step {step}");
                    seqs[i].Append([got[i]]);
                    twins[i].Append([got[i]]);
                }
            }
        }
        finally
        {
            foreach (var s in seqs.Concat(twins)) s?.Dispose();
        }
    }
}

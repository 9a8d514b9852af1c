using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Reference;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;
using static QwQ.Cuda.Tests.Reference.AdaptiveYarnReferences;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// Length-adaptive YaRN on the GPU engine (bf16), against the fp32 reference built without rope_scaling (sequences up
/// to the switch) and with static YaRN over the same whole sequence (past it); the bound, 2e-2. tiny-yarn's
/// original_max_position_embeddings is 16, so sequences cross it within a few dozen tokens. A sequence that crosses
/// runs again from position 0 in YaRN (as the CPU reference does), through eager steps and decode graphs alike.
/// </summary>
public class AdaptiveYarnGpuTests
{
    private const double Tolerance = 2e-2;

    private static CudaBackend Load(KvCacheKind kvCache = KvCacheKind.Bf16)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        return CudaBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName),
            new EngineOptions { MaxContext = 256, RopeScaling = RopeScalingMode.Adaptive, KvCache = kvCache });
    }

    /// <summary>The reference a sequence of these tokens must match: without YaRN up to the switch, static YaRN past it.</summary>
    private static float[] Want(ReadOnlySpan<int> tokens) => LastLogits(tokens.Length > Switch ? StaticYarn.Value : NoYarn.Value, tokens);

    private static void AssertClose(float[] got, float[] want, string what)
    {
        double err = RelErr(got, want);
        Assert.That(err, Is.LessThanOrEqualTo(Tolerance), $"{what}: ‖Δ‖/‖ref‖ = {err:E2}");
    }

    [Test]
    public void ASequenceIsPlainUpToTheSwitchAndStaticYarnPastItThroughDecodeGraphs()
    {
        using var backend = Load();
        using var seq = backend.CreateSequence();
        var tokens = Tokens(40, 3);
        seq.Append(tokens.AsSpan(0, 10));
        AssertClose(Last(seq), Want(tokens.AsSpan(0, 10)), "prefill of 10");
        for (int n = 11; n <= tokens.Length; n++) // decode steps: graphs in the plain rope, the switch, graphs in YaRN
        {
            seq.Append(tokens.AsSpan(n - 1, 1));
            AssertClose(Last(seq), Want(tokens.AsSpan(0, n)), $"length {n} (switch at {Switch})");
        }
    }

    [Test]
    public async Task UnderTheSchedulerByDefaultASwitchIsRecomputedInChunksAndMatchesTheReference()
    {
        // No rope option: adaptive is the default for a config with YaRN. Two requests decode past the switch beside a
        // third whose prompt is past it already; each crossing runs its sequence again in chunks of 4 positions, and every
        // sequence ends where the static-YaRN reference over its whole text is.
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        using var backend = CudaBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName), new EngineOptions { MaxContext = 256 });
        (int[] Prompt, int MaxNew)[] jobs = [(Tokens(10, 21), 20), (Tokens(3, 22), 30), (Tokens(20, 23), 5)];
        var seqs = jobs.Select(_ => backend.CreateSequence()).ToArray();
        try
        {
            SchedulerCounters counters;
            using (var scheduler = new BatchScheduler(backend, new SchedulerOptions { PrefillTokensPerStep = 4, MaxBatch = 8, MaxSequences = 8 }))
            {
                var handles = jobs.Select((j, i) => scheduler.Submit(new GenerationRequest(seqs[i], j.Prompt, SamplingOptions.Greedy, j.MaxNew, []))).ToArray();
                foreach (var h in handles) Assert.That(await h.Completion, Is.EqualTo(FinishReason.MaxTokens));
                counters = scheduler.Counters;
            }
            Assert.That(counters.RopeRecomputes, Is.EqualTo(2));
            for (int i = 0; i < seqs.Length; i++)
            {
                Assert.That(seqs[i].Length, Is.GreaterThan(Switch));
                AssertClose(Last(seqs[i]), Want([.. seqs[i].Tokens]), $"request {i}, {seqs[i].Length} positions");
            }
        }
        finally
        {
            foreach (var s in seqs) s.Dispose();
        }
    }

    [Test]
    public void APromptPastTheSwitchRunsYarnFromPositionZero()
    {
        using var backend = Load();
        using var seq = backend.CreateSequence();
        var tokens = Tokens(27, 5);
        seq.Append(tokens);
        AssertClose(Last(seq), Want(tokens), "27 tokens at once");
    }

    [Test]
    public void InABatchEverySequenceRunsItsOwnRope()
    {
        using var backend = Load();
        var prompts = new[] { Tokens(5, 6), Tokens(14, 7), Tokens(30, 8) }; // plain, crossing soon, YaRN
        var seqs = prompts.Select(_ => backend.CreateSequence()).ToArray();
        try
        {
            backend.Step(seqs.Select((s, i) => new SequenceChunk(s, prompts[i])).ToArray());
            var all = prompts.Select(p => p.ToList()).ToArray();
            for (int step = 0; step < 6; step++)
            {
                int[] next = Tokens(3, 100 + step);
                backend.Step(seqs.Select((s, i) => new SequenceChunk(s, new[] { next[i] })).ToArray());
                for (int i = 0; i < seqs.Length; i++)
                {
                    all[i].Add(next[i]);
                    AssertClose(Last(seqs[i]), Want(all[i].ToArray()), $"step {step}, sequence {i} (length {all[i].Count})");
                }
            }
        }
        finally
        {
            foreach (var s in seqs) s.Dispose();
        }
    }

    [Test]
    public void TruncatedBelowTheSwitchASequenceIsPlainAgain()
    {
        using var backend = Load();
        using var seq = backend.CreateSequence();
        var tokens = Tokens(24, 9);
        seq.Append(tokens);
        seq.Truncate(12);
        seq.Append(tokens.AsSpan(12, 1));
        AssertClose(Last(seq), Want(tokens.AsSpan(0, 13)), "truncated to 12, one more token");
    }

    [Test]
    public void AForkSharesItsPlainPrefixAndSwitchesOnItsOwn()
    {
        using var backend = Load();
        using var parent = backend.CreateSequence();
        var tokens = Tokens(30, 10);
        parent.Append(tokens.AsSpan(0, 14));
        using var child = parent.Fork();
        child.Append(tokens.AsSpan(14, 6)); // past the switch: the child runs again in YaRN, its own copies of the blocks
        parent.Append(tokens.AsSpan(14, 1)); // still plain
        AssertClose(Last(child), Want(tokens.AsSpan(0, 20)), "the child past the switch");
        AssertClose(Last(parent), Want(tokens.AsSpan(0, 15)), "the parent below it");
    }

    [Test]
    public void WithTheFp8KvCacheTheSwitchRewritesTheCacheAsStaticYarnWritesIt()
    {
        // The switch runs the sequence again in YaRN, so the fp8 codes and scales are those a static-YaRN run writes:
        // compare with the fp32 references keeping their caches in fp8 too (Qwen2CpuModel.Forward with KvCacheKind.Fp8).
        using var backend = Load(KvCacheKind.Fp8);
        using var seq = backend.CreateSequence();
        var tokens = Tokens(30, 11);
        int v = Fixture.Config.VocabSize;
        float[] Reference(int n) =>
            (n > Switch ? StaticYarn.Value : NoYarn.Value).Forward(tokens.AsSpan(0, n), kvCache: KvCacheKind.Fp8).AsSpan((n - 1) * v, v).ToArray();
        seq.Append(tokens.AsSpan(0, 12));
        AssertClose(Last(seq), Reference(12), "fp8 KV, prefill of 12 (plain)");
        for (int n = 13; n <= tokens.Length; n++) // decode through graphs, across the switch at 16
        {
            seq.Append(tokens.AsSpan(n - 1, 1));
            AssertClose(Last(seq), Reference(n), $"fp8 KV, length {n}");
        }
    }

    // ---- --rope-switch-method rerotate: the cached keys turn in place on the GPU -------------------------------------------

    /// <summary>
    /// The GPU's re-rotating switch against the CPU reference switching the same way (<c>RopeSwitch = Rerotate</c>,
    /// fp32, with the same cache kind), through decode graphs across the switch, a truncation back below it and a fork that
    /// switches while its parent stays plain; and every step within the bound (2e-2) of static YaRN over the same
    /// whole sequence, which re-rotation meets on tiny-yarn without being exact (the type's remarks on RopeSwitchMethod).
    /// </summary>
    [TestCase(KvCacheKind.Bf16)]
    [TestCase(KvCacheKind.Fp8)]
    public void WithRerotationTheGpuTurnsTheCacheAsTheCpuReferenceDoes(KvCacheKind kvCache)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        var options = new EngineOptions { MaxContext = 256, KvCache = kvCache, RopeSwitch = RopeSwitchMethod.Rerotate };
        using var backend = CudaBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName), options);
        using var cpu = CpuReferenceBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName), options);
        var tokens = Tokens(40, 31);
        using var g = backend.CreateSequence();
        using var c = cpu.CreateSequence();
        void Both(int from, int count, string what)
        {
            g.Append(tokens.AsSpan(from, count));
            c.Append(tokens.AsSpan(from, count));
            AssertClose(Last(g), Last(c), $"{kvCache} {what}: GPU against the CPU reference");
            if (kvCache == KvCacheKind.Bf16) AssertClose(Last(g), Want(tokens.AsSpan(0, g.Length)), $"{what}: against the reference of {g.Length} tokens");
        }
        Both(0, 12, "prefill of 12 (plain)");
        for (int n = 13; n <= 30; n++) Both(n - 1, 1, $"decode to {n}"); // the switch at 17 turns the keys in place
        Assert.That(g.RecomputesAt(31), Is.False, "nothing is run again");

        using var gFork = g.Fork();
        g.Truncate(10);
        c.Truncate(10);
        Both(10, 2, "truncated to 10, two more tokens (turned back to plain)");
        gFork.Append(tokens.AsSpan(30, 1)); // the fork keeps its YaRN keys: its copies were taken before the parent turned back
        using var cFork = cpu.CreateSequence();
        cFork.Append(tokens.AsSpan(0, 12));
        for (int n = 13; n <= 31; n++) cFork.Append(tokens.AsSpan(n - 1, 1));
        AssertClose(Last(gFork), Last(cFork), $"{kvCache} the fork, 31 tokens");
    }

    [Test]
    public void WithRerotationTheSchedulerRunsNothingAgain()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        using var backend = CudaBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName),
            new EngineOptions { MaxContext = 256, RopeSwitch = RopeSwitchMethod.Rerotate });
        using var seq = backend.CreateSequence();
        using (var scheduler = new BatchScheduler(backend, new SchedulerOptions { PrefillTokensPerStep = 4 }))
        {
            var h = scheduler.Submit(new GenerationRequest(seq, Tokens(10, 32), SamplingOptions.Greedy, 20, []));
            Assert.That(h.Completion.GetAwaiter().GetResult(), Is.EqualTo(FinishReason.MaxTokens));
            Assert.That(scheduler.Counters.RopeRecomputes, Is.Zero);
        }
        Assert.That(seq.Length, Is.EqualTo(29));
        AssertClose(Last(seq), Want([.. seq.Tokens]), "29 positions past the switch at 16, keys turned at 17");
    }
}

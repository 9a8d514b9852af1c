using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;
using static QwQ.Cuda.Tests.Reference.AdaptiveYarnReferences;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>
/// The adaptive switch under <see cref="BatchScheduler"/> (the default rope scaling for a config with YaRN): a request
/// whose sequence crosses the switch has its earlier positions run again in chunks of the prefill budget, never inside
/// one step, and gets exactly the tokens it gets alone (where one Append does the recompute in its step). On the CPU
/// reference with tiny-yarn (switch at 16).
/// </summary>
public class AdaptiveYarnSchedulerTests
{
    private const int Budget = 4;

    /// <summary>The default mode: nothing in these tests asks for adaptive.</summary>
    private static CpuReferenceBackend Backend() => new(Fixture.Config, Fixture.Weights, samplerSeed: 3);

    private static SchedulerOptions Options => new() { PrefillTokensPerStep = Budget, MaxBatch = 8, MaxSequences = 8 };

    /// <summary>
    /// Passes steps through and records what each one computes: an item whose sequence recomputes at the length it asks
    /// for (<see cref="ISequence.RecomputesAt"/>) runs every position it holds again inside that step.
    /// </summary>
    private sealed class WatchedBackend(IModelBackend inner) : IModelBackend
    {
        public int MostRowsInAStep { get; private set; }
        public int RecomputesInsideAStep { get; private set; }

        public ModelConfig Config => inner.Config;
        public string DeviceDescription => inner.DeviceDescription;
        public int MaxContext => inner.MaxContext;
        public KvBlockPool KvPool => inner.KvPool;
        public ISequence CreateSequence(int? maxContext = null) => inner.CreateSequence(maxContext);
        public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens) => inner.Sample(requests, tokens);
        public void Dispose() => inner.Dispose();

        public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
        {
            int rows = 0;
            foreach (var item in items)
            {
                var seq = item.Sequence;
                int length = Math.Max(seq.Length + item.Tokens.Length, item.FinalLength);
                bool again = seq.RecomputesAt(length);
                if (again) RecomputesInsideAStep++;
                rows += item.Tokens.Length + (again ? seq.Length : 0);
            }
            inner.Step(items, ct);
            MostRowsInAStep = Math.Max(MostRowsInAStep, rows);
        }
    }

    private static async Task<List<int>> Run(BatchScheduler scheduler, ISequence seq, int[] prompt, int maxNew)
    {
        var h = scheduler.Submit(new GenerationRequest(seq, prompt, SamplingOptions.Greedy, maxNew, []));
        var got = new List<int>();
        await foreach (int t in h.Tokens.ReadAllAsync()) got.Add(t);
        Assert.That(await h.Completion, Is.EqualTo(FinishReason.MaxTokens));
        return got;
    }

    [Test]
    public void TheDefaultIsAdaptive() =>
        Assert.That(Backend().RopeScaling, Is.EqualTo(RopeScalingMode.Adaptive));

    [Test]
    public async Task RequestsThatDecodePastTheSwitchRecomputeInChunksAndGetWhatTheyGetAlone()
    {
        // A and B cross the switch while decoding, beside each other; C's prompt is past it from the start.
        (int[] Prompt, int MaxNew)[] jobs = [(Tokens(10, 1), 20), (Tokens(3, 2), 30), (Tokens(20, 3), 5)];
        using var watched = new WatchedBackend(Backend());
        var seqs = jobs.Select(_ => watched.CreateSequence()).ToArray();
        List<int>[] got;
        SchedulerCounters counters;
        using (var scheduler = new BatchScheduler(watched, Options))
        {
            got = await Task.WhenAll(jobs.Select((j, i) => Run(scheduler, seqs[i], j.Prompt, j.MaxNew)));
            counters = scheduler.Counters;
        }

        using var alone = Backend();
        for (int i = 0; i < jobs.Length; i++)
        {
            Assert.That(got[i], Is.EqualTo(GenerateAlone(alone, jobs[i].Prompt, SamplingOptions.Greedy, jobs[i].MaxNew, [])), $"request {i}");
            Assert.That(seqs[i].Length, Is.EqualTo(jobs[i].Prompt.Length + jobs[i].MaxNew - 1));
            Assert.That(seqs[i].Length, Is.GreaterThan(Switch), "the test must cross the switch");
        }
        Assert.That(counters.RopeRecomputes, Is.EqualTo(2), "A and B; C ran YaRN from its first chunk");
        Assert.That(watched.RecomputesInsideAStep, Is.Zero, "no step ran a sequence again from position 0");
        Assert.That(watched.MostRowsInAStep, Is.LessThanOrEqualTo(Budget + jobs.Length), "the prefill budget and a decode row each");
        foreach (var s in seqs) s.Dispose();
    }

    [Test]
    public async Task APromptThatCarriesAShortHistoryPastTheSwitchRecomputesItInChunks()
    {
        int[] history = Tokens(12, 4), prompt = Tokens(9, 5);
        using var watched = new WatchedBackend(Backend());
        using var seq = watched.CreateSequence();
        seq.Append(history); // plain: 12 positions
        List<int> got;
        using (var scheduler = new BatchScheduler(watched, Options))
        {
            got = await Run(scheduler, seq, prompt, 3);
            Assert.That(scheduler.Counters.RopeRecomputes, Is.EqualTo(1));
        }
        Assert.That(watched.RecomputesInsideAStep, Is.Zero);
        Assert.That(watched.MostRowsInAStep, Is.LessThanOrEqualTo(Budget));
        Assert.That(seq.Tokens, Is.EqualTo((int[])[.. history, .. prompt, .. got.Take(2)]), "the sequence keeps its history");

        // alone: one Append of the prompt recomputes the history inside its step
        using var alone = Backend();
        using var other = alone.CreateSequence();
        other.Append(history);
        other.Append(prompt);
        var want = new List<int>();
        for (int i = 0; i < 3; i++)
        {
            want.Add(other.Sample(SamplingOptions.Greedy, i));
            if (i < 2) other.Append([want[^1]]);
        }
        Assert.That(got, Is.EqualTo(want));
        Assert.That(Last(seq), Is.EqualTo(Last(other)), "the same logits after the same tokens");
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, [.. seq.Tokens])), Is.LessThanOrEqualTo(1e-4), "static YaRN over the whole sequence");
    }

    [Test]
    public async Task TruncatedBelowTheSwitchASequenceTurnsBackToPlainInChunks()
    {
        int[] text = Tokens(30, 6), prompt = Tokens(3, 7);
        using var watched = new WatchedBackend(Backend());
        using var seq = watched.CreateSequence();
        seq.Append(text); // YaRN
        seq.Truncate(10);
        Assert.That(seq.RecomputesAt(13), Is.True, "13 positions are plain; the cache holds YaRN keys");
        using (var scheduler = new BatchScheduler(watched, Options))
        {
            await Run(scheduler, seq, prompt, 1);
            Assert.That(scheduler.Counters.RopeRecomputes, Is.EqualTo(1));
        }
        Assert.That(watched.RecomputesInsideAStep, Is.Zero);
        int[] all = [.. text.AsSpan(0, 10), .. prompt];
        Assert.That(seq.Tokens, Is.EqualTo(all));
        Assert.That(RelErr(Last(seq), LastLogits(NoYarn.Value, all)), Is.LessThanOrEqualTo(1e-4), "the model without YaRN");
    }

    [Test]
    public async Task APromptPastTheSwitchRunsYarnFromItsFirstChunkAndIsComputedOnce()
    {
        int[] prompt = Tokens(41, 8);
        using var watched = new WatchedBackend(Backend());
        using var seq = watched.CreateSequence();
        using (var scheduler = new BatchScheduler(watched, Options))
        {
            await Run(scheduler, seq, prompt, 1);
            Assert.That(scheduler.Counters.RopeRecomputes, Is.Zero);
        }
        Assert.That(watched.RecomputesInsideAStep, Is.Zero, "no chunk ran plain, so none was run again");
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, prompt)), Is.LessThanOrEqualTo(1e-4));
    }

    [Test]
    public void AStepToldTheFinalLengthRunsItsRopeFromTheFirstChunk()
    {
        int[] prompt = Tokens(24, 9);
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        backend.Step([new SequenceChunk(seq, prompt.AsMemory(0, 8), FinalLength: prompt.Length)]);
        Assert.That(seq.RecomputesAt(prompt.Length), Is.False, "its 8 positions are YaRN already");
        Assert.That(seq.RecomputesAt(12), Is.True, "a length of 12 would run them again in plain RoPE");
        backend.Step([new SequenceChunk(seq, prompt.AsMemory(8), FinalLength: prompt.Length)]);
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, prompt)), Is.LessThanOrEqualTo(1e-4));
    }

    // ---- --rope-switch-method rerotate: the keys turn in place, nothing runs again ----------------------------------------

    private static CpuReferenceBackend Rerotating() =>
        CpuReferenceBackend.Load(Fixture.Config, Reference.ModelFixtures.Dir(FixtureName), new EngineOptions { RopeSwitch = RopeSwitchMethod.Rerotate });

    [Test]
    public async Task WithRerotationADecodePastTheSwitchRecomputesNothingAndStaysCloseToStaticYarn()
    {
        (int[] Prompt, int MaxNew)[] jobs = [(Tokens(10, 1), 20), (Tokens(3, 2), 30)];
        using var watched = new WatchedBackend(Rerotating());
        var seqs = jobs.Select(_ => watched.CreateSequence()).ToArray();
        List<int>[] got;
        using (var scheduler = new BatchScheduler(watched, Options))
        {
            got = await Task.WhenAll(jobs.Select((j, i) => Run(scheduler, seqs[i], j.Prompt, j.MaxNew)));
            Assert.That(scheduler.Counters.RopeRecomputes, Is.Zero);
        }
        Assert.That(watched.RecomputesInsideAStep, Is.Zero);
        Assert.That(watched.MostRowsInAStep, Is.LessThanOrEqualTo(Budget + jobs.Length));
        using var alone = Rerotating();
        for (int i = 0; i < jobs.Length; i++)
        {
            Assert.That(got[i], Is.EqualTo(GenerateAlone(alone, jobs[i].Prompt, SamplingOptions.Greedy, jobs[i].MaxNew, [])), $"request {i}");
            // the bound against static YaRN over the whole sequence (re-rotation is exact in the first layer only)
            double err = RelErr(Last(seqs[i]), LastLogits(StaticYarn.Value, [.. seqs[i].Tokens]));
            TestContext.Out.WriteLine($"request {i}: re-rotated against static YaRN {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(2e-2));
            seqs[i].Dispose();
        }
    }

    [Test]
    public void ARerotatedSequencePublishesNoBlocksAndAttachesPlainOnes()
    {
        // tiny-yarn's weights with the switch at 128, so plain sequences fill whole 64-position blocks
        var config = Fixture.Config with { RopeScaling = Fixture.Config.RopeScaling! with { OriginalMaxPositionEmbeddings = 128 } };
        using var backend = new CpuReferenceBackend(config, Fixture.Weights, ropeScaling: RopeScalingMode.Adaptive, ropeSwitch: RopeSwitchMethod.Rerotate);
        int[] text = Tokens(160, 10);

        using (var plain = backend.CreateSequence())
            plain.Append(text.AsSpan(0, 100)); // plain: publishes block [0, 64)
        // Re-rotation turns cached plain blocks after copying them, so a sequence that ends past the switch takes them.
        using (var longOne = backend.CreateSequence())
        {
            Assert.That(longOne.AttachCachedPrefix(text.AsSpan(0, 150)), Is.EqualTo(64));
            longOne.Append(text.AsSpan(64, 86));
        }

        // A sequence whose keys were turned (to YaRN and back to plain) publishes nothing: they are close to, not exactly, plain keys.
        int[] other = Tokens(160, 12);
        using (var turned = backend.CreateSequence())
        {
            turned.Append(other.AsSpan(0, 150)); // YaRN from position 0: nothing published
            turned.Truncate(100);
            turned.Append(other.AsSpan(100, 1)); // 101 positions: turned back to plain
            Assert.That(turned.RecomputesAt(101), Is.False);
        }
        using var probe = backend.CreateSequence();
        Assert.That(probe.AttachCachedPrefix(other.AsSpan(0, 101)), Is.Zero, "the turned sequence's plain-looking blocks were not published");
    }
}

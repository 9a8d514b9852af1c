using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Reference;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;
using static QwQ.Cuda.Tests.Reference.AdaptiveYarnReferences;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>
/// Length-adaptive YaRN on the CPU reference backend, against the reference model built without rope_scaling (short
/// sequences) and the static-YaRN reference over the same whole sequence (sequences past the switch). tiny-yarn's
/// original_max_position_embeddings is 16, so sequences cross it within a few dozen tokens.
/// </summary>
public class AdaptiveYarnBackendTests
{
    private const double Tolerance = 1e-4;

    private static CpuReferenceBackend Backend(RopeScalingMode? mode = RopeScalingMode.Adaptive, int? switchAt = null, int? kvPoolPositions = null) =>
        new(Fixture.Config, Fixture.Weights, samplerSeed: 3, kvPoolPositions: kvPoolPositions, ropeScaling: mode, ropeSwitchPosition: switchAt);

    private static int[] Text(int count, int seed) => Tokens(count, seed); // tiny-yarn's vocabulary is 256 too

    [Test]
    public void TheFixtureHasASmallOriginalContext()
    {
        Assert.That(Fixture.Config.RopeScaling!.OriginalMaxPositionEmbeddings, Is.EqualTo(Switch));
        // Plain and YaRN really differ below the switch, or the comparisons below would prove nothing.
        var tokens = Text(8, 1);
        Assert.That(RelErr(LastLogits(NoYarn.Value, tokens), LastLogits(StaticYarn.Value, tokens)), Is.GreaterThan(1e-2));
    }

    [Test]
    public void AShortSequenceIsExactlyTheModelWithoutYarn()
    {
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        var tokens = Text(Switch, 2);
        seq.Append(tokens.AsSpan(0, 9));
        Assert.That(Last(seq), Is.EqualTo(LastLogits(NoYarn.Value, tokens.AsSpan(0, 9))), "prefill");
        for (int n = 10; n <= Switch; n++)
        {
            seq.Append(tokens.AsSpan(n - 1, 1));
            Assert.That(Last(seq), Is.EqualTo(LastLogits(NoYarn.Value, tokens.AsSpan(0, n))), $"decode to length {n} (the switch is {Switch})");
        }
    }

    [Test]
    public void ASequenceCrossingTheSwitchInDecodeEqualsStaticYarnOverTheWholeSequence()
    {
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        var tokens = Text(40, 3);
        seq.Append(tokens.AsSpan(0, 12));
        for (int n = 13; n <= tokens.Length; n++)
        {
            seq.Append(tokens.AsSpan(n - 1, 1));
            if (n <= Switch)
                Assert.That(Last(seq), Is.EqualTo(LastLogits(NoYarn.Value, tokens.AsSpan(0, n))), $"length {n}: still plain");
            else
                Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens.AsSpan(0, n))), Is.LessThanOrEqualTo(Tolerance), $"length {n}: switched");
        }
    }

    [Test]
    public void AStepThatCrossesTheSwitchMidChunkSwitchesBeforeIt()
    {
        // The scheduler's prefill chunks go through Step: the chunk that takes the sequence past the switch re-rotates
        // what was cached and runs YaRN for all its rows.
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        var tokens = Text(30, 4);
        backend.Step([new SequenceChunk(seq, tokens[..10])]);
        backend.Step([new SequenceChunk(seq, tokens[10..25])]);
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens.AsSpan(0, 25))), Is.LessThanOrEqualTo(Tolerance));
        backend.Step([new SequenceChunk(seq, tokens[25..])]);
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens)), Is.LessThanOrEqualTo(Tolerance));
    }

    [Test]
    public void APromptLongerThanTheSwitchIsStaticYarnFromPositionZero()
    {
        // Append knows where it ends, so a long prompt runs YaRN from its first row: the very computation of the
        // static-YaRN forward, nothing re-rotated.
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        var tokens = Text(27, 5);
        seq.Append(tokens);
        Assert.That(Last(seq), Is.EqualTo(LastLogits(StaticYarn.Value, tokens)));
    }

    [Test]
    public void InABatchEverySequenceSwitchesOnItsOwn()
    {
        var shortText = Text(14, 6);  // prefill 4, then 10 decode steps: ends at 14, plain throughout
        var longText = Text(24, 7);   // prefill 12, then 12 decode steps: crosses 16 at the fifth
        const int shortPrefill = 4, longPrefill = 12, steps = 10;

        List<float[]> Alone(int[] text, int prefill)
        {
            using var backend = Backend();
            using var seq = backend.CreateSequence();
            seq.Append(text.AsSpan(0, prefill));
            var logits = new List<float[]>();
            for (int i = 0; i < steps; i++)
            {
                backend.Step([new SequenceChunk(seq, text[(prefill + i)..(prefill + i + 1)])]);
                logits.Add(Last(seq));
            }
            return logits;
        }
        var shortAlone = Alone(shortText, shortPrefill);
        var longAlone = Alone(longText, longPrefill);

        using var shared = Backend();
        using var a = shared.CreateSequence();
        using var b = shared.CreateSequence();
        a.Append(shortText.AsSpan(0, shortPrefill));
        b.Append(longText.AsSpan(0, longPrefill));
        for (int i = 0; i < steps; i++)
        {
            shared.Step([
                new SequenceChunk(a, shortText[(shortPrefill + i)..(shortPrefill + i + 1)]),
                new SequenceChunk(b, longText[(longPrefill + i)..(longPrefill + i + 1)]),
            ]);
            Assert.That(Last(a), Is.EqualTo(shortAlone[i]), $"short sequence, step {i} (length {a.Length}: plain)");
            Assert.That(Last(b), Is.EqualTo(longAlone[i]), $"long sequence, step {i} (length {b.Length}: {(b.Length > Switch ? "YaRN" : "plain")})");
        }
        Assert.That((a.Length, b.Length), Is.EqualTo((shortPrefill + steps, longPrefill + steps)));
        // And what each gets alone is the right reference.
        Assert.That(shortAlone[^1], Is.EqualTo(LastLogits(NoYarn.Value, shortText)));
        Assert.That(RelErr(longAlone[^1], LastLogits(StaticYarn.Value, longText[..(longPrefill + steps)])), Is.LessThanOrEqualTo(Tolerance));
    }

    [Test]
    public void TruncatingBelowTheSwitchTurnsTheKeysBackToPlain()
    {
        using var backend = Backend();
        using var seq = backend.CreateSequence();
        var tokens = Text(30, 8);
        seq.Append(tokens.AsSpan(0, 10));
        for (int n = 11; n <= 24; n++) seq.Append(tokens.AsSpan(n - 1, 1)); // switched at 17

        // Still above the switch: the keys stay YaRN.
        seq.Truncate(20);
        seq.Append(tokens.AsSpan(20, 1));
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens.AsSpan(0, 21))), Is.LessThanOrEqualTo(Tolerance));

        // Below: the next step turns them back, and the sequence is the plain model again (up to the rounding of two turns).
        seq.Truncate(9);
        seq.Append(tokens.AsSpan(9, 3));
        Assert.That(RelErr(Last(seq), LastLogits(NoYarn.Value, tokens.AsSpan(0, 12))), Is.LessThanOrEqualTo(Tolerance));

        // And forward again past the switch.
        for (int n = 13; n <= tokens.Length; n++) seq.Append(tokens.AsSpan(n - 1, 1));
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens)), Is.LessThanOrEqualTo(Tolerance));
    }

    [Test]
    public void AForkThatSwitchesLeavesTheSharedBlocksToTheOther()
    {
        using var backend = Backend();
        using var parent = backend.CreateSequence();
        var parentText = Text(16, 9);
        var forkText = parentText[..12].Concat(Text(16, 10)).ToArray(); // same first 12, then its own way past 16
        parent.Append(parentText.AsSpan(0, 12));
        using var fork = parent.Fork();

        fork.Append(forkText.AsSpan(12, 10)); // to 22: switches, copying the shared blocks before turning them
        Assert.That(RelErr(Last(fork), LastLogits(StaticYarn.Value, forkText.AsSpan(0, 22))), Is.LessThanOrEqualTo(Tolerance));

        for (int n = 13; n <= parentText.Length; n++) parent.Append(parentText.AsSpan(n - 1, 1));
        Assert.That(Last(parent), Is.EqualTo(LastLogits(NoYarn.Value, parentText)), "the parent's keys were not turned under it");

        // A fork of a switched sequence shares YaRN keys, and both carry on as YaRN.
        using var grandchild = fork.Fork();
        grandchild.Append(forkText.AsSpan(22, 4));
        fork.Append(forkText.AsSpan(22, 2));
        Assert.That(RelErr(Last(grandchild), LastLogits(StaticYarn.Value, forkText.AsSpan(0, 26))), Is.LessThanOrEqualTo(Tolerance));
        Assert.That(RelErr(Last(fork), LastLogits(StaticYarn.Value, forkText.AsSpan(0, 24))), Is.LessThanOrEqualTo(Tolerance));

        // Truncated back below the switch, the fork turns its own copies back; the grandchild, sharing them, is untouched.
        fork.Truncate(10);
        fork.Append(forkText.AsSpan(10, 2));
        Assert.That(RelErr(Last(fork), LastLogits(NoYarn.Value, forkText.AsSpan(0, 12))), Is.LessThanOrEqualTo(Tolerance));
        grandchild.Append(forkText.AsSpan(26, 1));
        Assert.That(RelErr(Last(grandchild), LastLogits(StaticYarn.Value, forkText.AsSpan(0, 27))), Is.LessThanOrEqualTo(Tolerance));
    }

    [Test]
    public void TheSwitchPositionMoves()
    {
        using var backend = Backend(switchAt: 5);
        using var seq = backend.CreateSequence();
        var tokens = Text(12, 11);
        seq.Append(tokens.AsSpan(0, 5));
        Assert.That(Last(seq), Is.EqualTo(LastLogits(NoYarn.Value, tokens.AsSpan(0, 5))));
        seq.Append(tokens.AsSpan(5, 1));
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens.AsSpan(0, 6))), Is.LessThanOrEqualTo(Tolerance));
    }

    [Test]
    public void StaticAndOffRunOneRopeEverywhere()
    {
        var tokens = Text(24, 12);
        foreach (var (mode, reference) in new[] { (RopeScalingMode.Static, StaticYarn.Value), (RopeScalingMode.Off, NoYarn.Value) })
        {
            using var backend = Backend(mode);
            using var seq = backend.CreateSequence();
            seq.Append(tokens.AsSpan(0, 4));
            Assert.That(Last(seq), Is.EqualTo(LastLogits(reference, tokens.AsSpan(0, 4))), $"{mode}: short");
            seq.Append(tokens.AsSpan(4));
            Assert.That(Last(seq), Is.EqualTo(LastLogits(reference, tokens)), $"{mode}: long");
        }
    }

    [Test]
    public void ReRotatingInsteadOfRecomputingIsExactInTheFirstLayerOnly()
    {
        // Why the switch recomputes (RopeSwitchMethod): turning the cached keys in place fixes their angles, but from the
        // second layer on, K and V come from hidden states that plain-RoPE attention produced.
        double Deviation(ModelConfig config, CpuWeights weights)
        {
            using var backend = new CpuReferenceBackend(config, weights, ropeScaling: RopeScalingMode.Adaptive, ropeSwitch: RopeSwitchMethod.Rerotate);
            using var seq = backend.CreateSequence();
            var tokens = Text(30, 14);
            seq.Append(tokens.AsSpan(0, 12));
            for (int n = 13; n <= tokens.Length; n++) seq.Append(tokens.AsSpan(n - 1, 1));
            var l = new float[config.VocabSize];
            seq.CopyLastLogits(l);
            int v = config.VocabSize;
            return RelErr(l, new Qwen2CpuModel(config, weights).Forward(tokens).AsSpan((tokens.Length - 1) * v, v));
        }
        var oneLayer = Fixture.Config with { NumHiddenLayers = 1 };
        double one = Deviation(oneLayer, CpuWeights.Random(oneLayer, seed: 5));
        double two = Deviation(Fixture.Config, Fixture.Weights);
        TestContext.Out.WriteLine($"re-rotated cache against static YaRN, logits: 1 layer {one:E2}, 2 layers (tiny-yarn) {two:E2}");
        Assert.That(one, Is.LessThanOrEqualTo(1e-5));
        Assert.That(two, Is.GreaterThan(1e-3));
    }

    [Test]
    public void LoadTakesTheModeFromTheEngineOptions()
    {
        using var adaptive = CpuReferenceBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName), new EngineOptions { RopeScaling = RopeScalingMode.Adaptive, RopeSwitchPosition = 8 });
        Assert.That(adaptive.RopeScaling, Is.EqualTo(RopeScalingMode.Adaptive));
        using var byDefault = CpuReferenceBackend.Load(Fixture.Config, ModelFixtures.Dir(FixtureName));
        Assert.That(byDefault.RopeScaling, Is.EqualTo(RopeScalingMode.Adaptive), "the default where the config has YaRN, as on the GPU engine");
        using var noYarn = CpuReferenceBackend.Load(Fixture.Config with { RopeScaling = null }, ModelFixtures.Dir(FixtureName));
        Assert.That(noYarn.RopeScaling, Is.EqualTo(RopeScalingMode.Off));

        using var seq = adaptive.CreateSequence();
        var tokens = Text(9, 15);
        seq.Append(tokens);
        Assert.That(RelErr(Last(seq), LastLogits(StaticYarn.Value, tokens)), Is.LessThanOrEqualTo(Tolerance), "past the switch at 8");
    }

    [Test]
    public void AdaptiveOnAModelWithoutYarnIsRefused()
    {
        var (config, weights) = ModelFixtures.Load("tiny-gqa");
        Assert.That(config.RopeScaling, Is.Null);
        var e = Assert.Throws<OptionException>(() => new CpuReferenceBackend(config, weights, ropeScaling: RopeScalingMode.Adaptive));
        Assert.That(e!.Message, Does.Contain("no YaRN rope_scaling"));
        e = Assert.Throws<OptionException>(() => CpuReferenceBackend.Load(Fixture.Config, null, new EngineOptions { RopeScaling = RopeScalingMode.Adaptive, RopeSwitchPosition = 17 }));
        Assert.That(e!.Message, Does.Contain("--rope-switch 17 must be at most the model's original_max_position_embeddings, 16"));
    }
}

/// <summary>
/// Adaptive YaRN and the prefix cache, on a small random model with original_max_position_embeddings 128 so that whole
/// 64-position blocks fit below the switch: only plain blocks are published, and a long sequence that attached cached
/// plain blocks copies them before it turns them.
/// </summary>
public class AdaptiveYarnPrefixCacheTests
{
    private static readonly ModelConfig Small = ModelPresets.Get("qwq-32b") with
    {
        HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 16, VocabSize = 50, MaxPositionEmbeddings = 512,
        RopeScaling = new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 128 },
    };
    private static readonly CpuWeights Weights = CpuWeights.Random(Small, seed: 4);

    private static float[] Last(ISequence s)
    {
        var l = new float[Small.VocabSize];
        s.CopyLastLogits(l);
        return l;
    }

    private static float[] Reference(ModelConfig config, ReadOnlySpan<int> tokens)
    {
        int v = config.VocabSize;
        return new Qwen2CpuModel(config, Weights).Forward(tokens).AsSpan((tokens.Length - 1) * v, v).ToArray();
    }

    [Test]
    public void OnlyPlainBlocksAreSharedAndALongSequenceCopiesThemBeforeTurning()
    {
        using var backend = new CpuReferenceBackend(Small, Weights, ropeScaling: RopeScalingMode.Adaptive);
        var rng = new Random(1);
        int[] text = [.. Enumerable.Range(0, 200).Select(_ => rng.Next(Small.VocabSize))];
        var noYarn = Small with { RopeScaling = null };

        using (var first = backend.CreateSequence())
        {
            first.Append(text.AsSpan(0, 100));                  // plain; publishes block [0, 64)
        }

        // A sequence whose tokens end past the switch takes none of them: it runs YaRN from position 0 (a plain block it
        // attached would only be copied and computed again).
        using var longOne = backend.CreateSequence();
        Assert.That(longOne.AttachCachedPrefix(text.AsSpan(0, 150)), Is.EqualTo(0));
        Assert.That(longOne.RecomputesAt(150), Is.False, "empty: nothing to run again");
        longOne.Append(text.AsSpan(0, 150));
        Assert.That(BatchingFixtures.RelErr(Last(longOne), Reference(Small, text.AsSpan(0, 150))), Is.LessThanOrEqualTo(1e-4));

        // The cached block still holds plain keys, and the long sequence's YaRN blocks [0, 128) were not published.
        using var shortOne = backend.CreateSequence();
        Assert.That(shortOne.AttachCachedPrefix(text.AsSpan(0, 120)), Is.EqualTo(64));
        shortOne.Append(text.AsSpan(64, 56));
        Assert.That(BatchingFixtures.RelErr(Last(shortOne), Reference(noYarn, text.AsSpan(0, 120))), Is.LessThanOrEqualTo(1e-5));
    }

    [Test]
    public void TheCopiesASwitchNeedsAreReservedWithItsNewBlocksAllOrNothing()
    {
        // Three blocks. A sequence fills block A (64 positions, plain), which goes into the prefix cache. Growing it to
        // 134 needs two fresh blocks, and the switch a copy of A as well (a cached block is never rewritten): three, with
        // two free. The step fails as a pool-exhausted step does, before taking or changing anything, and the sequence
        // carries on plain.
        using var backend = new CpuReferenceBackend(Small, Weights, kvPoolPositions: 192, ropeScaling: RopeScalingMode.Adaptive);
        var rng = new Random(2);
        int[] text = [.. Enumerable.Range(0, 134).Select(_ => rng.Next(Small.VocabSize))];
        using var seq = backend.CreateSequence();
        seq.Append(text.AsSpan(0, 64));
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(2));
        Assert.Throws<KvPoolExhaustedException>(() => seq.Append(text.AsSpan(64, 70)));
        Assert.That((seq.Length, backend.KvPool.FreeBlocks), Is.EqualTo((64, 2)));

        seq.Append(text.AsSpan(64, 64)); // to 128, the switch: still plain, one fresh block
        Assert.That(BatchingFixtures.RelErr(Last(seq), Reference(Small with { RopeScaling = null }, text.AsSpan(0, 128))), Is.LessThanOrEqualTo(1e-5));
    }
}

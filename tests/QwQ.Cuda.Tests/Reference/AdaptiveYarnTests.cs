using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Reference;

/// <summary>
/// Length-adaptive YaRN's pure parts: re-rotating a cached key from plain RoPE to YaRN (and back), and resolving the
/// rope options against a config.
/// </summary>
public class AdaptiveYarnTests
{
    private static readonly ModelConfig QwqYarn = ModelPresets.Get("qwq-32b-yarn");

    /// <summary>max |a − b| / max |b| over one key.</summary>
    private static double MaxRel(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double diff = 0, scale = 0;
        for (int i = 0; i < a.Length; i++)
        {
            diff = Math.Max(diff, Math.Abs((double)a[i] - b[i]));
            scale = Math.Max(scale, Math.Abs((double)b[i]));
        }
        return diff / scale;
    }

    private static float[] RandomKeys(Random rng, int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1))];

    private static IEnumerable<int> Positions()
    {
        int[] fixedOnes = [0, 1, 2, 15, 16, 17, 4095, 8192, 32767, 32768, 32769, 65536, 100_003, 131_071, 131_072];
        var rng = new Random(5);
        return fixedOnes.Concat(Enumerable.Range(0, 40).Select(_ => rng.Next(131_073)));
    }

    [Test]
    public void RerotatingAPlainKeyGivesTheKeyYarnWritesAtTheSamePosition()
    {
        var plain = Rope.PlainParameters(QwqYarn);
        var yarn = Rope.Parameters(QwqYarn);
        Assert.That(yarn.AttentionFactor, Is.GreaterThan(1f), "QwQ's YaRN scales cos and sin");
        int heads = QwqYarn.NumKeyValueHeads, D = QwqYarn.HeadDim;
        var rng = new Random(1);
        double worst = 0;
        foreach (int p in Positions())
        {
            var raw = RandomKeys(rng, heads * D);          // k before RoPE [heads, D]
            var cached = raw.ToArray();
            CpuOps.ApplyRope(cached, 1, heads, D, p, plain.InverseFrequencies, plain.AttentionFactor);
            var expected = raw.ToArray();                  // what static YaRN writes at p
            CpuOps.ApplyRope(expected, 1, heads, D, p, yarn.InverseFrequencies, yarn.AttentionFactor);

            AdaptiveYarn.Rerotate(cached, p, plain, yarn);
            for (int h = 0; h < heads; h++)
            {
                double rel = MaxRel(cached.AsSpan(h * D, D), expected.AsSpan(h * D, D));
                worst = Math.Max(worst, rel);
                Assert.That(rel, Is.LessThanOrEqualTo(1e-5), $"position {p}, head {h}");
            }
        }
        TestContext.Out.WriteLine($"worst relative difference over positions up to 131072: {worst:E2}");
    }

    [Test]
    public void RerotatingBackReturnsThePlainKey()
    {
        var plain = Rope.PlainParameters(QwqYarn);
        var yarn = Rope.Parameters(QwqYarn);
        int D = QwqYarn.HeadDim;
        var rng = new Random(2);
        foreach (int p in Positions())
        {
            var key = RandomKeys(rng, D);
            CpuOps.ApplyRope(key, 1, 1, D, p, plain.InverseFrequencies, plain.AttentionFactor);
            var turned = key.ToArray();
            AdaptiveYarn.Rerotate(turned, p, plain, yarn);
            AdaptiveYarn.Rerotate(turned, p, yarn, plain);
            Assert.That(MaxRel(turned, key), Is.LessThanOrEqualTo(1e-6), $"position {p}");
        }
    }

    [Test]
    public void PairsYarnKeepsTurnOnlyByTheAttentionFactor()
    {
        // High-frequency pairs extrapolate (inv_freq unchanged), so the re-rotation there is a pure scale: no angle error
        // can creep in however far the position.
        var plain = Rope.PlainParameters(QwqYarn);
        var yarn = Rope.Parameters(QwqYarn);
        int half = QwqYarn.HeadDim / 2;
        var cos = new double[half];
        var sin = new double[half];
        AdaptiveYarn.Coefficients(131_071, plain, yarn, cos, sin);
        for (int i = 0; i < half && yarn.InverseFrequencies[i] == plain.InverseFrequencies[i]; i++)
            Assert.That((cos[i], sin[i]), Is.EqualTo(((double)yarn.AttentionFactor, 0.0)), $"pair {i}");
        Assert.That(yarn.InverseFrequencies[0], Is.EqualTo(plain.InverseFrequencies[0]));
    }

    [Test]
    public void MismatchedRopesAreRefused()
    {
        var a = Rope.PlainParameters(QwqYarn);
        var b = new RopeParameters(new float[32], 1f);
        Assert.Throws<ArgumentException>(() => AdaptiveYarn.Rerotate(new float[128], 3, a, b));
        Assert.Throws<ArgumentException>(() => AdaptiveYarn.Rerotate(new float[100], 3, a, a));
        Assert.Throws<ArgumentOutOfRangeException>(() => AdaptiveYarn.Rerotate(new float[128], -1, a, a));
    }

    // ---- options ------------------------------------------------------------------------------

    [Test]
    public void TheDefaultWithYarnIsAdaptiveSwitchingPastOriginalMax()
    {
        var plan = RopePlan.Resolve(QwqYarn, null, null);
        Assert.That((plan.Mode, plan.SwitchPosition), Is.EqualTo((RopeScalingMode.Adaptive, 32768)));
        Assert.That(plan.ForLength(32768).InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(ModelPresets.Get("qwq-32b"))));
        Assert.That(plan.ForLength(32768).AttentionFactor, Is.EqualTo(1f));
        Assert.That(plan.ForLength(32769).InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(QwqYarn)));
        Assert.That(plan.ForLength(32769).AttentionFactor, Is.EqualTo(Rope.AttentionFactor(QwqYarn)));
        Assert.That(RopePlan.Resolve(QwqYarn, null, 8192).SwitchPosition, Is.EqualTo(8192), "--rope-switch alone moves the default's switch");
    }

    [Test]
    public void StaticIsYarnEverywhere()
    {
        var plan = RopePlan.Resolve(QwqYarn, RopeScalingMode.Static, null);
        Assert.That(plan.ForLength(1).InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(QwqYarn)));
        Assert.That(plan.ForLength(1).AttentionFactor, Is.EqualTo(Rope.AttentionFactor(QwqYarn)));
    }

    [Test]
    public void AdaptiveSwitchesPastOriginalMaxByDefault()
    {
        var plan = RopePlan.Resolve(QwqYarn, RopeScalingMode.Adaptive, null);
        Assert.That(plan.SwitchPosition, Is.EqualTo(32768));
        Assert.That(plan.ForLength(32768), Is.SameAs(plan.Plain));
        Assert.That(plan.ForLength(32769), Is.SameAs(plan.Yarn));
        Assert.That(plan.Plain.AttentionFactor, Is.EqualTo(1f));
        Assert.That(plan.Plain.InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(ModelPresets.Get("qwq-32b"))));

        var at8k = RopePlan.Resolve(QwqYarn, RopeScalingMode.Adaptive, 8192);
        Assert.That((at8k.ForLength(8192), at8k.ForLength(8193)), Is.EqualTo((at8k.Plain, at8k.Yarn)));
        var at1 = RopePlan.Resolve(QwqYarn, RopeScalingMode.Adaptive, 1);
        Assert.That((at1.ForLength(1), at1.ForLength(2)), Is.EqualTo((at1.Plain, at1.Yarn)));
    }

    [Test]
    public void OffRunsPlainRopeEverywhere()
    {
        var plan = RopePlan.Resolve(QwqYarn, RopeScalingMode.Off, null);
        Assert.That((plan.ForLength(1), plan.ForLength(131072)), Is.EqualTo((plan.Plain, plan.Plain)));
    }

    [TestCase(0, "--rope-switch 0 must be at least 1")]
    [TestCase(-5, "--rope-switch -5 must be at least 1")]
    [TestCase(32769, "--rope-switch 32769 must be at most the model's original_max_position_embeddings, 32768")]
    public void TheSwitchMustFitThePlainModel(int at, string message)
    {
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(QwqYarn, RopeScalingMode.Adaptive, at));
        Assert.That(e!.Message, Does.Contain(message));
    }

    [TestCase(RopeScalingMode.Static)]
    [TestCase(RopeScalingMode.Off)]
    public void TheSwitchBelongsToAdaptiveOnly(RopeScalingMode mode)
    {
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(QwqYarn, mode, 8192));
        Assert.That(e!.Message, Does.Contain("--rope-switch 8192 applies only to --rope-scaling adaptive"));
    }

    [Test]
    public void RerotationIsAnAdaptiveSwitchMethod()
    {
        Assert.That(RopePlan.Resolve(QwqYarn, null, null).Method, Is.EqualTo(RopeSwitchMethod.Recompute), "the default");
        Assert.That(RopePlan.Resolve(QwqYarn, null, null, RopeSwitchMethod.Rerotate).Method, Is.EqualTo(RopeSwitchMethod.Rerotate));
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(QwqYarn, RopeScalingMode.Static, null, RopeSwitchMethod.Rerotate));
        Assert.That(e!.Message, Does.Contain("--rope-switch-method rerotate").And.Contain("the mode is static"));
        e = Assert.Throws<OptionException>(() => RopePlan.Resolve(ModelPresets.Get("qwq-32b"), null, null, RopeSwitchMethod.Rerotate));
        Assert.That(e!.Message, Does.Contain("--rope-switch-method rerotate").And.Contain("no YaRN rope_scaling"));
    }

    [Test]
    public void ASequenceRecomputesWhenItsLengthAsksForTheOtherRopeAndTheSwitchRecomputes()
    {
        // Both backends' RecomputesAt and AttachCachedPrefix decide through these two.
        var recompute = RopePlan.Resolve(QwqYarn, null, 8192);
        var rerotate = RopePlan.Resolve(QwqYarn, null, 8192, RopeSwitchMethod.Rerotate);
        foreach (var plan in new[] { recompute, rerotate })
        {
            bool recomputes = plan.Method == RopeSwitchMethod.Recompute;
            Assert.That(plan.Recomputes(0, plan.Plain, 9000), Is.False, "an empty sequence has nothing to run again");
            Assert.That(plan.Recomputes(100, plan.Plain, 8192), Is.False, "still plain");
            Assert.That(plan.Recomputes(100, plan.Plain, 8193), Is.EqualTo(recomputes), "past the switch");
            Assert.That(plan.Recomputes(9000, plan.Yarn, 9001), Is.False, "already YaRN");
            Assert.That(plan.Recomputes(9000, plan.Yarn, 100), Is.EqualTo(recomputes), "truncated back below it");
            Assert.That(plan.Recomputes(100, null, 101), Is.True, "a failed step left the keys in no rope: only a recompute mends them");
            Assert.That(plan.PrefixCacheServes(8192), Is.True);
            Assert.That(plan.PrefixCacheServes(8193), Is.EqualTo(!recomputes), "plain blocks are re-rotated, not run again");
        }
        var fixedRope = RopePlan.Resolve(QwqYarn, RopeScalingMode.Static, null);
        Assert.That((fixedRope.Recomputes(100, fixedRope.Yarn, 50_000), fixedRope.PrefixCacheServes(50_000)), Is.EqualTo((false, true)));
    }

    [Test]
    public void TheSwitchNeedsYarnToSwitchTo()
    {
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(ModelPresets.Get("qwq-32b"), null, 8192));
        Assert.That(e!.Message, Does.Contain("--rope-switch 8192").And.Contain("no YaRN rope_scaling").And.Contain("drop --rope-switch"));
    }

    [Test]
    public void WithoutYarnStaticAndOffArePlainAndAdaptiveIsRefused()
    {
        var plainConfig = ModelPresets.Get("qwq-32b");
        foreach (var mode in new RopeScalingMode?[] { null, RopeScalingMode.Static, RopeScalingMode.Off })
        {
            var plan = RopePlan.Resolve(plainConfig, mode, null);
            Assert.That(plan.Mode, Is.EqualTo(RopeScalingMode.Off), $"{mode}");
            Assert.That(plan.ForLength(100_000).InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(plainConfig)));
        }
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(plainConfig, RopeScalingMode.Adaptive, null));
        Assert.That(e!.Message, Does.Contain("no YaRN rope_scaling").And.Contain("\"rope_scaling\"").And.Contain("qwq-32b-yarn"));
    }

    [Test]
    public void AnUndefinedModeIsRefused()
    {
        var e = Assert.Throws<OptionException>(() => RopePlan.Resolve(QwqYarn, (RopeScalingMode)7, null));
        Assert.That(e!.Message, Does.Contain("adaptive, static or off"));
    }

    // ---- the GPU engine's plan ----------------------------------------------------------------------

    [Test]
    public void TheGpuEngineRunsAdaptiveByDefaultStaticWhenAskedAndPlainRopeWhenOff()
    {
        Assert.That(CudaBackend.RopePlanFor(QwqYarn, new EngineOptions()).Mode, Is.EqualTo(RopeScalingMode.Adaptive));
        var yarn = CudaBackend.RopePlanFor(QwqYarn, new EngineOptions { RopeScaling = RopeScalingMode.Static }).ForLength(0);
        Assert.That(yarn.InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(QwqYarn)));
        Assert.That(yarn.AttentionFactor, Is.EqualTo(Rope.AttentionFactor(QwqYarn)));
        var off = CudaBackend.RopePlanFor(QwqYarn, new EngineOptions { RopeScaling = RopeScalingMode.Off }).ForLength(100_000);
        var noYarn = ModelPresets.Get("qwq-32b");
        Assert.That(off.InverseFrequencies, Is.EqualTo(Rope.InverseFrequencies(noYarn)));
        Assert.That(off.AttentionFactor, Is.EqualTo(1f));
    }

    [Test]
    public void TheGpuEngineRunsAdaptivePlainUpToTheSwitchAndYarnPast()
    {
        var plan = CudaBackend.RopePlanFor(QwqYarn, new EngineOptions { RopeScaling = RopeScalingMode.Adaptive, RopeSwitchPosition = 8192 });
        Assert.That(plan.ForLength(8192), Is.SameAs(plan.Plain));
        Assert.That(plan.ForLength(8193), Is.SameAs(plan.Yarn));
        Assert.That(plan.Plain.AttentionFactor, Is.EqualTo(1f));
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>
/// The memory plan's row-major fp8 copies for the FP8 prefill GEMM (<see cref="EngineOptions.Fp8PrefillCopy"/>, no GPU
/// needed): their size, Auto keeping them only where the KV pool still holds the model's longest context and half its
/// positions beside them (an H200-sized card with QwQ-32B, not an 80 GB one), Keep taking them out of the pool or failing with the option's name,
/// and nothing kept where the FP8 GEMM does not run or the weights are not fp8.
/// </summary>
public sealed class Fp8PrefillCopyPlanTests
{
    private static readonly ModelConfig Qwq = ModelPresets.Get("qwq-32b");
    private const long GiB = 1L << 30;

    private static MemoryPlan Plan(int cardGiB, Fp8PrefillCopy copy, WeightKind kind = WeightKind.Fp8, bool fp8Gemm = true) =>
        MemoryPlan.Create(RankShape.Whole(Qwq), MemoryTable.AssumedFreeBytes(cardGiB * GiB), new EngineOptions { Fp8PrefillCopy = copy }, kind, fp8Gemm);

    [Test]
    public void TheCopiesAreEveryLayerWeightsCodesOnce()
    {
        long perLayer = 7168L * 5120 + 5120L * 5120 + 55296L * 5120 + 5120L * 27648; // qkv, o, gate_up, down: all multiples of 256
        Assert.That(ModelWeights.Fp8RowMajorBytes(RankShape.Whole(Qwq)), Is.EqualTo(64 * perLayer));
        var tiny = ModelConfig.Parse(CudaModelTests.TinyConfigJson(), "config.json");
        Assert.That(ModelWeights.Fp8RowMajorBytes(RankShape.Whole(tiny)) % 256, Is.Zero, "each copy starts on a 256-byte boundary");
    }

    [Test]
    public void AutoKeepsThemWhereThePoolStillHoldsTheLongestContext()
    {
        var h200 = Plan(141, Fp8PrefillCopy.Auto);
        Assert.That(h200.Fp8PrefillCopyBytes, Is.EqualTo(ModelWeights.Fp8RowMajorBytes(RankShape.Whole(Qwq))));
        Assert.That(h200.KvPoolPositions, Is.GreaterThanOrEqualTo(MemoryPlan.ModelMaxPositions(Qwq)));
        Assert.That(h200.MaxContext, Is.EqualTo(MemoryPlan.ModelMaxPositions(Qwq)));
        var h100 = Plan(80, Fp8PrefillCopy.Auto);
        Assert.That(h100.Fp8PrefillCopyBytes, Is.Zero, "an 80 GB card keeps its pool (the copies would take three quarters of it)");
        Assert.That(h100.KvPoolPositions, Is.EqualTo(Plan(80, Fp8PrefillCopy.Untile).KvPoolPositions));
    }

    [Test]
    public void KeepTakesThemOutOfThePoolOrFailsNamingTheOption()
    {
        var keep = Plan(80, Fp8PrefillCopy.Keep);
        var untile = Plan(80, Fp8PrefillCopy.Untile);
        Assert.That(keep.Fp8PrefillCopyBytes, Is.GreaterThan(29 * GiB));
        Assert.That(untile.Fp8PrefillCopyBytes, Is.Zero);
        long fewer = (untile.KvPoolPositions - keep.KvPoolPositions) * keep.KvBytesPerToken;
        Assert.That(fewer, Is.GreaterThanOrEqualTo(keep.Fp8PrefillCopyBytes - untile.KvBytesPerToken * 64 - (untile.WorkspaceBytes - keep.WorkspaceBytes)),
            "the pool gave up the copies' bytes");
        var e = Assert.Throws<CudaOutOfMemoryPlanException>(() => Plan(48, Fp8PrefillCopy.Keep));
        Assert.That(e!.Message, Does.Contain("--fp8-prefill-copy"));
        Assert.That(Plan(48, Fp8PrefillCopy.Auto).Fp8PrefillCopyBytes, Is.Zero, "auto never fails for the copies");
    }

    [Test]
    public void WithYarnAn80GbCardCannotHoldTheLongestContextBesideThem()
    {
        var yarn = ModelPresets.Get("qwq-32b-yarn");
        var plan = MemoryPlan.Create(RankShape.Whole(yarn), MemoryTable.AssumedFreeBytes(80 * GiB), new EngineOptions(), WeightKind.Fp8, fp8Gemm: true);
        Assert.That(plan.Fp8PrefillCopyBytes, Is.Zero);
        var h200 = MemoryPlan.Create(RankShape.Whole(yarn), MemoryTable.AssumedFreeBytes(141 * GiB), new EngineOptions(), WeightKind.Fp8, fp8Gemm: true);
        Assert.That(h200.Fp8PrefillCopyBytes, Is.GreaterThan(0), "131,072 positions still fit on an H200");
        Assert.That(h200.MaxContext, Is.EqualTo(131072));
    }

    [Test]
    public void QwqInfosTableForThePresentGpuCountsTheCopiesWhereALoadWouldKeepThem()
    {
        long free = MemoryTable.AssumedFreeBytes(141 * GiB);
        var o = new EngineOptions();
        Assert.That(MemoryTable.ForFreeBytes(Qwq, free, o, computeCapabilityMajor: 9)[WeightKind.Fp8].Plan!.Fp8PrefillCopyBytes, Is.GreaterThan(0), "H200");
        Assert.That(MemoryTable.ForFreeBytes(Qwq, free, o, computeCapabilityMajor: 8)[WeightKind.Fp8].Plan!.Fp8PrefillCopyBytes, Is.Zero, "the bf16 detour off sm_90");
        Assert.That(MemoryTable.ForFreeBytes(Qwq, free, o)[WeightKind.Fp8].Plan!.Fp8PrefillCopyBytes, Is.Zero, "a card known by its size only");
        Assert.That(MemoryTable.ForFreeBytes(Qwq, free, o with { Fp8Prefill = Fp8PrefillGemm.Dequantize }, 9)[WeightKind.Fp8].Plan!.Fp8PrefillCopyBytes, Is.Zero);
        Assert.That(MemoryTable.ForFreeBytes(Qwq, free, o, 9)[WeightKind.Bf16].Plan!.Fp8PrefillCopyBytes, Is.Zero);
    }

    [Test]
    public void NothingIsKeptWithoutTheFp8GemmOrFp8Weights()
    {
        Assert.That(Plan(141, Fp8PrefillCopy.Keep, fp8Gemm: false).Fp8PrefillCopyBytes, Is.Zero, "the bf16 detour reads no copy");
        Assert.That(Plan(141, Fp8PrefillCopy.Keep, WeightKind.Bf16).Fp8PrefillCopyBytes, Is.Zero);
        Assert.That(Plan(141, Fp8PrefillCopy.Keep, WeightKind.Int4Awq).Fp8PrefillCopyBytes, Is.Zero);
    }
}

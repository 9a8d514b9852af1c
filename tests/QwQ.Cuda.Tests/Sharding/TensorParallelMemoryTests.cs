using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Tests.Sharding;

/// <summary>
/// The memory plan of one GPU of a tensor-parallel QwQ-32B (<see cref="MemoryPlan.Create(RankShape, long, EngineOptions, WeightKind)"/>
/// with <see cref="TensorParallelPlan.Shape"/>): each GPU holds its share of the layers and lm_head but the whole
/// embedding, its KV heads' share of every position, and so a pool that grows faster than the number of GPUs. CPU only.
/// </summary>
public sealed class TensorParallelMemoryTests
{
    private static readonly ModelConfig Qwq = ModelPresets.Get("qwq-32b");
    private static readonly ModelConfig QwqYarn = ModelPresets.Get("qwq-32b-yarn");
    private static readonly EngineOptions Defaults = new();
    private const long GiB = 1L << 30;

    /// <summary>The plan of each GPU of <paramref name="ranks"/> with <paramref name="free"/> bytes free apiece.</summary>
    private static MemoryPlan PerGpu(ModelConfig c, int ranks, long free, EngineOptions? o = null) =>
        MemoryPlan.Create(TensorParallelPlan.Create(c, ranks).Shape, free, o ?? Defaults, WeightKind.Bf16);

    [TestCase(2)]
    [TestCase(4)]
    public void EachGpuHoldsItsShareOfTheLayersAndLmHeadAndTheWholeEmbedding(int ranks)
    {
        long full = ModelWeights.DeviceBytes(Qwq);                 // embedding + 64 layers + final norm + lm_head
        long embedding = 2L * Qwq.VocabSize * Qwq.HiddenSize;     // bf16 [152064, 5120], 1.45 GiB; lm_head the same
        long layers = full - 2 * embedding;
        long perGpu = PerGpu(Qwq, ranks, 80 * GiB).WeightBytes;
        TestContext.Out.WriteLine($"N = {ranks}: {perGpu / (double)GiB:F2} GiB per GPU of {full / (double)GiB:F2} GiB");
        Assert.Multiple(() =>
        {
            // More than the layers' share with a whole embedding beside: the embedding is not split (every GPU looks up
            // every token), and lm_head's share comes on top.
            Assert.That(perGpu, Is.GreaterThan(layers / ranks + embedding));
            // Less than the model's share plus a second whole embedding: nothing but the embedding (and the 1.3 MB of
            // norms) is held whole.
            Assert.That(perGpu, Is.LessThan(full / ranks + embedding));
            // About (full − embedding) / N + embedding: the replicated norms (64 · 2 · 10 KiB) and alignment are the rest.
            Assert.That(perGpu, Is.EqualTo((full - embedding) / ranks + embedding).Within(4L << 20));
        });
    }

    [TestCase(2)]
    [TestCase(4)]
    public void EachGpuStoresItsKvHeadsShareOfEveryPosition(int ranks)
    {
        // 8 KV heads: each GPU keeps K and V of 8/N heads per layer and position.
        var plan = PerGpu(Qwq, ranks, 80 * GiB);
        Assert.That(plan.KvBytesPerToken, Is.EqualTo(Qwq.KvBytesPerToken / ranks));
        Assert.That(Qwq.KvBytesPerToken % ranks, Is.Zero);
    }

    [Test]
    public void OneRanksPlanIsTheSingleGpuPlan()
    {
        // The tensor-parallel overload with N = 1 must plan exactly as one GPU always has.
        Assert.That(PerGpu(Qwq, 1, 80 * GiB), Is.EqualTo(MemoryPlan.Create(Qwq, 80 * GiB, Defaults)));
    }

    [Test]
    public void TwoGpusOf80GiBHoldMoreThanTwiceOneGpusPositions()
    {
        // Each GPU keeps half the bytes per position and, with half the layers, has more memory left for them.
        var one = MemoryPlan.Create(Qwq, 80 * GiB, Defaults);
        var two = PerGpu(Qwq, 2, 80 * GiB);
        var four = PerGpu(Qwq, 4, 80 * GiB);
        TestContext.Out.WriteLine($"pool positions: 1 GPU {one.KvPoolPositions}, 2 GPUs {two.KvPoolPositions}, 4 GPUs {four.KvPoolPositions}");
        Assert.That(two.KvPoolPositions, Is.GreaterThan(2 * one.KvPoolPositions));
        Assert.That(four.KvPoolPositions, Is.GreaterThan(2 * two.KvPoolPositions));
        Assert.That(two.MaxContext, Is.EqualTo(MemoryPlan.ModelMaxPositions(Qwq)), "the model's 40960 positions");
    }

    [Test]
    public void YarnsFullContextOf131072FitsTwo80GiBGpusButNotOne()
    {
        // An "80GB" H100 shows CUDA about 79.2 GiB; 78 GiB free leaves room for the context it creates.
        const long free = 78L << 30;
        var o = new EngineOptions { MaxContext = 131072 };
        Assert.That(MemoryPlan.ModelMaxPositions(QwqYarn), Is.EqualTo(131072));

        var two = PerGpu(QwqYarn, 2, free, o);
        Assert.That(two.MaxContext, Is.EqualTo(131072));
        Assert.That(two.KvPoolPositions, Is.GreaterThanOrEqualTo(131072));
        Assert.That(two.WeightBytes + two.WorkspaceBytes + two.KvCacheBytes + two.ReserveBytes, Is.LessThanOrEqualTo(free));

        // One GPU: 61 GiB of weights leave room for about 60k positions at 256 KiB each, not 131072 (32 GiB).
        var e = Assert.Throws<CudaOutOfMemoryPlanException>(() => PerGpu(QwqYarn, 1, free, o))!;
        Assert.That(e.Message, Does.Contain("--max-context 131072"));
        Assert.Throws<CudaOutOfMemoryPlanException>(() => MemoryPlan.Create(QwqYarn, free, o));
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Tests.Sharding;

/// <summary>Which slice of each weight a tensor-parallel rank holds, and which sizes are refused.</summary>
public class TensorParallelPlanTests
{
    private static readonly ModelConfig QwQ = ModelPresets.Get("qwq-32b");

    private static ModelConfig Custom(int nq, int nkv, int intermediate, int vocab) => QwQ with
    {
        HiddenSize = 64, NumAttentionHeads = nq, NumKeyValueHeads = nkv, HeadDim = 8, IntermediateSize = intermediate,
        VocabSize = vocab, NumHiddenLayers = 1,
    };

    [Test]
    public void QwQ32BSplitsOver1248()
    {
        Assert.That(TensorParallelPlan.ValidSizes(QwQ), Is.EqualTo(new[] { 1, 2, 4, 8 }));
        var plan = TensorParallelPlan.Create(QwQ, 8);
        Assert.Multiple(() =>
        {
            Assert.That((plan.QueryHeadsPerRank, plan.KvHeadsPerRank, plan.IntermediatePerRank, plan.VocabPerRank),
                Is.EqualTo((5, 1, 3456, 19008)));
            Assert.That(plan.PaddedVocab, Is.EqualTo(152064), "152064 = 8 · 19008: no padding");
            Assert.That(plan.QueryHeads(3), Is.EqualTo(new ShardRange(15, 5)));
            Assert.That(plan.KvHeads(3), Is.EqualTo(new ShardRange(3, 1)));
            Assert.That(plan.QRows(3), Is.EqualTo(new ShardRange(15 * 128, 5 * 128)));
            Assert.That(plan.KvRows(3), Is.EqualTo(new ShardRange(3 * 128, 128)));
            Assert.That(plan.Intermediate(7), Is.EqualTo(new ShardRange(7 * 3456, 3456)));
            Assert.That(plan.Vocab(7), Is.EqualTo(new ShardRange(7 * 19008, 19008)));
        });

        var four = TensorParallelPlan.Create(QwQ, 4);
        Assert.That((four.QueryHeads(1), four.KvHeads(1)), Is.EqualTo((new ShardRange(10, 10), new ShardRange(2, 2))));
    }

    [TestCase(3)]
    [TestCase(5)]
    [TestCase(16)]
    public void SizesThatDoNotDivideTheKvHeadsAreRefusedByName(int n)
    {
        var e = Assert.Throws<OptionException>(() => TensorParallelPlan.Create(QwQ, n))!;
        Assert.That(e.Message, Does.Contain($"--tensor-parallel {n}").And.Contain("8 key/value heads").And.Contain("1, 2, 4, 8"));
    }

    [TestCase(0)]
    [TestCase(-2)]
    public void SizesBelowOneAreRefused(int n) =>
        Assert.That(TensorParallelPlan.Check(QwQ, n), Does.Contain($"--tensor-parallel {n} must be at least 1"));

    [Test]
    public void TheIntermediateSizeMustDivideToo()
    {
        var c = Custom(nq: 16, nkv: 8, intermediate: 100, vocab: 50);
        Assert.That(TensorParallelPlan.ValidSizes(c), Is.EqualTo(new[] { 1, 2, 4 }));
        Assert.That(TensorParallelPlan.Check(c, 4), Is.Null);
        Assert.That(TensorParallelPlan.Check(c, 8), Does.Contain("--tensor-parallel 8").And.Contain("intermediate_size 100").And.Contain("1, 2, 4"));
    }

    [Test]
    public void TheTinyFixturesTwoKvHeadsAllowOneOrTwo()
    {
        var c = Custom(nq: 10, nkv: 2, intermediate: 384, vocab: 256);
        Assert.That(TensorParallelPlan.ValidSizes(c), Is.EqualTo(new[] { 1, 2 }));
        Assert.That(TensorParallelPlan.Check(c, 4), Does.Contain("2 key/value heads"));
    }

    [TestCase(50, 4, 13)]
    [TestCase(50, 8, 7)]
    [TestCase(256, 2, 128)]
    [TestCase(5, 4, 2)]
    [TestCase(1, 8, 1)]
    public void VocabularyShardsTileTheVocabularyWithTheRemainderOnTheLastRanks(int vocab, int n, int perRank)
    {
        var plan = TensorParallelPlan.Create(Custom(nq: 16, nkv: 8, intermediate: 96, vocab: vocab), n);
        Assert.That(plan.VocabPerRank, Is.EqualTo(perRank));
        Assert.That(plan.PaddedVocab, Is.GreaterThanOrEqualTo(vocab).And.LessThan(vocab + n));
        int next = 0;
        for (int r = 0; r < n; r++)
        {
            var v = plan.Vocab(r);
            Assert.That(v.Start, Is.EqualTo(next), $"rank {r} starts where rank {r - 1} ended");
            Assert.That(v.Count, Is.InRange(0, perRank));
            if (v.Count < perRank) Assert.That(v.End, Is.EqualTo(vocab), "only the tail is short");
            next = v.End;
        }
        Assert.That(next, Is.EqualTo(vocab));
    }

    [Test]
    public void EveryQueryHeadOfARankReadsAKvHeadOfTheSameRank()
    {
        foreach (var (nq, nkv) in new[] { (40, 8), (16, 8), (10, 2), (8, 8), (32, 4) })
        {
            var c = Custom(nq, nkv, intermediate: 96, vocab: 64);
            int group = nq / nkv;
            foreach (int n in TensorParallelPlan.ValidSizes(c))
            {
                var plan = TensorParallelPlan.Create(c, n);
                for (int r = 0; r < n; r++)
                {
                    var qh = plan.QueryHeads(r);
                    var kh = plan.KvHeads(r);
                    for (int h = qh.Start; h < qh.End; h++)
                    {
                        int kv = h / group; // the KV head query head h reads (HF repeat_kv)
                        Assert.That(kv, Is.InRange(kh.Start, kh.End - 1), $"nq {nq}, nkv {nkv}, N {n}: query head {h} on rank {r}");
                        Assert.That(kv - kh.Start, Is.EqualTo((h - qh.Start) / group), "the local mapping is the global one shifted");
                    }
                }
            }
        }
    }

    [Test]
    public void RanksOutsideThePlanAreRefused()
    {
        var plan = TensorParallelPlan.Create(QwQ, 2);
        Assert.Throws<ArgumentOutOfRangeException>(() => plan.QueryHeads(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => plan.Vocab(-1));
    }
}

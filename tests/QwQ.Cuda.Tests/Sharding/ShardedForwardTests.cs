using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Tests.Batching;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Sharding;

/// <summary>
/// The tensor-parallel CPU forward (each rank's partial products, all-reduce after o_proj and down_proj, all-gather of
/// the lm_head shards) against the unsharded CPU reference, and each rank's heads against the full model's.
/// </summary>
public class ShardedForwardTests
{
    private const double Tolerance = 1e-5;

    // 8 KV heads, so N = 1, 2, 4, 8 all shard it; 2 query heads per KV head (GQA); YaRN; a vocabulary that no N > 1
    // divides (the last rank holds the remainder) and an intermediate size 8 divides.
    private static readonly ModelConfig EightKv = ModelPresets.Get("qwq-32b") with
    {
        HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 16, NumKeyValueHeads = 8,
        HeadDim = 8, VocabSize = 50, MaxPositionEmbeddings = 128,
        RopeScaling = new RopeScaling { Factor = 4, OriginalMaxPositionEmbeddings = 8 },
    };

    private static readonly int[] Tokens = [3, 17, 42, 0, 9, 9, 31, 12, 48, 5, 22];

    private static readonly Lazy<CpuWeights> EightKvWeights = new(() => CpuWeights.Random(EightKv, seed: 11));

    private static void AssertShardedLogitsMatch(CpuWeights weights, int ranks, int[] tokens)
    {
        var reference = new Qwen2CpuModel(weights.Config, weights).Forward(tokens);
        var sharded = TensorParallelCpuModel.FromFull(weights, ranks).Forward(tokens);
        double rel = BatchingFixtures.RelErr(sharded, reference);
        TestContext.Out.WriteLine($"N = {ranks}: ‖Δ‖/‖ref‖ = {rel:E2}");
        Assert.That(rel, Is.LessThan(Tolerance), $"N = {ranks}");
    }

    // ---- logits -----------------------------------------------------------------------------------------------

    [TestCase("tiny-gqa", 1)]
    [TestCase("tiny-gqa", 2)]
    [TestCase("tiny-yarn", 1)]
    [TestCase("tiny-yarn", 2)]
    [Category("Goldens")]
    public void FixtureLogitsEqualTheUnshardedForward(string model, int ranks)
    {
        var (_, weights) = ModelFixtures.Load(model);
        var prompt = ModelFixtures.ReadGoldens(model).Prompts[1].Ids; // 23 tokens
        AssertShardedLogitsMatch(weights, ranks, prompt);
    }

    [Test]
    [Category("Goldens")]
    public void TheFixturesTwoKvHeadsRefuseFourRanks()
    {
        var (_, weights) = ModelFixtures.Load("tiny-gqa");
        Assert.That(weights.Config.NumKeyValueHeads, Is.EqualTo(2));
        var e = Assert.Throws<OptionException>(() => TensorParallelCpuModel.FromFull(weights, 4))!;
        Assert.That(e.Message, Does.Contain("--tensor-parallel 4").And.Contain("2 key/value heads"));
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void EightKvHeadLogitsEqualTheUnshardedForward(int ranks) =>
        AssertShardedLogitsMatch(EightKvWeights.Value, ranks, Tokens);

    [Test]
    public void ASingleTokenMatchesToo() => AssertShardedLogitsMatch(EightKvWeights.Value, 4, [7]);

    // ---- each rank holds the right heads, in the right order ------------------------------------------------------

    /// <summary>Every full-model intermediate, and every rank's, of one pass over <see cref="Tokens"/>.</summary>
    private static (Dictionary<string, float[]> Full, Dictionary<(int Rank, string Name), float[]> Shards) Trace(
        CpuWeights weights, TensorParallelCpuModel sharded, int[] tokens)
    {
        var full = new Dictionary<string, float[]>();
        new Qwen2CpuModel(weights.Config, weights).Forward(tokens, (name, values) => full[name] = values.ToArray());
        var shards = new Dictionary<(int, string), float[]>();
        sharded.Forward(tokens, (rank, name, values) => shards[(rank, name)] = values.ToArray());
        return (full, shards);
    }

    /// <summary>
    /// Where rank r's <c>[T, heads_r, D]</c> activation differs from heads [start, start + heads_r) of the full
    /// <c>[T, heads, D]</c> one by more than <paramref name="tolerance"/> (relative to the slice's largest value).
    /// </summary>
    private static List<string> HeadMismatches(float[] full, float[] shard, int tokens, int heads, int start, int count, int headDim,
        double tolerance)
    {
        var problems = new List<string>();
        Assert.That(shard.Length, Is.EqualTo(tokens * count * headDim));
        for (int t = 0; t < tokens; t++)
        for (int j = 0; j < count; j++)
        {
            var expected = full.AsSpan((t * heads + start + j) * headDim, headDim);
            var actual = shard.AsSpan((t * count + j) * headDim, headDim);
            double maxDiff = 0, maxRef = 1e-30;
            for (int d = 0; d < headDim; d++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(actual[d] - expected[d]));
                maxRef = Math.Max(maxRef, Math.Abs(expected[d]));
            }
            if (maxDiff > tolerance * maxRef) problems.Add($"token {t}, local head {j} (global {start + j}): off by {maxDiff / maxRef:E2}");
        }
        return problems;
    }

    /// <summary>Rank by rank, q/k/v/attention heads and the MLP activation against slices of the full model's; all problems found.</summary>
    private static List<string> CheckRanksAgainstFullModel(CpuWeights weights, TensorParallelCpuModel sharded, int[] tokens)
    {
        var c = weights.Config;
        var plan = sharded.Plan;
        var (full, shards) = Trace(weights, sharded, tokens);
        int T = tokens.Length, D = c.HeadDim;
        var problems = new List<string>();
        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            // Layer 0 sees the same input as the full model, and each head's rows are copies of the full model's rows, so
            // its q/k/v/attention must be bit-identical; later layers differ by the all-reduce's fp32 rounding.
            double tol = layer == 0 ? 0 : Tolerance;
            for (int r = 0; r < plan.Ranks; r++)
            {
                var qh = plan.QueryHeads(r);
                var kh = plan.KvHeads(r);
                void Heads(string name, int heads, ShardRange range) =>
                    problems.AddRange(HeadMismatches(full[name], shards[(r, name)], T, heads, range.Start, range.Count, D, tol)
                        .Select(p => $"layer {layer} rank {r} {name}: {p}"));
                Heads(ActivationNames.Q(layer), c.NumAttentionHeads, qh);
                Heads(ActivationNames.K(layer), c.NumKeyValueHeads, kh);
                Heads(ActivationNames.V(layer), c.NumKeyValueHeads, kh);
                Heads(ActivationNames.Attention(layer), c.NumAttentionHeads, qh);

                // The MLP activation [T, I]: rank r holds columns Intermediate(r) (viewed as "heads" of width I/N).
                var inter = plan.Intermediate(r);
                problems.AddRange(HeadMismatches(full[ActivationNames.MlpActivation(layer)], shards[(r, ActivationNames.MlpActivation(layer))],
                        T, plan.Ranks, r, 1, inter.Count, Tolerance)
                    .Select(p => $"layer {layer} rank {r} mlp_act: {p}"));
            }
        }
        return problems;
    }

    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void EachRanksHeadsAreTheFullModelsHeadsInOrder(int ranks)
    {
        var weights = EightKvWeights.Value;
        var problems = CheckRanksAgainstFullModel(weights, TensorParallelCpuModel.FromFull(weights, ranks), Tokens);
        Assert.That(problems, Is.Empty);
    }

    [Test]
    [Category("Goldens")]
    public void EachRanksHeadsAreTheFixturesHeadsInOrder()
    {
        var (_, weights) = ModelFixtures.Load("tiny-gqa");
        var problems = CheckRanksAgainstFullModel(weights, TensorParallelCpuModel.FromFull(weights, 2), Tokens);
        Assert.That(problems, Is.Empty);
    }

    [Test]
    public void AConsistentlyPermutedHeadOrderKeepsTheLogitsButFailsTheHeadCheck()
    {
        // Swapping two KV heads of rank 0 — with their query heads, bias entries and o_proj columns — leaves the
        // model's function (the logits) unchanged, but breaks the head layout the GPU engine and its KV cache rely on.
        // The logits test cannot see it; the head check must.
        var weights = EightKvWeights.Value;
        var good = TensorParallelCpuModel.FromFull(weights, 2);
        var plan = good.Plan;
        var shards = good.Shards.ToArray();
        shards[0] = SwapKvHeads(shards[0], 0, 1);
        var permuted = new TensorParallelCpuModel(plan, shards);

        var reference = new Qwen2CpuModel(weights.Config, weights).Forward(Tokens);
        Assert.That(BatchingFixtures.RelErr(permuted.Forward(Tokens), reference), Is.LessThan(Tolerance), "same function");
        var problems = CheckRanksAgainstFullModel(weights, permuted, Tokens);
        Assert.That(problems, Is.Not.Empty);
        Assert.That(problems, Has.Some.StartsWith("layer 0 rank 0 layer0.k:"), "rank 0's KV heads are out of order");
        Assert.That(problems, Has.None.Contains("rank 1"), "rank 1 was left alone");
    }

    /// <summary>The shard with its local KV heads a and b exchanged, consistently in every place they appear.</summary>
    private static CpuShardWeights SwapKvHeads(CpuShardWeights s, int a, int b)
    {
        var c = s.Plan.Config;
        int D = c.HeadDim, H = c.HiddenSize, group = c.NumAttentionHeads / c.NumKeyValueHeads;
        int qCols = s.Plan.QueryHeadsPerRank * D;

        // Row blocks of `rows` rows of width `width`: swap blocks a and b (a copy).
        static float[] SwapRowBlocks(float[] m, int width, int rows, int a, int b)
        {
            var r = (float[])m.Clone();
            m.AsSpan(a * rows * width, rows * width).CopyTo(r.AsSpan(b * rows * width));
            m.AsSpan(b * rows * width, rows * width).CopyTo(r.AsSpan(a * rows * width));
            return r;
        }
        static float[] SwapColumnBlocks(float[] m, int height, int width, int cols, int a, int b)
        {
            var r = (float[])m.Clone();
            for (int y = 0; y < height; y++)
            {
                m.AsSpan(y * width + a * cols, cols).CopyTo(r.AsSpan(y * width + b * cols));
                m.AsSpan(y * width + b * cols, cols).CopyTo(r.AsSpan(y * width + a * cols));
            }
            return r;
        }

        var layers = s.Layers.Select(w => new CpuLayerWeights
        {
            InputNorm = w.InputNorm,
            QWeight = SwapRowBlocks(w.QWeight, H, group * D, a, b), // a KV head's query heads move with it
            QBias = SwapRowBlocks(w.QBias, 1, group * D, a, b),
            KWeight = SwapRowBlocks(w.KWeight, H, D, a, b),
            KBias = SwapRowBlocks(w.KBias, 1, D, a, b),
            VWeight = SwapRowBlocks(w.VWeight, H, D, a, b),
            VBias = SwapRowBlocks(w.VBias, 1, D, a, b),
            OWeight = SwapColumnBlocks(w.OWeight, H, qCols, group * D, a, b),
            PostAttentionNorm = w.PostAttentionNorm,
            GateWeight = w.GateWeight,
            UpWeight = w.UpWeight,
            DownWeight = w.DownWeight,
        }).ToArray();
        return new CpuShardWeights
        {
            Plan = s.Plan, Rank = s.Rank, Embedding = s.Embedding, Layers = layers, FinalNorm = s.FinalNorm, LmHead = s.LmHead,
        };
    }

    // ---- the shards and the collectives themselves -----------------------------------------------------------------

    [Test]
    public void ShardsAreSlicesOfTheFullWeights()
    {
        var weights = EightKvWeights.Value;
        var c = weights.Config;
        var plan = TensorParallelPlan.Create(c, 4);
        int H = c.HiddenSize, D = c.HeadDim, r = 2;
        var s = TensorParallelCpuModel.ShardWeights(weights, plan, r);
        var w = weights.Layers[1];
        var l = s.Layers[1];
        Assert.Multiple(() =>
        {
            // rank 2 of 4: query heads 8..11 (rows 64..95), KV heads 4..5 (rows 32..47), intermediate 48..71, vocab 26..38
            Assert.That(l.QWeight, Is.EqualTo(w.QWeight.AsSpan(8 * D * H, 4 * D * H).ToArray()));
            Assert.That(l.QBias, Is.EqualTo(w.QBias.AsSpan(8 * D, 4 * D).ToArray()));
            Assert.That(l.KWeight, Is.EqualTo(w.KWeight.AsSpan(4 * D * H, 2 * D * H).ToArray()));
            Assert.That(l.VBias, Is.EqualTo(w.VBias.AsSpan(4 * D, 2 * D).ToArray()));
            Assert.That(l.OWeight, Has.Length.EqualTo(H * 4 * D));
            Assert.That(l.OWeight[5 * 4 * D + 3], Is.EqualTo(w.OWeight[5 * c.QDim + 8 * D + 3]), "o_proj row 5, column 3 of the slice");
            Assert.That(l.GateWeight, Is.EqualTo(w.GateWeight.AsSpan(48 * H, 24 * H).ToArray()));
            Assert.That(l.DownWeight[7 * 24 + 1], Is.EqualTo(w.DownWeight[7 * 96 + 48 + 1]), "down_proj row 7, column 1 of the slice");
            Assert.That(s.LmHead, Is.EqualTo(weights.LmHead.AsSpan(26 * H, 13 * H).ToArray()));
            Assert.That(s.Embedding, Is.SameAs(weights.Embedding), "replicated, not copied");
            Assert.That(l.InputNorm, Is.SameAs(w.InputNorm));
            Assert.That(TensorParallelCpuModel.ShardWeights(weights, plan, 3).LmHead, Has.Length.EqualTo(11 * H), "the last rank: 50 − 39 rows");
        });
    }

    [Test]
    public void AllReduceSumsAndAllGatherConcatenatesDroppingThePadding()
    {
        var sum = new float[3];
        TensorParallelCpuModel.AllReduceSum([[1, 2, 3], [10, 20, 30], [100, 200, 300]], sum);
        Assert.That(sum, Is.EqualTo(new float[] { 111, 222, 333 }));

        // vocab 5 over 2 ranks: 3 columns each, rank 1 holds ids 3..4 and one padding column; 2 tokens
        var plan = TensorParallelPlan.Create(EightKv with { VocabSize = 5 }, 2);
        var logits = new float[2 * 5];
        TensorParallelCpuModel.AllGatherLogits([[0, 1, 2, 10, 11, 12], [3, 4, -1, 13, 14, -1]], plan, 2, logits);
        Assert.That(logits, Is.EqualTo(new float[] { 0, 1, 2, 3, 4, 10, 11, 12, 13, 14 }));
    }
}

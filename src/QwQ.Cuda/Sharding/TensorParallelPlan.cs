using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Sharding;

/// <summary>A contiguous slice [Start, Start + Count) of one dimension of a weight.</summary>
internal readonly record struct ShardRange(int Start, int Count)
{
    public int End => Start + Count;

    public override string ToString() => $"[{Start}, {End})";
}

/// <summary>
/// Which part of every weight each of N tensor-parallel ranks holds (Megatron-style; docs/TENSOR_PARALLEL.md).
/// <list type="bullet">
/// <item>q/k/v_proj (weights and biases): output rows by head. Rank r holds query heads
/// [r·nq/N, (r+1)·nq/N) and KV heads [r·nkv/N, (r+1)·nkv/N), in the checkpoint's order. Since query head h reads KV head
/// h / (nq/nkv), those are exactly the KV heads its query heads read: attention needs nothing from other ranks.</item>
/// <item>o_proj: input columns of the same query heads. Each rank's product is a partial sum of the output → all-reduce.</item>
/// <item>gate/up_proj: output rows [r·I/N, (r+1)·I/N); down_proj: the same input columns → all-reduce.</item>
/// <item>lm_head: vocabulary rows, <see cref="VocabPerRank"/> = ⌈V/N⌉ each; the last rank holds the remainder (fewer real
/// rows, padded to ⌈V/N⌉ so the all-gather is equal-sized) → all-gather, then the padding is dropped.</item>
/// <item>Replicated: the embedding, every RMSNorm weight.</item>
/// </list>
/// N must divide the KV heads (and so the query heads) and the intermediate size; the vocabulary need not divide.
/// </summary>
internal sealed class TensorParallelPlan
{
    private TensorParallelPlan(ModelConfig config, int ranks)
    {
        Config = config;
        Ranks = ranks;
    }

    public ModelConfig Config { get; }

    /// <summary>N, the number of ranks (GPUs).</summary>
    public int Ranks { get; }

    public int QueryHeadsPerRank => Config.NumAttentionHeads / Ranks;
    public int KvHeadsPerRank => Config.NumKeyValueHeads / Ranks;
    public int IntermediatePerRank => Config.IntermediateSize / Ranks;

    /// <summary>lm_head rows per rank, ⌈vocab / N⌉: every rank's logits buffer has this many columns.</summary>
    public int VocabPerRank => (Config.VocabSize + Ranks - 1) / Ranks;

    /// <summary><see cref="VocabPerRank"/> · N ≥ vocab: the width of the all-gathered logits before the padding is dropped.</summary>
    public long PaddedVocab => (long)VocabPerRank * Ranks;

    /// <summary>What each rank's GPU holds: the same shapes on every rank (the last one pads its vocabulary rows).</summary>
    public RankShape Shape => new(Config with
    {
        NumAttentionHeads = QueryHeadsPerRank,
        NumKeyValueHeads = KvHeadsPerRank,
        IntermediateSize = IntermediatePerRank,
    }, Ranks, VocabPerRank);

    /// <summary>The plan for <paramref name="ranks"/> ranks; <see cref="OptionException"/> naming N and the broken constraint otherwise.</summary>
    public static TensorParallelPlan Create(ModelConfig config, int ranks)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (Check(config, ranks) is { } error) throw new OptionException(error);
        return new TensorParallelPlan(config, ranks);
    }

    /// <summary>Null when <paramref name="ranks"/> can shard <paramref name="config"/>, else why not (naming N, the constraint and the sizes that work).</summary>
    public static string? Check(ModelConfig config, int ranks)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (ranks < 1) return $"--tensor-parallel {ranks} must be at least 1 (1: one GPU, no tensor parallelism)";
        string valid = $"valid sizes for this model: {string.Join(", ", ValidSizes(config))}";
        if (config.NumKeyValueHeads % ranks != 0)
            return $"--tensor-parallel {ranks} must divide the model's {config.NumKeyValueHeads} key/value heads (num_key_value_heads): " +
                   $"each GPU holds whole KV heads and the query heads that read them; {valid}";
        if (config.IntermediateSize % ranks != 0)
            return $"--tensor-parallel {ranks} must divide the model's intermediate_size {config.IntermediateSize}: " +
                   $"each GPU holds an equal slice of the MLP; {valid}";
        return null;
    }

    /// <summary>Every N that can shard the model: the divisors of gcd(KV heads, intermediate size). QwQ-32B: 1, 2, 4, 8.</summary>
    public static IReadOnlyList<int> ValidSizes(ModelConfig config)
    {
        int g = (int)System.Numerics.BigInteger.GreatestCommonDivisor(config.NumKeyValueHeads, config.IntermediateSize);
        return Enumerable.Range(1, g).Where(n => g % n == 0).ToArray();
    }

    /// <summary>Query heads of rank <paramref name="rank"/>.</summary>
    public ShardRange QueryHeads(int rank) => Equal(rank, QueryHeadsPerRank);

    /// <summary>KV heads of rank <paramref name="rank"/> (the ones its query heads read).</summary>
    public ShardRange KvHeads(int rank) => Equal(rank, KvHeadsPerRank);

    /// <summary>Rows of q_proj (and entries of its bias), = input columns of o_proj: the query heads' rows.</summary>
    public ShardRange QRows(int rank) => Scale(QueryHeads(rank), Config.HeadDim);

    /// <summary>Rows of k_proj and v_proj (and their biases).</summary>
    public ShardRange KvRows(int rank) => Scale(KvHeads(rank), Config.HeadDim);

    /// <summary>Rows of gate_proj and up_proj, = input columns of down_proj.</summary>
    public ShardRange Intermediate(int rank) => Equal(rank, IntermediatePerRank);

    /// <summary>Real lm_head rows (token ids) of the rank: [r·⌈V/N⌉, min((r+1)·⌈V/N⌉, V)); the last rank's may be shorter.</summary>
    public ShardRange Vocab(int rank)
    {
        CheckRank(rank);
        int start = (int)Math.Min((long)rank * VocabPerRank, Config.VocabSize);
        int end = (int)Math.Min((long)(rank + 1) * VocabPerRank, Config.VocabSize);
        return new ShardRange(start, end - start);
    }

    private ShardRange Equal(int rank, int perRank)
    {
        CheckRank(rank);
        return new ShardRange(rank * perRank, perRank);
    }

    private static ShardRange Scale(ShardRange r, int factor) => new(r.Start * factor, r.Count * factor);

    private void CheckRank(int rank)
    {
        if ((uint)rank >= (uint)Ranks) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} is outside [0, {Ranks})");
    }

    public override string ToString() =>
        $"{Ranks} ranks: {QueryHeadsPerRank} query / {KvHeadsPerRank} KV heads, intermediate {IntermediatePerRank}, vocab {VocabPerRank} each";
}

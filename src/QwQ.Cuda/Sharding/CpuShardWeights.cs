using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Sharding;

/// <summary>
/// One tensor-parallel rank's part of a model's fp32 weights (see <see cref="TensorParallelPlan"/>). Per-layer shards
/// reuse <see cref="CpuLayerWeights"/> with the rank's shapes (nq_r = nq/N, nkv_r = nkv/N, I_r = I/N):
/// Q <c>[nq_r·D, hidden]</c> + bias, K and V <c>[nkv_r·D, hidden]</c> + biases, O <c>[hidden, nq_r·D]</c>,
/// gate and up <c>[I_r, hidden]</c>, down <c>[hidden, I_r]</c>; the norms are the full model's (replicated, shared arrays).
/// </summary>
internal sealed class CpuShardWeights
{
    public required TensorParallelPlan Plan { get; init; }
    public required int Rank { get; init; }

    /// <summary>[vocab, hidden], replicated: the full model's array itself (not copied).</summary>
    public required float[] Embedding { get; init; }

    public required CpuLayerWeights[] Layers { get; init; }

    /// <summary>[hidden], replicated.</summary>
    public required float[] FinalNorm { get; init; }

    /// <summary>[<c>Plan.Vocab(Rank).Count</c>, hidden]: this rank's real vocabulary rows (no padding).</summary>
    public required float[] LmHead { get; init; }

    /// <summary>Rank <paramref name="rank"/>'s shard of <paramref name="full"/> (copies; the replicated arrays are shared).</summary>
    public static CpuShardWeights Create(CpuWeights full, TensorParallelPlan plan, int rank)
    {
        ArgumentNullException.ThrowIfNull(full);
        ArgumentNullException.ThrowIfNull(plan);
        if (!ReferenceEquals(full.Config, plan.Config) && full.Config != plan.Config)
            throw new ArgumentException("the plan was made for another model config", nameof(plan));
        var c = plan.Config;
        int h = c.HiddenSize;
        var q = plan.QRows(rank);
        var kv = plan.KvRows(rank);
        var inter = plan.Intermediate(rank);

        var layers = new CpuLayerWeights[full.Layers.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            var w = full.Layers[i];
            layers[i] = new CpuLayerWeights
            {
                InputNorm = w.InputNorm,
                QWeight = Rows(w.QWeight, h, q),
                QBias = w.QBias[q.Start..q.End],
                KWeight = Rows(w.KWeight, h, kv),
                KBias = w.KBias[kv.Start..kv.End],
                VWeight = Rows(w.VWeight, h, kv),
                VBias = w.VBias[kv.Start..kv.End],
                OWeight = Columns(w.OWeight, h, c.QDim, q),
                PostAttentionNorm = w.PostAttentionNorm,
                GateWeight = Rows(w.GateWeight, h, inter),
                UpWeight = Rows(w.UpWeight, h, inter),
                DownWeight = Columns(w.DownWeight, h, c.IntermediateSize, inter),
            };
        }
        return new CpuShardWeights
        {
            Plan = plan,
            Rank = rank,
            Embedding = full.Embedding,
            Layers = layers,
            FinalNorm = full.FinalNorm,
            LmHead = Rows(full.LmHead, h, plan.Vocab(rank)),
        };
    }

    /// <summary>Rows <paramref name="rows"/> of a row-major <c>[*, cols]</c> matrix.</summary>
    internal static float[] Rows(float[] matrix, int cols, ShardRange rows) =>
        matrix.AsSpan((int)((long)rows.Start * cols), checked(rows.Count * cols)).ToArray();

    /// <summary>Columns <paramref name="columns"/> of every row of a row-major <c>[rows, cols]</c> matrix.</summary>
    internal static float[] Columns(float[] matrix, int rows, int cols, ShardRange columns)
    {
        if ((long)rows * cols != matrix.Length) throw new ArgumentException($"matrix has {matrix.Length} elements, expected {rows}x{cols}", nameof(matrix));
        var result = new float[(long)rows * columns.Count];
        for (int r = 0; r < rows; r++)
            matrix.AsSpan((int)((long)r * cols + columns.Start), columns.Count).CopyTo(result.AsSpan(r * columns.Count));
        return result;
    }
}

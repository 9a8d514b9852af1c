using QwQ.Cuda.Config;
using QwQ.Cuda.Model;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Sharding;

/// <summary>
/// Receives intermediates of a <see cref="TensorParallelCpuModel"/> pass under <see cref="ActivationNames"/>:
/// rank ≥ 0 for a rank's own slice (q, k, v, attention: <c>[T, heads of the rank, D]</c>; mlp_act <c>[T, I/N]</c>),
/// rank −1 for replicated values (residuals, norms, logits). The span is only valid during the call.
/// </summary>
internal delegate void ShardActivationSink(int rank, string name, ReadOnlySpan<float> values);

/// <summary>
/// The Qwen2 forward of <see cref="Qwen2CpuModel"/> split over N tensor-parallel ranks, in plain fp32 on the CPU:
/// the executable specification of the GPU engine's sharding. Each rank runs its partial products on its own shard
/// (<see cref="CpuShardWeights"/>); where the GPUs would talk, <see cref="AllReduceSum"/> sums the partials (after
/// o_proj and after down_proj, then the residual add) and <see cref="AllGatherLogits"/> concatenates the lm_head
/// shards. Everything else (embedding, norms, residual) is replicated: every rank would compute the same values.
/// Full forward from position 0 only (no KV cache); it must agree with the unsharded model to fp32 rounding.
/// </summary>
internal sealed class TensorParallelCpuModel
{
    private readonly CpuShardWeights[] _shards;
    private readonly float[] _invFreq;
    private readonly float _attentionFactor;

    public TensorParallelCpuModel(TensorParallelPlan plan, IReadOnlyList<CpuShardWeights> shards)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(shards);
        if (shards.Count != plan.Ranks) throw new ArgumentException($"need {plan.Ranks} shards, got {shards.Count}", nameof(shards));
        for (int r = 0; r < shards.Count; r++)
            if (shards[r].Rank != r || !ReferenceEquals(shards[r].Plan, plan))
                throw new ArgumentException($"shard {r} is rank {shards[r].Rank} of another plan", nameof(shards));
        Plan = plan;
        _shards = shards.ToArray();
        _invFreq = Rope.InverseFrequencies(plan.Config);
        _attentionFactor = Rope.AttentionFactor(plan.Config);
    }

    /// <summary>Shards <paramref name="full"/> over <paramref name="ranks"/> ranks (<see cref="TensorParallelPlan.Create"/> checks N).</summary>
    public static TensorParallelCpuModel FromFull(CpuWeights full, int ranks)
    {
        ArgumentNullException.ThrowIfNull(full);
        var plan = TensorParallelPlan.Create(full.Config, ranks);
        return new TensorParallelCpuModel(plan, Enumerable.Range(0, ranks).Select(r => ShardWeights(full, plan, r)).ToArray());
    }

    /// <summary>Rank <paramref name="rank"/>'s part of <paramref name="full"/> under <paramref name="plan"/>.</summary>
    public static CpuShardWeights ShardWeights(CpuWeights full, TensorParallelPlan plan, int rank) => CpuShardWeights.Create(full, plan, rank);

    public TensorParallelPlan Plan { get; }
    public ModelConfig Config => Plan.Config;
    public IReadOnlyList<CpuShardWeights> Shards => _shards;

    /// <summary>Logits <c>[T, vocab]</c> of every position of <paramref name="tokens"/> (from position 0).</summary>
    public float[] Forward(ReadOnlySpan<int> tokens, ShardActivationSink? sink = null)
    {
        if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
        var c = Config;
        int N = Plan.Ranks, T = tokens.Length;
        int H = c.HiddenSize, D = c.HeadDim;
        int nq = Plan.QueryHeadsPerRank, nkv = Plan.KvHeadsPerRank, I = Plan.IntermediatePerRank, P = Plan.VocabPerRank;
        float eps = (float)c.RmsNormEps;
        float scale = 1.0f / MathF.Sqrt(D);

        var x = new float[T * H];                       // residual stream [T, hidden], replicated
        var h = new float[T * H];                       // normed input [T, hidden], replicated
        var delta = new float[T * H];                   // all-reduced block output [T, hidden]
        var q = PerRank(T * nq * D);                    // [T, nq/N, D]
        var k = PerRank(T * nkv * D);                   // [T, nkv/N, D]
        var v = PerRank(T * nkv * D);                   // [T, nkv/N, D]
        var attn = PerRank(T * nq * D);                 // [T, nq/N, D]
        var partial = PerRank(T * H);                   // each rank's o_proj / down_proj partial sum [T, hidden]
        var gate = PerRank(T * I);                      // [T, I/N]
        var up = PerRank(T * I);                        // [T, I/N]
        var act = PerRank(T * I);                       // [T, I/N]

        CpuOps.Embedding(tokens, _shards[0].Embedding, x, H);
        sink?.Invoke(-1, ActivationNames.Embedding, x);

        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            // --- self-attention: heads split over ranks, o_proj partials all-reduced ---
            CpuOps.RmsNorm(x, _shards[0].Layers[layer].InputNorm, eps, h, H);
            sink?.Invoke(-1, ActivationNames.InputNorm(layer), h);
            for (int r = 0; r < N; r++)
            {
                var w = _shards[r].Layers[layer];
                CpuOps.MatMulNT(h, w.QWeight, w.QBias, q[r], T, nq * D, H);
                CpuOps.MatMulNT(h, w.KWeight, w.KBias, k[r], T, nkv * D, H);
                CpuOps.MatMulNT(h, w.VWeight, w.VBias, v[r], T, nkv * D, H);
                CpuOps.ApplyRope(q[r], T, nq, D, 0, _invFreq, _attentionFactor);
                CpuOps.ApplyRope(k[r], T, nkv, D, 0, _invFreq, _attentionFactor);
                sink?.Invoke(r, ActivationNames.Q(layer), q[r]);
                sink?.Invoke(r, ActivationNames.K(layer), k[r]);
                sink?.Invoke(r, ActivationNames.V(layer), v[r]);
                CpuOps.CausalAttention(q[r], k[r], v[r], attn[r], T, 0, nq, nkv, D, scale);
                sink?.Invoke(r, ActivationNames.Attention(layer), attn[r]);
                CpuOps.MatMulNT(attn[r], w.OWeight, default, partial[r], T, H, nq * D);
            }
            AllReduceSum(partial, delta);
            CpuOps.AddInPlace(x, delta);
            sink?.Invoke(-1, ActivationNames.AttentionResidual(layer), x);

            // --- MLP: intermediate split over ranks, down_proj partials all-reduced ---
            CpuOps.RmsNorm(x, _shards[0].Layers[layer].PostAttentionNorm, eps, h, H);
            sink?.Invoke(-1, ActivationNames.PostAttentionNorm(layer), h);
            for (int r = 0; r < N; r++)
            {
                var w = _shards[r].Layers[layer];
                CpuOps.MatMulNT(h, w.GateWeight, default, gate[r], T, I, H);
                CpuOps.MatMulNT(h, w.UpWeight, default, up[r], T, I, H);
                CpuOps.SiluMul(gate[r], up[r], act[r]);
                sink?.Invoke(r, ActivationNames.MlpActivation(layer), act[r]);
                CpuOps.MatMulNT(act[r], w.DownWeight, default, partial[r], T, H, I);
            }
            AllReduceSum(partial, delta);
            CpuOps.AddInPlace(x, delta);
            sink?.Invoke(-1, ActivationNames.Output(layer), x);
        }

        CpuOps.RmsNorm(x, _shards[0].FinalNorm, eps, h, H);
        sink?.Invoke(-1, ActivationNames.FinalNorm, h);

        // --- lm_head: vocabulary rows split over ranks, each rank's [T, ⌈V/N⌉] logits all-gathered ---
        var shardLogits = PerRank(T * P); // the last rank's columns past its real rows stay 0 (padding)
        for (int r = 0; r < N; r++)
        {
            int rows = Plan.Vocab(r).Count;
            var real = new float[T * rows];
            CpuOps.MatMulNT(h, _shards[r].LmHead, default, real, T, rows, H);
            for (int t = 0; t < T; t++) real.AsSpan(t * rows, rows).CopyTo(shardLogits[r].AsSpan(t * P));
        }
        var logits = new float[(long)T * c.VocabSize];
        AllGatherLogits(shardLogits, Plan, T, logits);
        sink?.Invoke(-1, ActivationNames.Logits, logits);
        return logits;

        float[][] PerRank(int length)
        {
            var a = new float[N][];
            for (int r = 0; r < N; r++) a[r] = new float[length];
            return a;
        }
    }

    /// <summary>
    /// What ncclAllReduce(sum) leaves on every rank: result[i] = Σ_r partials[r][i], summed in rank order. (NCCL's
    /// order depends on its algorithm; any order agrees to fp32 rounding.)
    /// </summary>
    internal static void AllReduceSum(IReadOnlyList<float[]> partials, Span<float> result)
    {
        if (partials.Count == 0) throw new ArgumentException("need at least one rank", nameof(partials));
        foreach (var p in partials)
            if (p.Length != result.Length) throw new ArgumentException("every partial must be the size of the result", nameof(partials));
        partials[0].CopyTo(result);
        for (int r = 1; r < partials.Count; r++) CpuOps.AddInPlace(result, partials[r]);
    }

    /// <summary>
    /// The logits all-gather: ncclAllGather of each rank's <c>[T, ⌈V/N⌉]</c> buffer gives <c>[N, T, ⌈V/N⌉]</c> (rank-major);
    /// this reads it as <c>[T, V]</c>: row t is rank 0's row t, then rank 1's, …, with the last rank's padding columns
    /// dropped. (For T = 1, a decode step, the gathered buffer already is the row, padding at its end.)
    /// </summary>
    internal static void AllGatherLogits(IReadOnlyList<float[]> shardLogits, TensorParallelPlan plan, int tokens, Span<float> logits)
    {
        int P = plan.VocabPerRank, V = plan.Config.VocabSize;
        if (shardLogits.Count != plan.Ranks) throw new ArgumentException($"need {plan.Ranks} ranks' logits", nameof(shardLogits));
        if (logits.Length != (long)tokens * V) throw new ArgumentException($"logits must be [{tokens}, {V}]", nameof(logits));
        var gathered = new float[(long)plan.Ranks * tokens * P]; // the all-gather's receive buffer [N, T, P]
        for (int r = 0; r < plan.Ranks; r++)
        {
            if (shardLogits[r].Length != tokens * P) throw new ArgumentException($"rank {r}'s logits must be [{tokens}, {P}]", nameof(shardLogits));
            shardLogits[r].CopyTo(gathered.AsSpan(r * tokens * P));
        }
        for (int r = 0; r < plan.Ranks; r++)
        {
            var vocab = plan.Vocab(r);
            for (int t = 0; t < tokens; t++)
                gathered.AsSpan((r * tokens + t) * P, vocab.Count).CopyTo(logits.Slice(t * V + vocab.Start, vocab.Count));
        }
    }
}

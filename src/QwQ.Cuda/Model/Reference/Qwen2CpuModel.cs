using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// The Qwen2 decoder in plain fp32 on the CPU, written top to bottom like the architecture (HF
/// Qwen2ForCausalLM with eager attention). It is the reference the GPU engine and its kernels are
/// checked against, and itself checked against transformers' goldens.
/// <code>
/// x = embed(tokens)
/// per layer:  h = rmsnorm(x) ; q,k,v = h·Wqᵀ+bq, h·Wkᵀ+bk, h·Wvᵀ+bv ; rope(q), rope(k)
///             x += causal_gqa_attention(q, k, v)·Woᵀ
///             h = rmsnorm(x) ; x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ
/// logits = rmsnorm(x)·Wlmᵀ
/// </code>
/// </summary>
public sealed class Qwen2CpuModel
{
    public ModelConfig Config { get; }
    public CpuWeights Weights { get; }
    /// <summary>RoPE inverse frequencies [D/2] (see <see cref="Rope.InverseFrequencies"/>).</summary>
    public float[] InvFreq { get; }
    /// <summary>YaRN cos/sin scale, 1 without YaRN.</summary>
    public float AttentionFactor { get; }
    /// <summary>The config's rotary embedding (<see cref="InvFreq"/> and <see cref="AttentionFactor"/>): what <see cref="Forward"/> and sessions run.</summary>
    public RopeParameters Rope { get; }

    public Qwen2CpuModel(ModelConfig config, CpuWeights weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Layers.Length != config.NumHiddenLayers
            || weights.Embedding.Length != (long)config.VocabSize * config.HiddenSize
            || weights.LmHead.Length != (long)config.VocabSize * config.HiddenSize
            || weights.Layers.Any(l => l.QWeight.Length != (long)config.QDim * config.HiddenSize
                                       || l.GateWeight.Length != (long)config.IntermediateSize * config.HiddenSize))
            throw new ArgumentException("weights do not have the shapes the config describes", nameof(weights));
        Config = config;
        Weights = weights;
        Rope = QwQ.Cuda.Model.Rope.Parameters(config);
        InvFreq = Rope.InverseFrequencies;
        AttentionFactor = Rope.AttentionFactor;
    }

    /// <summary>
    /// Full forward pass over <paramref name="tokens"/> from position 0: logits <c>[T, vocab]</c>. With an fp8
    /// <paramref name="kvCache"/> every position attends to the keys and values as the fp8 cache gives them back (its own
    /// and those of the same pass included), so the result equals a session's, however it is chunked.
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens, ActivationSink? sink = null, KvCacheKind kvCache = KvCacheKind.Bf16)
    {
        if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
        var kv = CpuKvBlocks.ForPositions(Config, tokens.Length, kvCache);
        using var table = new KvBlockTable(kv.Pool);
        table.Reserve(0, tokens.Length, kv.CopyBlock);
        var normed = Decode(kv, [new CpuBatchRows(tokens.ToArray(), 0, table, Rope)], sink, CancellationToken.None);
        return Logits(normed, tokens.Length, sink);
    }

    /// <summary>A KV-cached session for incremental decoding of up to <paramref name="maxContext"/> tokens.</summary>
    public CpuKvSession CreateSession(int maxContext, KvCacheKind kvCache = KvCacheKind.Bf16) => new(this, maxContext, kvCache);

    /// <summary>
    /// One batched pass: the rows of every item laid end to end. The products run over all rows at once; RoPE (each
    /// item's own: a batch may mix plain and YaRN sequences), the KV write and attention run per item, each over its own sequence's paged KV (positions
    /// [0, StartPos + rows) of its table, which must be reserved). Returns the final-normed hidden states
    /// <c>[rows, hidden]</c>. Every row is computed exactly as it would be alone (row-independent products, per-row
    /// attention), so batching changes no bit of any result. Cancellation is checked between layers; a cancelled
    /// pass leaves the reserved positions half written, so callers roll their tables back.
    /// </summary>
    internal float[] Decode(CpuKvBlocks kv, ReadOnlySpan<CpuBatchRows> items, ActivationSink? sink, CancellationToken ct)
    {
        var c = Config;
        int H = c.HiddenSize, D = c.HeadDim, nq = c.NumAttentionHeads, nkv = c.NumKeyValueHeads;
        int I = c.IntermediateSize;
        float eps = (float)c.RmsNormEps;
        float scale = 1.0f / MathF.Sqrt(D);

        int T = 0, maxKeys = 0;
        foreach (var item in items)
        {
            if (item.Tokens.IsEmpty) throw new ArgumentException("every item needs at least one token", nameof(items));
            T += item.Tokens.Length;
            maxKeys = Math.Max(maxKeys, item.StartPos + item.Tokens.Length);
        }
        var tokens = new int[T];                  // [T] every item's tokens, end to end
        for (int i = 0, row = 0; i < items.Length; row += items[i].Tokens.Length, i++)
            items[i].Tokens.Span.CopyTo(tokens.AsSpan(row));

        var x = new float[T * H];                 // residual stream [T, hidden]
        var h = new float[T * H];                 // normed input [T, hidden]
        var q = new float[T * nq * D];            // [T, nq, D]
        var k = new float[T * nkv * D];           // [T, nkv, D]
        var v = new float[T * nkv * D];           // [T, nkv, D]
        var attn = new float[T * nq * D];         // [T, nq, D]
        var delta = new float[T * H];             // block output to add to the residual [T, hidden]
        var gate = new float[T * I];              // [T, I]
        var up = new float[T * I];                // [T, I]
        var act = new float[T * I];               // [T, I]
        var keys = new float[maxKeys * nkv * D];  // one item's gathered K [positions, nkv, D]
        var values = new float[maxKeys * nkv * D];// one item's gathered V [positions, nkv, D]

        CpuOps.Embedding(tokens, Weights.Embedding, x, H);
        sink?.Invoke(ActivationNames.Embedding, x);

        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            ct.ThrowIfCancellationRequested();
            var w = Weights.Layers[layer];

            // --- self-attention block ---
            CpuOps.RmsNorm(x, w.InputNorm, eps, h, H);
            sink?.Invoke(ActivationNames.InputNorm(layer), h);

            CpuOps.MatMulNT(h, w.QWeight, w.QBias, q, T, nq * D, H);
            CpuOps.MatMulNT(h, w.KWeight, w.KBias, k, T, nkv * D, H);
            CpuOps.MatMulNT(h, w.VWeight, w.VBias, v, T, nkv * D, H);
            for (int i = 0, row = 0; i < items.Length; row += items[i].Tokens.Length, i++)
            {
                var (n, start, rope) = (items[i].Tokens.Length, items[i].StartPos, items[i].Rope);
                CpuOps.ApplyRope(q.AsSpan(row * nq * D, n * nq * D), n, nq, D, start, rope.InverseFrequencies, rope.AttentionFactor);
                CpuOps.ApplyRope(k.AsSpan(row * nkv * D, n * nkv * D), n, nkv, D, start, rope.InverseFrequencies, rope.AttentionFactor);
            }
            sink?.Invoke(ActivationNames.Q(layer), q);
            sink?.Invoke(ActivationNames.K(layer), k);
            sink?.Invoke(ActivationNames.V(layer), v);

            for (int i = 0, row = 0; i < items.Length; row += items[i].Tokens.Length, i++)
            {
                var (n, start, table) = (items[i].Tokens.Length, items[i].StartPos, items[i].Table);
                int kvRows = (start + n) * nkv * D;
                kv.Store(table, layer, start, k.AsSpan(row * nkv * D, n * nkv * D), v.AsSpan(row * nkv * D, n * nkv * D));
                kv.Gather(table, layer, start + n, keys.AsSpan(0, kvRows), values.AsSpan(0, kvRows));
                CpuOps.CausalAttention(q.AsSpan(row * nq * D, n * nq * D), keys.AsSpan(0, kvRows), values.AsSpan(0, kvRows),
                    attn.AsSpan(row * nq * D, n * nq * D), n, start, nq, nkv, D, scale);
            }
            sink?.Invoke(ActivationNames.Attention(layer), attn);

            CpuOps.MatMulNT(attn, w.OWeight, default, delta, T, H, nq * D);
            CpuOps.AddInPlace(x, delta);
            sink?.Invoke(ActivationNames.AttentionResidual(layer), x);

            // --- MLP block ---
            CpuOps.RmsNorm(x, w.PostAttentionNorm, eps, h, H);
            sink?.Invoke(ActivationNames.PostAttentionNorm(layer), h);

            CpuOps.MatMulNT(h, w.GateWeight, default, gate, T, I, H);
            CpuOps.MatMulNT(h, w.UpWeight, default, up, T, I, H);
            CpuOps.SiluMul(gate, up, act);
            sink?.Invoke(ActivationNames.MlpActivation(layer), act);

            CpuOps.MatMulNT(act, w.DownWeight, default, delta, T, H, I);
            CpuOps.AddInPlace(x, delta);
            sink?.Invoke(ActivationNames.Output(layer), x);
        }

        CpuOps.RmsNorm(x, Weights.FinalNorm, eps, h, H);
        sink?.Invoke(ActivationNames.FinalNorm, h);
        return h;
    }

    /// <summary>
    /// <see cref="Decode"/> over the items, then the logits of each item's last row: <c>[items, vocab]</c>
    /// (row i belongs to items[i]).
    /// </summary>
    internal float[] StepLogits(CpuKvBlocks kv, ReadOnlySpan<CpuBatchRows> items, CancellationToken ct)
    {
        var normed = Decode(kv, items, sink: null, ct);
        int H = Config.HiddenSize;
        var last = new float[items.Length * H]; // [items, hidden] each item's last row
        for (int i = 0, row = 0; i < items.Length; i++)
        {
            row += items[i].Tokens.Length;
            normed.AsSpan((row - 1) * H, H).CopyTo(last.AsSpan(i * H));
        }
        return Logits(last, items.Length, sink: null);
    }

    /// <summary>logits <c>[rows, vocab]</c> = normed <c>[rows, hidden]</c> · lm_headᵀ.</summary>
    internal float[] Logits(ReadOnlySpan<float> normed, int rows, ActivationSink? sink)
    {
        var logits = new float[(long)rows * Config.VocabSize];
        CpuOps.MatMulNT(normed, Weights.LmHead, default, logits, rows, Config.VocabSize, Config.HiddenSize);
        sink?.Invoke(ActivationNames.Logits, logits);
        return logits;
    }
}

/// <summary>
/// One sequence's part of a batched CPU pass: <c>Tokens</c> at positions StartPos.. of the sequence whose blocks <c>Table</c>
/// lists, rotated (queries and the keys written) with <c>Rope</c>, which must be the rope its cached keys were written with.
/// </summary>
internal readonly record struct CpuBatchRows(ReadOnlyMemory<int> Tokens, int StartPos, KvBlockTable Table, RopeParameters Rope);

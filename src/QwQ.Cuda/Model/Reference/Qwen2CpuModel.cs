using QwQ.Cuda.Config;

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
        InvFreq = Rope.InverseFrequencies(config);
        AttentionFactor = Rope.AttentionFactor(config);
    }

    /// <summary>Full forward pass over <paramref name="tokens"/> from position 0: logits <c>[T, vocab]</c>.</summary>
    public float[] Forward(ReadOnlySpan<int> tokens, ActivationSink? sink = null)
    {
        if (tokens.IsEmpty) throw new ArgumentException("need at least one token", nameof(tokens));
        var cache = new CpuKvCache(Config, tokens.Length);
        var normed = Decode(tokens, startPos: 0, cache, sink);
        return Logits(normed, tokens.Length, sink);
    }

    /// <summary>A KV-cached session for incremental decoding of up to <paramref name="maxContext"/> tokens.</summary>
    public CpuKvSession CreateSession(int maxContext) => new(this, maxContext);

    /// <summary>
    /// Runs every layer for T new tokens at positions startPos.., writing their K/V into the cache, and
    /// returns the final-normed hidden states <c>[T, hidden]</c>.
    /// </summary>
    internal float[] Decode(ReadOnlySpan<int> tokens, int startPos, CpuKvCache cache, ActivationSink? sink)
    {
        var c = Config;
        int T = tokens.Length, H = c.HiddenSize, D = c.HeadDim, nq = c.NumAttentionHeads, nkv = c.NumKeyValueHeads;
        int I = c.IntermediateSize;
        float eps = (float)c.RmsNormEps;
        float scale = 1.0f / MathF.Sqrt(D);

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

        CpuOps.Embedding(tokens, Weights.Embedding, x, H);
        sink?.Invoke(ActivationNames.Embedding, x);

        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            var w = Weights.Layers[layer];

            // --- self-attention block ---
            CpuOps.RmsNorm(x, w.InputNorm, eps, h, H);
            sink?.Invoke(ActivationNames.InputNorm(layer), h);

            CpuOps.MatMulNT(h, w.QWeight, w.QBias, q, T, nq * D, H);
            CpuOps.MatMulNT(h, w.KWeight, w.KBias, k, T, nkv * D, H);
            CpuOps.MatMulNT(h, w.VWeight, w.VBias, v, T, nkv * D, H);
            CpuOps.ApplyRope(q, T, nq, D, startPos, InvFreq, AttentionFactor);
            CpuOps.ApplyRope(k, T, nkv, D, startPos, InvFreq, AttentionFactor);
            sink?.Invoke(ActivationNames.Q(layer), q);
            sink?.Invoke(ActivationNames.K(layer), k);
            sink?.Invoke(ActivationNames.V(layer), v);

            cache.Store(layer, startPos, k, v);
            int keys = startPos + T;
            CpuOps.CausalAttention(q, cache.Keys(layer, keys), cache.Values(layer, keys), attn, T, startPos, nq, nkv, D, scale);
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

    /// <summary>logits <c>[rows, vocab]</c> = normed <c>[rows, hidden]</c> · lm_headᵀ.</summary>
    internal float[] Logits(ReadOnlySpan<float> normed, int rows, ActivationSink? sink)
    {
        var logits = new float[(long)rows * Config.VocabSize];
        CpuOps.MatMulNT(normed, Weights.LmHead, default, logits, rows, Config.VocabSize, Config.HiddenSize);
        sink?.Invoke(ActivationNames.Logits, logits);
        return logits;
    }
}

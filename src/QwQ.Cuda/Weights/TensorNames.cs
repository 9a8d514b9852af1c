using QwQ.Cuda.Config;

namespace QwQ.Cuda.Weights;

/// <summary>A tensor the checkpoint must hold for a config, with its expected shape (HF [out, in] layout).</summary>
public sealed record ExpectedTensor(string Name, long[] Shape)
{
    public string ShapeText => TensorInfo.FormatShape(Shape);
}

/// <summary>
/// The Hugging Face tensor names of a Qwen2ForCausalLM checkpoint. This is the only place in the
/// code base where they are spelled out; everything else asks here.
/// </summary>
public static class TensorNames
{
    public const string Embedding = "model.embed_tokens.weight";       // [vocab, hidden]
    public const string FinalNorm = "model.norm.weight";               // [hidden]
    public const string LmHead = "lm_head.weight";                     // [vocab, hidden]; absent when tied

    private const string LayersPrefix = "model.layers.";
    private static string Layer(int i) => $"{LayersPrefix}{i}.";

    public static string InputNorm(int layer) => Layer(layer) + "input_layernorm.weight";              // [hidden]
    public static string QWeight(int layer) => Layer(layer) + "self_attn.q_proj.weight";               // [nq*D, hidden]
    public static string QBias(int layer) => Layer(layer) + "self_attn.q_proj.bias";                   // [nq*D]
    public static string KWeight(int layer) => Layer(layer) + "self_attn.k_proj.weight";               // [nkv*D, hidden]
    public static string KBias(int layer) => Layer(layer) + "self_attn.k_proj.bias";                   // [nkv*D]
    public static string VWeight(int layer) => Layer(layer) + "self_attn.v_proj.weight";               // [nkv*D, hidden]
    public static string VBias(int layer) => Layer(layer) + "self_attn.v_proj.bias";                   // [nkv*D]
    public static string OWeight(int layer) => Layer(layer) + "self_attn.o_proj.weight";               // [hidden, nq*D]
    public static string PostAttentionNorm(int layer) => Layer(layer) + "post_attention_layernorm.weight"; // [hidden]
    public static string GateWeight(int layer) => Layer(layer) + "mlp.gate_proj.weight";               // [I, hidden]
    public static string UpWeight(int layer) => Layer(layer) + "mlp.up_proj.weight";                   // [I, hidden]
    public static string DownWeight(int layer) => Layer(layer) + "mlp.down_proj.weight";               // [hidden, I]

    /// <summary>
    /// RoPE's inverse frequencies, [head_dim / 2]. Older transformers versions registered them as a persistent
    /// buffer, so checkpoints saved with those carry one per layer. They are a function of the config alone (rope_theta,
    /// head_dim, rope_scaling), and we compute them from the config, so the stored copy holds nothing to load.
    /// </summary>
    public static string RotaryInvFreq(int layer) => Layer(layer) + "self_attn.rotary_emb.inv_freq";

    /// <summary>The name of the output projection: the embedding itself when tied.</summary>
    public static string OutputProjection(ModelConfig c) => c.TieWordEmbeddings ? Embedding : LmHead;

    /// <summary>
    /// Tensors a checkpoint for <paramref name="c"/> may hold besides <see cref="Expected"/>, because they hold
    /// nothing the config does not already say (see each name). Anything else extra means config and checkpoint
    /// disagree. Only for layers the config has: an inv_freq of layer 40 in a 32-layer config is a mismatch too.
    /// </summary>
    public static IReadOnlySet<string> Ignorable(ModelConfig c) =>
        Enumerable.Range(0, c.NumHiddenLayers).Select(RotaryInvFreq).ToHashSet(StringComparer.Ordinal);

    /// <summary>The decoder layer a tensor name belongs to ("model.layers.7.mlp..." → 7), or null.</summary>
    public static int? LayerIndex(string name)
    {
        if (!name.StartsWith(LayersPrefix, StringComparison.Ordinal)) return null;
        int dot = name.IndexOf('.', LayersPrefix.Length);
        return dot > LayersPrefix.Length &&
               int.TryParse(name.AsSpan(LayersPrefix.Length, dot - LayersPrefix.Length), System.Globalization.NumberStyles.None,
                            System.Globalization.CultureInfo.InvariantCulture, out int layer) ? layer : null;
    }

    /// <summary>Every tensor a checkpoint for <paramref name="c"/> must contain, in load order.</summary>
    public static IReadOnlyList<ExpectedTensor> Expected(ModelConfig c)
    {
        long h = c.HiddenSize, q = c.QDim, kv = c.KvDim, inter = c.IntermediateSize, v = c.VocabSize;
        var list = new List<ExpectedTensor> { new(Embedding, [v, h]) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            list.Add(new(InputNorm(i), [h]));
            list.Add(new(QWeight(i), [q, h]));
            list.Add(new(QBias(i), [q]));
            list.Add(new(KWeight(i), [kv, h]));
            list.Add(new(KBias(i), [kv]));
            list.Add(new(VWeight(i), [kv, h]));
            list.Add(new(VBias(i), [kv]));
            list.Add(new(OWeight(i), [h, q]));
            list.Add(new(PostAttentionNorm(i), [h]));
            list.Add(new(GateWeight(i), [inter, h]));
            list.Add(new(UpWeight(i), [inter, h]));
            list.Add(new(DownWeight(i), [h, inter]));
        }
        list.Add(new(FinalNorm, [h]));
        if (!c.TieWordEmbeddings) list.Add(new(LmHead, [v, h]));
        return list;
    }
}

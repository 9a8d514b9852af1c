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

    private static string Layer(int i) => $"model.layers.{i}.";

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

    /// <summary>The name of the output projection: the embedding itself when tied.</summary>
    public static string OutputProjection(ModelConfig c) => c.TieWordEmbeddings ? Embedding : LmHead;

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

using QwQ.Cuda.Config;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>Writes <see cref="CpuWeights"/> as a bf16 safetensors checkpoint in the HF layout, with its config.json.</summary>
internal static class CheckpointWriter
{
    public static void Write(string dir, CpuWeights w, string configJson, Func<string, bool>? include = null)
    {
        var c = w.Config;
        var tensors = new Dictionary<string, float[]> { [TensorNames.Embedding] = w.Embedding, [TensorNames.FinalNorm] = w.FinalNorm };
        if (!c.TieWordEmbeddings) tensors[TensorNames.LmHead] = w.LmHead;
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var l = w.Layers[i];
            tensors[TensorNames.InputNorm(i)] = l.InputNorm;
            tensors[TensorNames.QWeight(i)] = l.QWeight;
            tensors[TensorNames.QBias(i)] = l.QBias;
            tensors[TensorNames.KWeight(i)] = l.KWeight;
            tensors[TensorNames.KBias(i)] = l.KBias;
            tensors[TensorNames.VWeight(i)] = l.VWeight;
            tensors[TensorNames.VBias(i)] = l.VBias;
            tensors[TensorNames.OWeight(i)] = l.OWeight;
            tensors[TensorNames.PostAttentionNorm(i)] = l.PostAttentionNorm;
            tensors[TensorNames.GateWeight(i)] = l.GateWeight;
            tensors[TensorNames.UpWeight(i)] = l.UpWeight;
            tensors[TensorNames.DownWeight(i)] = l.DownWeight;
        }
        var entries = TensorNames.Expected(c)
            .Where(e => include?.Invoke(e.Name) ?? true)
            .Select(e => SafetensorsTestFiles.Bf16(e.Name, e.Shape, Bf16.FromFloat(tensors[e.Name])));
        Directory.CreateDirectory(dir);
        SafetensorsTestFiles.Write(Path.Combine(dir, "model.safetensors"), entries);
        File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
    }

    /// <summary>A tiny Qwen2 config with QwQ's head ratio scaled down (10 query / 2 KV heads, head_dim 32).</summary>
    public static string TinyConfigJson(int layers = 2, int vocab = 256, string? ropeScaling = null) => $$"""
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":320,"intermediate_size":384,
         "num_hidden_layers":{{layers}},"num_attention_heads":10,"num_key_value_heads":2,"vocab_size":{{vocab}},
         "rms_norm_eps":1e-5,"rope_theta":1000000.0,"max_position_embeddings":4096,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16","use_sliding_window":false{{(ropeScaling is null ? "" : ",\"rope_scaling\":" + ropeScaling)}}}
        """;
}

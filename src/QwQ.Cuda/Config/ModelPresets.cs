using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Config;

/// <summary>
/// Architectures known by name, so tools can size memory or build synthetic weights without a
/// checkpoint directory. Each preset is the release's config.json verbatim, parsed by the same code.
/// </summary>
public static class ModelPresets
{
    /// <summary>config.json of the public QwQ-32B release (Qwen/QwQ-32B).</summary>
    internal const string QwQ32BConfigJson = """
        {
          "architectures": [
            "Qwen2ForCausalLM"
          ],
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151645,
          "hidden_act": "silu",
          "hidden_size": 5120,
          "initializer_range": 0.02,
          "intermediate_size": 27648,
          "max_position_embeddings": 40960,
          "max_window_layers": 64,
          "model_type": "qwen2",
          "num_attention_heads": 40,
          "num_hidden_layers": 64,
          "num_key_value_heads": 8,
          "rms_norm_eps": 1e-05,
          "rope_theta": 1000000.0,
          "sliding_window": 32768,
          "tie_word_embeddings": false,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.43.1",
          "use_cache": true,
          "use_sliding_window": false,
          "vocab_size": 152064
        }
        """;

    /// <summary>
    /// QwQ-32B with the YaRN block its model card says to add for prompts past 32768 tokens
    /// (factor 4 × original 32768 = 131072 positions).
    /// </summary>
    internal static readonly string QwQ32BYarnConfigJson = QwQ32BConfigJson.TrimEnd().TrimEnd('}').TrimEnd() +
        """
        ,
          "rope_scaling": { "factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn" }
        }
        """;

    private static readonly Dictionary<string, string> Presets = new(StringComparer.OrdinalIgnoreCase)
    {
        ["qwq-32b"] = QwQ32BConfigJson,
        ["qwq-32b-yarn"] = QwQ32BYarnConfigJson,
    };

    public static IReadOnlyCollection<string> Names => Presets.Keys;

    /// <summary>The named preset's config; unknown names list the known ones.</summary>
    public static ModelConfig Get(string name)
    {
        if (!Presets.TryGetValue(name, out var json))
            throw new ConfigException($"unknown model preset '{name}' (known: {string.Join(", ", Presets.Keys)})");
        return ModelConfig.Parse(json, $"preset '{name}'");
    }
}

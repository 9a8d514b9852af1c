using System.Text.Json.Nodes;
using QwQ.Cuda.Config;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>config.json texts with a quantization_config, for parsing, validation and loading tests.</summary>
internal static class QuantizedConfigs
{
    /// <summary>
    /// A small Qwen2 whose sizes fit every AWQ group size up to 64: hidden 64, 4 heads of 16, 2 KV heads, I 128,
    /// vocab 40, one layer (so the q, k/v, o, gate/up and down shapes all differ).
    /// </summary>
    public static string Json(JsonNode? quantization, int hidden = 64, int intermediate = 128, int layers = 1, string dtype = "bfloat16",
                              bool tied = false)
    {
        var root = new JsonObject
        {
            ["architectures"] = new JsonArray("Qwen2ForCausalLM"), ["model_type"] = "qwen2", ["hidden_act"] = "silu",
            ["hidden_size"] = hidden, ["intermediate_size"] = intermediate, ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["vocab_size"] = 40,
            ["max_position_embeddings"] = 64, ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 10000.0,
            ["tie_word_embeddings"] = tied, ["torch_dtype"] = dtype, ["use_sliding_window"] = false,
        };
        if (quantization is not null) root["quantization_config"] = quantization;
        return root.ToJsonString();
    }

    public static ModelConfig Parse(JsonNode? quantization, int hidden = 64, int intermediate = 128, int layers = 1, string dtype = "bfloat16",
                                    bool tied = false) =>
        ModelConfig.Parse(Json(quantization, hidden, intermediate, layers, dtype, tied), "config.json");

    /// <summary>llm-compressor's FP8_DYNAMIC quantization_config (what tiny-fp8 has); edit the returned node freely.</summary>
    public static JsonObject Fp8(string strategy = "channel", bool staticInput = false, params string[] ignore) => new()
    {
        ["config_groups"] = new JsonObject
        {
            ["group_0"] = new JsonObject
            {
                ["input_activations"] = new JsonObject
                {
                    ["actorder"] = null, ["block_structure"] = null, ["dynamic"] = !staticInput, ["group_size"] = null,
                    ["num_bits"] = 8, ["observer"] = staticInput ? "minmax" : null, ["observer_kwargs"] = new JsonObject(),
                    ["strategy"] = staticInput ? "tensor" : "token", ["symmetric"] = true, ["type"] = "float",
                },
                ["output_activations"] = null,
                ["targets"] = new JsonArray("Linear"),
                ["weights"] = new JsonObject
                {
                    ["actorder"] = null, ["block_structure"] = null, ["dynamic"] = false, ["group_size"] = null,
                    ["num_bits"] = 8, ["observer"] = "minmax", ["observer_kwargs"] = new JsonObject(),
                    ["strategy"] = strategy, ["symmetric"] = true, ["type"] = "float",
                },
            },
        },
        ["format"] = "float-quantized",
        ["global_compression_ratio"] = null,
        ["ignore"] = new JsonArray((ignore.Length == 0 ? ["lm_head"] : ignore).Select(i => (JsonNode?)i).ToArray()),
        ["kv_cache_scheme"] = null,
        ["quant_method"] = "compressed-tensors",
        ["quantization_status"] = "compressed",
    };

    /// <summary>Qwen/QwQ-32B-AWQ's quantization_config with another group size.</summary>
    public static JsonObject Awq(int groupSize = 32, params string[] notConverted) => new()
    {
        ["bits"] = 4, ["group_size"] = groupSize,
        ["modules_to_not_convert"] = notConverted.Length == 0 ? null : new JsonArray(notConverted.Select(m => (JsonNode?)m).ToArray()),
        ["quant_method"] = "awq", ["version"] = "gemm", ["zero_point"] = true,
    };

    /// <summary>The weights args of an FP8 config's only group.</summary>
    public static JsonObject WeightArgs(JsonObject fp8) => fp8["config_groups"]!["group_0"]!["weights"]!.AsObject();

    public static JsonObject InputArgs(JsonObject fp8) => fp8["config_groups"]!["group_0"]!["input_activations"]!.AsObject();
}

namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// Receives named intermediates of a CPU forward pass (see <see cref="ActivationNames"/>); the span is only
/// valid during the call, so copy what you keep.
/// </summary>
public delegate void ActivationSink(string name, ReadOnlySpan<float> values);

/// <summary>Names under which <see cref="Qwen2CpuModel"/> reports intermediates. Shapes are for T new tokens.</summary>
public static class ActivationNames
{
    public const string Embedding = "embedding";                             // [T, hidden]
    public static string InputNorm(int layer) => $"layer{layer}.input_norm";  // [T, hidden]
    public static string Q(int layer) => $"layer{layer}.q";                   // [T, nq, D] after bias and RoPE
    public static string K(int layer) => $"layer{layer}.k";                   // [T, nkv, D] after bias and RoPE
    public static string V(int layer) => $"layer{layer}.v";                   // [T, nkv, D]
    public static string Attention(int layer) => $"layer{layer}.attention";   // [T, nq, D] before o_proj
    public static string AttentionResidual(int layer) => $"layer{layer}.attention_residual"; // [T, hidden] after o_proj + residual
    public static string PostAttentionNorm(int layer) => $"layer{layer}.post_attention_norm"; // [T, hidden]
    public static string MlpActivation(int layer) => $"layer{layer}.mlp_act"; // [T, I] silu(gate)·up
    public static string Output(int layer) => $"layer{layer}.output";         // [T, hidden] residual after the layer
    public const string FinalNorm = "final_norm";                             // [T, hidden]
    public const string Logits = "logits";                                    // [T, vocab] (or [1, vocab] in a session)
}

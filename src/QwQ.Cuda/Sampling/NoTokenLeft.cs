using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Sampling;

/// <summary>
/// When every logit is −∞ or NaN after bias and penalties there is no token to pick: any id would be a silent guess.
/// Both samplers say so instead (the GPU kernels write <see cref="Token"/> and count nothing), and
/// <see cref="Reason"/> words the error from the model's own logits, because the fix differs: a logit_bias that bans
/// every token the model left is the caller's option, NaN or −∞ everywhere is the model (NaN weights, an overflow).
/// </summary>
internal static class NoTokenLeft
{
    /// <summary>The token a sampler reports when nothing can be picked (kernels/sampling.cu's SAMPLING_NO_TOKEN).</summary>
    public const int Token = -1;

    /// <param name="logits">The model's logits before bias and penalties, at least [validVocab].</param>
    /// <param name="validVocab">The tokenizer's size: the ids that can be sampled.</param>
    public static QwqException Reason(ReadOnlySpan<float> logits, int validVocab)
    {
        foreach (float x in logits[..validVocab])
            if (!float.IsNaN(x) && !float.IsNegativeInfinity(x))
                return new OptionException(
                    $"no token can be sampled: after logit_bias and penalties all {validVocab} logits are -infinity (or NaN); remove some -infinity logit_bias entries.");
        return new QwqException(
            $"no token can be sampled: the model's logits are NaN or -infinity for all {validVocab} tokens; its weights hold NaN or " +
            "infinity (a corrupt checkpoint?) or the computation overflowed.");
    }
}

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Sampling;

/// <summary>
/// How the next token is chosen from the last position's logits. Applied in this order (the order of HF's
/// logits processors in generate()):
/// <list type="number">
/// <item>logit bias: logit += bias[id];</item>
/// <item>repetition penalty (HF), for ids seen: logit &lt; 0 ? logit * p : logit / p;</item>
/// <item>presence/frequency penalties (OpenAI), for ids seen c &gt; 0 times: logit -= presence + frequency * c;</item>
/// <item>temperature: logit /= T (T = 0: greedy, the argmax with the lowest id on ties; the steps below are skipped);</item>
/// <item>top-k: keep logits &gt;= the k-th largest (ties at the threshold are all kept, as HF);</item>
/// <item>top-p: keep the fewest largest tokens whose probability mass is &gt;= p (of the top-k survivors), plus all
/// ties of the last one kept;</item>
/// <item>min-p: keep tokens with prob &gt;= min_p * max prob;</item>
/// <item>draw one token from the renormalised survivors.</item>
/// </list>
/// "Seen" means counted by the sampler: every sampled token is counted, and callers may seed the counts
/// (e.g. with the prompt, as HF's repetition penalty does) with <c>Record</c>. Ids at or above the tokenizer's
/// vocabulary size are never chosen. Probabilities are computed in integer units of 2^-40 of the top token's
/// probability, so tokens more than ~27.7 (temperature-scaled) logits below the top are never drawn.
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>0 = greedy. HF/OpenAI semantics: logits are divided by it.</summary>
    public float Temperature { get; init; } = 1.0f;

    /// <summary>0 = off.</summary>
    public int TopK { get; init; }

    /// <summary>1 = off; in (0, 1].</summary>
    public float TopP { get; init; } = 1.0f;

    /// <summary>0 = off; in [0, 1].</summary>
    public float MinP { get; init; }

    /// <summary>OpenAI presence penalty: subtracted once from the logit of every token seen. 0 = off.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>OpenAI frequency penalty: subtracted per occurrence. 0 = off.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>HF repetition penalty (&gt; 0): seen tokens' positive logits divided by it, negative ones multiplied. 1 = off.</summary>
    public float RepetitionPenalty { get; init; } = 1.0f;

    /// <summary>Added to the logits of the given token ids (may be ±infinity to force or ban a token).
    /// Treat as immutable: the GPU sampler re-uploads it only when a different dictionary instance is passed.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Same seed + same logits + same step ⇒ same token. Null: a seed drawn once per sampler.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Greedy decoding (temperature 0).</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0f };

    public bool IsGreedy => Temperature == 0f;

    internal bool HasRepetitionPenalty => RepetitionPenalty != 1.0f;

    internal bool HasPresenceOrFrequencyPenalty => PresencePenalty != 0f || FrequencyPenalty != 0f;

    /// <summary>
    /// Options from a model's generation_config.json; missing values take QwQ-32B's published defaults
    /// (temperature 0.6, top_p 0.95, top_k 40, repetition_penalty 1.0).
    /// </summary>
    public static SamplingOptions FromGenerationConfig(float? temperature = null, float? topP = null, int? topK = null,
        float? repetitionPenalty = null) => new()
    {
        Temperature = temperature ?? 0.6f,
        TopP = topP ?? 0.95f,
        TopK = topK ?? 40,
        RepetitionPenalty = repetitionPenalty ?? 1.0f,
    };

    /// <summary>
    /// Throws <see cref="OptionException"/> naming the first invalid option and its valid range.
    /// <paramref name="vocabSize"/> (the tokenizer's size) bounds logit-bias ids; null skips that check.
    /// </summary>
    public void Validate(int? vocabSize = null)
    {
        if (!(Temperature >= 0f) || float.IsPositiveInfinity(Temperature))
            throw new OptionException($"temperature must be a finite number >= 0 (0 = greedy), got {Temperature}.");
        if (TopK < 0)
            throw new OptionException($"top_k must be >= 0 (0 = off), got {TopK}.");
        if (!(TopP > 0f && TopP <= 1f))
            throw new OptionException($"top_p must be in (0, 1] (1 = off), got {TopP}.");
        if (!(MinP >= 0f && MinP <= 1f))
            throw new OptionException($"min_p must be in [0, 1] (0 = off), got {MinP}.");
        if (!(RepetitionPenalty > 0f) || float.IsPositiveInfinity(RepetitionPenalty))
            throw new OptionException($"repetition_penalty must be a finite number > 0 (1 = off), got {RepetitionPenalty}.");
        if (!float.IsFinite(PresencePenalty))
            throw new OptionException($"presence_penalty must be a finite number (0 = off), got {PresencePenalty}.");
        if (!float.IsFinite(FrequencyPenalty))
            throw new OptionException($"frequency_penalty must be a finite number (0 = off), got {FrequencyPenalty}.");
        if (LogitBias is not null)
        {
            foreach (var (id, bias) in LogitBias)
            {
                if (id < 0 || (vocabSize is int v && id >= v))
                    throw new OptionException(vocabSize is int n
                        ? $"logit_bias token id {id} is out of range: ids must be in [0, {n - 1}]."
                        : $"logit_bias token id {id} is out of range: ids must be >= 0.");
                if (float.IsNaN(bias))
                    throw new OptionException($"logit_bias for token id {id} must be a number, got NaN.");
            }
            // Ids are distinct and, with a vocabulary, in range: as many bans as ids leave nothing to sample.
            if (vocabSize is int all && LogitBias.Count(b => float.IsNegativeInfinity(b.Value)) == all)
                throw new OptionException(
                    $"logit_bias bans every token (-infinity on all {all} ids), so nothing could be sampled; leave at least one token without a -infinity bias.");
        }
    }
}

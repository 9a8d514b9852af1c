using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Cli;

/// <summary>Lays the sampling flags a user gave over the model's defaults.</summary>
internal static class SamplingBinding
{
    public static SamplingOptions Apply(SamplingOptions defaults, double? temperature, double? topP, int? topK, double? minP,
        double? presence, double? frequency, double? repetition, ulong? seed) => defaults with
    {
        Temperature = temperature is double t ? (float)t : defaults.Temperature,
        TopP = topP is double p ? (float)p : defaults.TopP,
        TopK = topK ?? defaults.TopK,
        MinP = minP is double m ? (float)m : defaults.MinP,
        PresencePenalty = presence is double pp ? (float)pp : defaults.PresencePenalty,
        FrequencyPenalty = frequency is double fp ? (float)fp : defaults.FrequencyPenalty,
        RepetitionPenalty = repetition is double rp ? (float)rp : defaults.RepetitionPenalty,
        Seed = seed ?? defaults.Seed,
    };
}

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Config;

/// <summary>
/// Sampling defaults published with a checkpoint (generation_config.json). Missing fields take
/// transformers' GenerationConfig defaults; a missing file gives <see cref="Default"/>.
/// </summary>
public sealed record GenerationConfig
{
    /// <summary>Tokens that end generation (the file may give one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public int? BosTokenId { get; init; }
    public int? PadTokenId { get; init; }
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    /// <summary>0 disables top-k.</summary>
    public int TopK { get; init; } = 50;
    public double RepetitionPenalty { get; init; } = 1.0;
    public bool DoSample { get; init; }

    public static GenerationConfig Default { get; } = new();

    /// <summary>Reads generation_config.json; a file that does not exist gives <see cref="Default"/>.</summary>
    public static GenerationConfig Load(string path) =>
        File.Exists(path) ? Parse(JsonFields.ReadFile(path, "generation config"), path) : Default;

    public static GenerationConfig Parse(string json, string sourceName)
    {
        using var doc = JsonFields.ParseDocument(json, sourceName);
        var f = JsonFields.Root(doc, sourceName);
        var d = Default;
        const int maxId = ModelConfig.MaxVocabSize - 1;

        double temperature = f.OptionalDouble("temperature", NumberRange.NonNegative) ?? d.Temperature;
        double topP = f.OptionalDouble("top_p", new NumberRange(0, 1, MinExclusive: true)) ?? d.TopP;
        int topK = f.OptionalInt("top_k", 0, ModelConfig.MaxVocabSize) ?? d.TopK;
        double rep = f.OptionalDouble("repetition_penalty", NumberRange.Positive) ?? d.RepetitionPenalty;

        return new GenerationConfig
        {
            EosTokenIds = f.OptionalIntList("eos_token_id", 0, maxId) ?? d.EosTokenIds,
            BosTokenId = f.OptionalInt("bos_token_id", 0, maxId),
            PadTokenId = f.OptionalInt("pad_token_id", 0, maxId),
            Temperature = temperature,
            TopP = topP,
            TopK = topK,
            RepetitionPenalty = rep,
            DoSample = f.OptionalBool("do_sample") ?? d.DoSample,
        };
    }
}

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
    public static GenerationConfig Load(string path)
    {
        if (!File.Exists(path)) return Default;
        string json;
        try { json = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"{path}: cannot read generation config: {e.Message}");
        }
        return Parse(json, path);
    }

    public static GenerationConfig Parse(string json, string sourceName)
    {
        using var doc = JsonFields.ParseDocument(json, sourceName);
        var f = JsonFields.Root(doc, sourceName);
        var d = Default;

        double temperature = f.OptionalDouble("temperature") ?? d.Temperature;
        if (temperature < 0) throw f.Invalid($"'temperature' = {JsonFields.Format(temperature)} must not be negative");
        double topP = f.OptionalDouble("top_p") ?? d.TopP;
        if (!(topP > 0 && topP <= 1)) throw f.Invalid($"'top_p' = {JsonFields.Format(topP)} must be in (0, 1]");
        int topK = f.OptionalInt("top_k") ?? d.TopK;
        if (topK < 0) throw f.Invalid($"'top_k' = {topK} must not be negative");
        double rep = f.OptionalDouble("repetition_penalty") ?? d.RepetitionPenalty;
        if (!(rep > 0)) throw f.Invalid($"'repetition_penalty' = {JsonFields.Format(rep)} must be positive");

        return new GenerationConfig
        {
            EosTokenIds = f.OptionalIntList("eos_token_id") ?? d.EosTokenIds,
            BosTokenId = f.OptionalInt("bos_token_id"),
            PadTokenId = f.OptionalInt("pad_token_id"),
            Temperature = temperature,
            TopP = topP,
            TopK = topK,
            RepetitionPenalty = rep,
            DoSample = f.OptionalBool("do_sample") ?? d.DoSample,
        };
    }
}

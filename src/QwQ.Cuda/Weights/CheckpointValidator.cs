using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// Checks, before anything is uploaded, that a checkpoint and its config describe the same model exactly: every
/// tensor the config needs is there with the exact shape, and no tensor is left over (but the few that
/// <see cref="TensorNames.Ignorable"/> lists). A leftover tensor means the config describes another model, say one
/// layer too few or tied embeddings where the checkpoint has its own lm_head, and running it would silently
/// compute something else. All problems are reported at once (up to a limit), each naming the tensor and its file.
/// </summary>
public static class CheckpointValidator
{
    private const int MaxReported = 10;

    public static void Validate(SafetensorsCheckpoint checkpoint, ModelConfig config)
    {
        var problems = new List<string>();
        var expectedNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (var expected in TensorNames.Expected(config))
        {
            expectedNames.Add(expected.Name);
            if (!checkpoint.Tensors.TryGetValue(expected.Name, out var t))
            {
                string why = expected.Name == TensorNames.LmHead ? " (config has tie_word_embeddings = false)" : "";
                problems.Add($"tensor '{expected.Name}' is missing{why}; expected shape {expected.ShapeText}");
                continue;
            }
            if (!t.Shape.SequenceEqual(expected.Shape))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} has shape {t.ShapeText}, expected {expected.ShapeText}");
        }

        var ignorable = TensorNames.Ignorable(config);
        foreach (var t in checkpoint.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            if (!expectedNames.Contains(t.Name) && !ignorable.Contains(t.Name))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} is not part of the model the config describes{ExtraHint(t.Name, config)}");
        }
        if (problems.Count == 0) return;

        string head = problems.Count == 1
            ? $"{checkpoint.Directory}: config.json and the checkpoint disagree: "
            : $"{checkpoint.Directory}: config.json and the checkpoint disagree ({problems.Count} problems):\n  ";
        string body = string.Join("\n  ", problems.Take(MaxReported));
        if (problems.Count > MaxReported) body += $"\n  ... and {problems.Count - MaxReported} more";
        throw new WeightsException(head + body);
    }

    /// <summary>Which config field most likely disagrees, for the two mismatches that are easy to make.</summary>
    private static string ExtraHint(string name, ModelConfig config)
    {
        if (name == TensorNames.LmHead && config.TieWordEmbeddings)
            return " (config has tie_word_embeddings = true, but the checkpoint has an output projection of its own)";
        if (TensorNames.LayerIndex(name) is int layer && layer >= config.NumHiddenLayers)
            return $" (config has num_hidden_layers = {config.NumHiddenLayers}, but the checkpoint has layer {layer})";
        return "";
    }
}

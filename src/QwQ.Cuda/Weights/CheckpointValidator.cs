using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// Checks, before anything is uploaded, that a checkpoint holds every tensor the config needs with the
/// right shape and a dtype we can convert. All problems are reported at once (up to a limit), each
/// naming the tensor and, where it exists, its file.
/// </summary>
public static class CheckpointValidator
{
    private const int MaxReported = 10;

    public static void Validate(SafetensorsCheckpoint checkpoint, ModelConfig config)
    {
        var problems = new List<string>();
        foreach (var expected in TensorNames.Expected(config))
        {
            if (!checkpoint.Tensors.TryGetValue(expected.Name, out var t))
            {
                string why = expected.Name == TensorNames.LmHead ? " (config has tie_word_embeddings = false)" : "";
                problems.Add($"tensor '{expected.Name}' is missing{why}; expected shape {expected.ShapeText}");
                continue;
            }
            if (!t.Shape.SequenceEqual(expected.Shape))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} has shape {t.ShapeText}, expected {expected.ShapeText}");
            if (!Enum.IsDefined(t.DType))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} has unsupported dtype {t.DType}");
        }
        if (problems.Count == 0) return;

        string head = problems.Count == 1
            ? $"{checkpoint.Directory}: checkpoint does not match the model config: "
            : $"{checkpoint.Directory}: checkpoint does not match the model config ({problems.Count} problems):\n  ";
        string body = string.Join("\n  ", problems.Take(MaxReported));
        if (problems.Count > MaxReported) body += $"\n  ... and {problems.Count - MaxReported} more";
        throw new WeightsException(head + body);
    }
}

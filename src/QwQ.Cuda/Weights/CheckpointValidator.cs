using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// Checks, before anything is uploaded, that a checkpoint and its config describe the same model exactly: every
/// tensor the config needs is there with the exact shape and a dtype it may have (any plain float for unquantized
/// tensors; F8_E4M3 or I32 exactly where the config's quantization puts them), and no tensor is left over (but the
/// few that <see cref="TensorNames.Ignorable"/> lists). A leftover tensor means the config describes another model,
/// say one layer too few or tied embeddings where the checkpoint has its own lm_head, and running it would silently
/// compute something else. All problems are reported at once (up to a limit), each naming the tensor and its file;
/// when the checkpoint is quantized differently from what the config says (FP8 tensors under a config without
/// quantization_config, say), the first line says so, naming both.
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
                string dtype = expected.DTypes.SequenceEqual(ExpectedTensor.PlainFloat) ? "" : $"{expected.DTypeText} ";
                problems.Add($"tensor '{expected.Name}' is missing{why}; expected {dtype}shape {expected.ShapeText}");
                continue;
            }
            if (!expected.Fits(t.Shape))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} has shape {t.ShapeText}, expected {expected.ShapeText}");
            if (!expected.DTypes.Contains(t.DType))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} has dtype {t.DType}, expected {expected.DTypeText}");
        }

        var ignorable = TensorNames.Ignorable(config);
        foreach (var t in checkpoint.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            if (!expectedNames.Contains(t.Name) && !ignorable.Contains(t.Name))
                problems.Add($"tensor '{t.Name}' in {t.FilePath} is not part of the model the config describes{ExtraHint(t.Name, config)}");
        }
        if (problems.Count == 0) return;

        if (LayoutMismatch(checkpoint, config) is { } mismatch) problems.Insert(0, mismatch);
        string head = problems.Count == 1
            ? $"{checkpoint.Directory}: config.json and the checkpoint disagree: "
            : $"{checkpoint.Directory}: config.json and the checkpoint disagree ({problems.Count} problems):\n  ";
        string body = string.Join("\n  ", problems.Take(MaxReported));
        if (problems.Count > MaxReported) body += $"\n  ... and {problems.Count - MaxReported} more";
        throw new WeightsException(head + body);
    }

    /// <summary>One line naming both sides when the checkpoint's tensors show another quantization than the config's; else null.</summary>
    private static string? LayoutMismatch(SafetensorsCheckpoint checkpoint, ModelConfig config)
    {
        var (found, example) = QuantizedTensorNames.Detect(checkpoint.Tensors.Values);
        if (found == config.Quantization?.Method) return null;
        string configSide = config.Quantization is { } q
            ? $"config.json's quantization_config says {q.Description}"
            : $"config.json has no quantization_config (an unquantized {config.TorchDtype} model)";
        string checkpointSide = found switch
        {
            QuantizationMethod.CompressedTensorsFp8 => $"the checkpoint holds FP8 weights (F8_E4M3 tensors such as '{example!.Name}')",
            QuantizationMethod.AwqInt4 => $"the checkpoint holds AWQ INT4 weights (I32 tensors such as '{example!.Name}')",
            _ => "the checkpoint holds no quantized weights (no F8_E4M3 or I32 qweight tensor)",
        };
        return $"{configSide}, but {checkpointSide}; is config.json from another export of the model?";
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

namespace QwQ.Cuda.Config;

/// <summary>
/// YaRN RoPE scaling, as config.json's <c>rope_scaling</c> (transformers 4) or <c>rope_parameters</c>
/// (transformers 5) describes it. Field meanings and defaults follow transformers'
/// <c>_compute_yarn_parameters</c>; <see cref="QwQ.Cuda.Model.Rope"/> turns them into frequencies.
/// </summary>
public sealed record RopeScaling
{
    /// <summary>Always "yarn": the only scaling Qwen2 checkpoints use and the only one we implement.</summary>
    public string Type { get; init; } = "yarn";

    /// <summary>Context extension factor (≥ 1).</summary>
    public required double Factor { get; init; }

    /// <summary>Pre-extension training length; transformers defaults it to max_position_embeddings.</summary>
    public required int OriginalMaxPositionEmbeddings { get; init; }

    /// <summary>Rotations above which a frequency is kept as is (extrapolated). Default 32.</summary>
    public double BetaFast { get; init; } = 32;

    /// <summary>Rotations below which a frequency is fully interpolated (divided by the factor). Default 1.</summary>
    public double BetaSlow { get; init; } = 1;

    /// <summary>Explicit scale of cos/sin; null means derived from <see cref="Factor"/> (and mscale).</summary>
    public double? AttentionFactor { get; init; }

    /// <summary>DeepSeek-style magnitude scale numerator; used only together with <see cref="MscaleAllDim"/>.</summary>
    public double? Mscale { get; init; }

    /// <summary>DeepSeek-style magnitude scale denominator.</summary>
    public double? MscaleAllDim { get; init; }

    /// <summary>Round the correction range outwards to whole dimensions (transformers' default: true).</summary>
    public bool Truncate { get; init; } = true;
}

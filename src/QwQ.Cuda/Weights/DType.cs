namespace QwQ.Cuda.Weights;

/// <summary>Element types we read from safetensors files (their header spelling is the enum name).</summary>
public enum DType
{
    BF16,
    F16,
    F32,
    /// <summary>fp8 e4m3 "fn" (no infinities; NaN is 0x7F/0xFF; max 448): FP8 checkpoints' weights, each row or tensor with a scale.</summary>
    F8_E4M3,
    /// <summary>int32: AWQ's packed 4-bit weights and zero points (8 values per element).</summary>
    I32,
}

public static class DTypeExtensions
{
    public static int ElementSize(this DType t) => t switch
    {
        DType.F32 or DType.I32 => 4,
        DType.BF16 or DType.F16 => 2,
        DType.F8_E4M3 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    /// <summary>
    /// Whether the elements are plain floating-point values that convert to fp32 or bf16 on their own. F8_E4M3 and I32
    /// are not: their values mean something only together with the scales (and zero points) stored beside them.
    /// </summary>
    public static bool IsPlainFloat(this DType t) => t is DType.BF16 or DType.F16 or DType.F32;

    /// <summary>The dtypes <see cref="ParseSafetensors"/> knows, in the header's spelling, for messages.</summary>
    public static string SupportedNames => string.Join(", ", Enum.GetNames<DType>());

    /// <summary>Parses a safetensors dtype string; null for dtypes we do not support.</summary>
    public static DType? ParseSafetensors(string name) => name switch
    {
        "BF16" => DType.BF16,
        "F16" => DType.F16,
        "F32" => DType.F32,
        "F8_E4M3" => DType.F8_E4M3,
        "I32" => DType.I32,
        _ => null,
    };
}

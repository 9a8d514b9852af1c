namespace QwQ.Cuda.Weights;

/// <summary>Element types we read from safetensors files (their header spelling is the enum name).</summary>
public enum DType
{
    BF16,
    F16,
    F32,
}

public static class DTypeExtensions
{
    public static int ElementSize(this DType t) => t == DType.F32 ? 4 : 2;

    /// <summary>Parses a safetensors dtype string; null for dtypes we do not support.</summary>
    public static DType? ParseSafetensors(string name) => name switch
    {
        "BF16" => DType.BF16,
        "F16" => DType.F16,
        "F32" => DType.F32,
        _ => null,
    };
}

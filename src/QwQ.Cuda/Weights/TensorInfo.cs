namespace QwQ.Cuda.Weights;

/// <summary>Where one tensor's bytes lie: <see cref="DataOffset"/> is absolute within <see cref="FilePath"/>.</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, string FilePath, long DataOffset, long ByteLength)
{
    public long ElementCount => ByteLength / DType.ElementSize();

    public string ShapeText => FormatShape(Shape);

    public static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";

    public override string ToString() => $"{Name} {DType}{ShapeText} in {FilePath}";
}

namespace QwQ.Cuda.Native;

/// <summary>Grid or block dimensions of a kernel launch.</summary>
internal readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1)
{
    public override string ToString() => $"({X},{Y},{Z})";
}

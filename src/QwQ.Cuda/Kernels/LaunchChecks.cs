using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Argument checks and launch-size helpers shared by the op classes. A bad argument fails here, on the host,
/// naming the argument, instead of becoming an out-of-bounds access or a silent wrong result on the GPU.
/// </summary>
internal static class LaunchChecks
{
    /// <summary>Grid-stride kernels never need more blocks than this (≈ 16M threads at 256 per block).</summary>
    public const long MaxGridStrideBlocks = 1 << 16;

    public static void NotNull(ulong ptr, string name)
    {
        if (ptr == 0) throw new ArgumentException($"{name} is a null device pointer.", name);
    }

    public static void Aligned(ulong ptr, int bytes, string name)
    {
        NotNull(ptr, name);
        if ((ptr & (ulong)(bytes - 1)) != 0)
            throw new ArgumentException($"{name} (0x{ptr:x}) must be {bytes}-byte aligned.", name);
    }

    public static void Positive(long value, string name)
    {
        if (value <= 0) throw new ArgumentException($"{name} must be positive (got {value}).", name);
    }

    public static void NonNegative(long value, string name)
    {
        if (value < 0) throw new ArgumentException($"{name} must not be negative (got {value}).", name);
    }

    public static void PositiveFinite(float value, string name)
    {
        if (!(value > 0) || float.IsInfinity(value)) throw new ArgumentException($"{name} must be a positive finite number (got {value}).", name);
    }

    public static void Stream(CudaStream stream, string name) => ArgumentNullException.ThrowIfNull(stream, name);

    /// <summary>Blocks for a grid-stride loop over <paramref name="work"/> items with <paramref name="threads"/> per block.</summary>
    public static uint GridStrideBlocks(long work, int threads) =>
        (uint)Math.Clamp((work + threads - 1) / threads, 1, MaxGridStrideBlocks);

    /// <summary><paramref name="value"/> rounded up to a multiple of 32, clamped to [32, <paramref name="max"/>].</summary>
    public static uint WarpMultiple(long value, int max) => (uint)Math.Clamp((value + 31) / 32 * 32, 32, max);
}

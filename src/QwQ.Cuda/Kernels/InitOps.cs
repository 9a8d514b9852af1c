using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Device-side initialisation (kernels/init.cu): seeded normal fill for synthetic weights, constant fill, and
/// fp32 → bf16 conversion. The normal fill is a pure function of (seed, element index), so the same seed gives
/// the same tensor whatever the launch geometry; <see cref="NormalReference"/> is the host mirror of it.
/// </summary>
internal sealed class InitOps
{
    [KernelEntry] public const string FillNormalEntry = "fill_normal_bf16";
    [KernelEntry] public const string FillNormalWindowEntry = "fill_normal_bf16_window";
    [KernelEntry] public const string FillConstEntry = "fill_const_bf16";
    [KernelEntry] public const string ConvertF32ToBf16Entry = "convert_f32_to_bf16";

    private const int Threads = 256;
    private const int ElementsPerThread = 8;
    private readonly CudaKernel _fillNormal, _fillNormalWindow, _fillConst, _convert;

    public InitOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _fillNormal = lib.GetKernel(FillNormalEntry);
        _fillNormalWindow = lib.GetKernel(FillNormalWindowEntry);
        _fillConst = lib.GetKernel(FillConstEntry);
        _convert = lib.GetKernel(ConvertF32ToBf16Entry);
    }

    /// <summary>dst bf16 [count] ← N(mean, std²), deterministic in (seed, index).</summary>
    public unsafe void FillNormalBf16(CudaStream s, ulong dst, long count, ulong seed, float mean, float std)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(dst, 2, nameof(dst));
        LaunchChecks.NonNegative(count, nameof(count));
        if (!float.IsFinite(mean)) throw new ArgumentException($"mean must be finite (got {mean}).", nameof(mean));
        if (!float.IsFinite(std) || std < 0) throw new ArgumentException($"std must be finite and non-negative (got {std}).", nameof(std));
        if (count == 0) return;
        ulong n = (ulong)count;
        void** args = stackalloc void*[] { &dst, &n, &seed, &mean, &std };
        _fillNormal.Launch(new Dim3(Blocks(count)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// dst bf16 [rows, cols] ← the window at (<paramref name="row0"/>, <paramref name="col0"/>) of the row-major tensor of
    /// <paramref name="fullCols"/> columns that <see cref="FillNormalBf16"/> fills with the same seed: a tensor-parallel
    /// rank's shard of the single-GPU synthetic weights.
    /// </summary>
    public unsafe void FillNormalWindowBf16(CudaStream s, ulong dst, long rows, long cols, long fullCols, long row0, long col0,
        ulong seed, float mean, float std)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(dst, 2, nameof(dst));
        LaunchChecks.NonNegative(rows, nameof(rows));
        LaunchChecks.NonNegative(row0, nameof(row0));
        LaunchChecks.NonNegative(col0, nameof(col0));
        if (cols < 0 || col0 + cols > fullCols) throw new ArgumentOutOfRangeException(nameof(cols), $"columns [{col0}, {col0 + cols}) are outside [0, {fullCols})");
        if (!float.IsFinite(mean) || !float.IsFinite(std) || std < 0) throw new ArgumentException($"mean and std must be finite, std non-negative (got {mean}, {std}).");
        if (rows == 0 || cols == 0) return;
        ulong r = (ulong)rows, c = (ulong)cols, full = (ulong)fullCols, r0 = (ulong)row0, c0 = (ulong)col0;
        void** args = stackalloc void*[] { &dst, &r, &c, &full, &r0, &c0, &seed, &mean, &std };
        _fillNormalWindow.Launch(new Dim3(LaunchChecks.GridStrideBlocks(rows * cols, Threads)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>dst bf16 [count] ← bf16(value).</summary>
    public unsafe void FillConstBf16(CudaStream s, ulong dst, long count, float value)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(dst, 2, nameof(dst));
        LaunchChecks.NonNegative(count, nameof(count));
        if (count == 0) return;
        ulong n = (ulong)count;
        void** args = stackalloc void*[] { &dst, &n, &value };
        _fillConst.Launch(new Dim3(Blocks(count)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>dst bf16 [count] ← bf16(src fp32 [count]), round to nearest even.</summary>
    public unsafe void ConvertF32ToBf16(CudaStream s, ulong src, ulong dst, long count)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 4, nameof(src));
        LaunchChecks.Aligned(dst, 2, nameof(dst));
        LaunchChecks.NonNegative(count, nameof(count));
        if (count == 0) return;
        ulong n = (ulong)count;
        void** args = stackalloc void*[] { &src, &dst, &n };
        _convert.Launch(new Dim3(Blocks(count)), new Dim3(Threads), 0, s, args);
    }

    private static uint Blocks(long count) =>
        LaunchChecks.GridStrideBlocks((count + ElementsPerThread - 1) / ElementsPerThread, Threads);

    /// <summary>
    /// Host mirror of the fill_normal_bf16 generator (before bf16 rounding): element <paramref name="index"/> of a
    /// tensor filled with <paramref name="seed"/>. Transcendentals may differ from the GPU's in the last ulp.
    /// </summary>
    public static float NormalReference(ulong seed, long index, float mean, float std)
    {
        ulong p = (ulong)index >> 1;
        ulong h = Mix64(unchecked(Mix64(seed) + (p + 1) * 0x9E3779B97F4A7C15UL));
        float u1 = (float)((h >> 40) + 1) * 5.9604644775390625e-8f;
        float u2 = (float)(h & 0xFFFFFFUL) * 5.9604644775390625e-8f;
        float r = MathF.Sqrt(-2.0f * MathF.Log(u1));
        double angle = 2.0 * Math.PI * u2;
        float z = (index & 1) == 0 ? (float)Math.Cos(angle) : (float)Math.Sin(angle);
        return mean + std * (r * z);
    }

    private static ulong Mix64(ulong z)
    {
        unchecked
        {
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}

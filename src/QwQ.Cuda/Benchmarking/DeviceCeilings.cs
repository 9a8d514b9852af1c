using QwQ.Cuda.Native;

namespace QwQ.Cuda.Benchmarking;

/// <summary>
/// The two ceilings every figure is reported against, measured on this device (METHOD.md: datasheet rates are
/// leads): device-to-device copy bandwidth (bytes read + written) and the bf16 GEMM rate through cuBLAS.
/// </summary>
public sealed record DeviceCeilings(double CopyBytesPerSecond, double GemmFlopsPerSecond)
{
    internal static DeviceCeilings Measure(CudaStream stream, int repeats = 10)
    {
        return new DeviceCeilings(MeasureCopy(stream, repeats), MeasureGemm(stream, repeats));
    }

    private static double MeasureCopy(CudaStream s, int repeats)
    {
        const long bytes = 512L << 20; // 512 MiB: ten times the 50 MB L2, and small enough to fit beside a full KV pool
        using var a = DeviceBuffer.Allocate(bytes);
        using var b = DeviceBuffer.Allocate(bytes);
        a.Memset32(0x3F803F80u, s); // non-zero data
        var times = Timing.Repeat(s, repeats, () => b.CopyFromDevice(a.Ptr, bytes, 0, s));
        return 2.0 * bytes / (Timing.Median(times) / 1e3);
    }

    private static double MeasureGemm(CudaStream s, int repeats)
    {
        const int n = 8192;
        // random operands: constant or zero data runs measurably faster than real data (METHOD.md; seen here:
        // 855 TFLOP/s on a memset pattern against 776 on random bf16)
        using var a = RandomBf16(n * n, seed: 1);
        using var b = RandomBf16(n * n, seed: 2);
        using var c = DeviceBuffer.Allocate(4L * n * n);
        using var blas = Cublas.Create(s);
        var times = Timing.Repeat(s, repeats, () => blas.GemmBf16NT(a.Ptr, b.Ptr, c.Ptr, n, n, n));
        return 2.0 * n * n * (double)n / (Timing.Median(times) / 1e3);
    }

    private static DeviceBuffer RandomBf16(int count, int seed)
    {
        var rng = new Random(seed);
        var host = new ushort[count];
        for (int i = 0; i < count; i++) host[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        return DeviceBuffer.FromHost<ushort>(host);
    }
}

/// <summary>Event timing: warm up, repeat, median (METHOD.md).</summary>
internal static class Timing
{
    public static double[] Repeat(CudaStream s, int repeats, Action work, int warmup = 2)
    {
        for (int i = 0; i < warmup; i++) work();
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        var ms = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            start.Record(s);
            work();
            end.Record(s);
            end.Synchronize();
            ms[i] = CudaEvent.ElapsedMilliseconds(start, end);
        }
        return ms;
    }

    public static double Median(IReadOnlyList<double> xs)
    {
        var sorted = xs.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

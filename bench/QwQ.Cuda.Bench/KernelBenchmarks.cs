using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Bench;

/// <summary>
/// GPU micro-benchmarks of the decode kernels, timed with CUDA events (BenchmarkDotNet times the host, which is
/// meaningless for asynchronous launches). The headline is GEMV bandwidth at QwQ-32B's shapes against the
/// device-to-device copy bandwidth of the same GPU: decode streams every weight once per token, so GEMV GB/s
/// over copy GB/s is the fraction of the achievable decode speed. Each GEMV launch reads a different copy of W
/// (≥ 1 GiB in rotation) so the 50 MB L2 cannot serve repeated reads.
/// Run: <c>KernelBenchmarks.Run(Console.Out)</c> (e.g. from Program.cs with a "kernels" argument).
/// </summary>
public static class KernelBenchmarks
{
    private static readonly (string Name, int N, int K)[] GemvShapes =
    [
        ("qkv_proj", 7168, 5120),
        ("o_proj", 5120, 5120),
        ("gate_up_proj", 55296, 5120),
        ("down_proj", 5120, 27648),
        ("lm_head", 152064, 5120),
    ];

    public static int Run(TextWriter output, int iterations = 200)
    {
        if (!global::QwQ.Cuda.Native.Cuda.IsAvailable(out var reason))
        {
            output.WriteLine($"kernel benchmarks skipped: {reason}");
            return 0;
        }
        using var ctx = CudaContext.Create();
        using var lib = PtxLibrary.Load(ctx);
        using var stream = CudaStream.Create();
        output.WriteLine(ctx.ToString());

        double copyGBs = CopyBandwidth(stream, iterations);
        output.WriteLine($"device-to-device copy: {copyGBs:F0} GB/s (read + write)");

        var gemv = new GemvOps(lib);
        var init = new InitOps(lib);
        output.WriteLine($"{"gemv",-14}{"n x k",-16}{"µs",10}{"GB/s",10}{"% copy",9}");
        double totalBytes = 0, totalUs = 0;
        foreach (var (name, n, k) in GemvShapes)
        {
            var (us, gbs) = Gemv(gemv, init, stream, n, k, iterations);
            output.WriteLine($"{name,-14}{$"{n}x{k}",-16}{us,10:F1}{gbs,10:F0}{100 * gbs / copyGBs,8:F1}%");
            if (name != "lm_head")
            {
                totalBytes += 2.0 * n * k;
                totalUs += us;
            }
        }
        double layerGBs = totalBytes / (totalUs * 1e-6) / 1e9;
        output.WriteLine($"per-layer GEMVs: {totalUs:F1} µs, {layerGBs:F0} GB/s ({100 * layerGBs / copyGBs:F1}% of copy); " +
                         $"64 layers ≈ {64 * totalUs / 1000:F2} ms/token before attention, norms and lm_head");
        PrefillKernelBenchmarks.Run(output, lib, ctx, stream, copyGBs, iterations);
        return 0;
    }

    /// <summary>Copy bandwidth (bytes read + written per second) of a 1 GiB device-to-device copy.</summary>
    private static double CopyBandwidth(CudaStream stream, int iterations)
    {
        const long bytes = 1L << 30;
        using var a = DeviceBuffer.Allocate(bytes);
        using var b = DeviceBuffer.Allocate(bytes);
        a.Memset32(0, stream);
        int reps = Math.Max(10, iterations / 10);
        for (int i = 0; i < 3; i++) b.CopyFromDevice(a.Ptr, bytes, 0, stream);
        double ms = Time(stream, reps, () => b.CopyFromDevice(a.Ptr, bytes, 0, stream));
        return 2.0 * bytes / (ms * 1e-3) / 1e9;
    }

    private static (double Us, double GBs) Gemv(GemvOps gemv, InitOps init, CudaStream stream, int n, int k, int iterations)
    {
        long wBytes = 2L * n * k;
        int copies = (int)Math.Clamp((1L << 30) / wBytes + 1, 2, 64);
        var ws = new DeviceBuffer[copies];
        try
        {
            for (int c = 0; c < copies; c++)
            {
                ws[c] = DeviceBuffer.Allocate(wBytes);
                init.FillNormalBf16(stream, ws[c].Ptr, (long)n * k, (ulong)c, 0, 0.02f);
            }
            using var x = DeviceBuffer.Allocate(2L * k);
            using var y = DeviceBuffer.Allocate(4L * n);
            init.FillNormalBf16(stream, x.Ptr, k, 1234, 0, 1);
            int next = 0;
            void Launch() => gemv.Gemv(stream, ws[next++ % copies].Ptr, x.Ptr, y.Ptr, n, k, accumulate: false);
            for (int i = 0; i < copies + 5; i++) Launch();
            double ms = Time(stream, iterations, Launch);
            double us = ms * 1000;
            return (us, wBytes / (us * 1e-6) / 1e9);
        }
        finally
        {
            foreach (var w in ws) w?.Dispose();
        }
    }

    /// <summary>Average milliseconds per call of <paramref name="op"/> over <paramref name="reps"/> back-to-back launches.</summary>
    private static double Time(CudaStream stream, int reps, Action op)
    {
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        stream.Synchronize();
        start.Record(stream);
        for (int i = 0; i < reps; i++) op();
        end.Record(stream);
        end.Synchronize();
        return CudaEvent.ElapsedMilliseconds(start, end) / reps;
    }
}

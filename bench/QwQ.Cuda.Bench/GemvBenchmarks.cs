using BenchmarkDotNet.Attributes;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Bench;

/// <summary>
/// BenchmarkDotNet view of the decode GEMV at QwQ-32B's shapes. Each invocation launches 16 GEMVs over 16
/// different copies of W (so L2 cannot serve repeats) and synchronises once, so host timing measures the device
/// (a launch is ~3 µs of the ~100+ µs per GEMV). GB/s = 2·N·K bytes / (time per operation); compare with the
/// event-timed table of <c>KernelBenchmarks</c> (run: <c>dotnet run -c Release --project bench/QwQ.Cuda.Bench -- kernels</c>)
/// and the measured copy bandwidth (3.01 TB/s on the H100).
/// </summary>
public class GemvBenchmarks
{
    private const int Copies = 16;
    private CudaContext? _ctx;
    private CudaStream? _stream;
    private PtxLibrary? _lib;
    private GemvOps? _gemv;
    private DeviceBuffer[] _w = [];
    private DeviceBuffer? _x, _y;

    [Params("qkv_proj 7168x5120", "gate_up_proj 55296x5120", "down_proj 5120x27648", "lm_head 152064x5120")]
    public string Shape { get; set; } = "";

    private (int N, int K) Dims => Shape.Split(' ')[1].Split('x') is var p ? (int.Parse(p[0]), int.Parse(p[1])) : default;

    [GlobalSetup]
    public void Setup()
    {
        if (!global::QwQ.Cuda.Native.Cuda.IsAvailable(out string reason)) throw new InvalidOperationException($"no CUDA device: {reason}");
        _ctx = CudaContext.Create();
        _stream = CudaStream.Create();
        _lib = PtxLibrary.Load(_ctx);
        _gemv = new GemvOps(_lib);
        var init = new InitOps(_lib);
        var (n, k) = Dims;
        _w = Enumerable.Range(0, Copies).Select(_ => DeviceBuffer.Allocate(2L * n * k)).ToArray();
        for (int i = 0; i < Copies; i++) init.FillNormalBf16(_stream, _w[i].Ptr, (long)n * k, (ulong)i + 1, 0f, 0.02f);
        _x = DeviceBuffer.Allocate(2L * k);
        init.FillNormalBf16(_stream, _x.Ptr, k, 99, 0f, 1f);
        _y = DeviceBuffer.Allocate(4L * n);
        _stream.Synchronize();
    }

    [Benchmark(OperationsPerInvoke = Copies)]
    public void Gemv()
    {
        var (n, k) = Dims;
        for (int i = 0; i < Copies; i++) _gemv!.Gemv(_stream!, _w[i].Ptr, _x!.Ptr, _y!.Ptr, n, k, accumulate: false);
        _stream!.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var w in _w) w.Dispose();
        _x?.Dispose();
        _y?.Dispose();
        _lib?.Dispose();
        _stream?.Dispose();
        _ctx?.Dispose();
    }
}

using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// Shared setup for the GPU kernel tests of this folder: one context, library and stream per fixture, every test
/// skipped without a CUDA device, a fresh printed seed per test (QWQ_TEST_SEED replays one), and the helpers to
/// upload, poison, download and compare.
/// </summary>
public abstract class KernelTestBase
{
    protected const uint F32NaN = 0x7FC00000;
    protected const uint Bf16NaNPair = 0xFFFFFFFF; // 0xFFFF is a bf16 NaN
    protected const ushort Bf16Poison = 0xFFFF;

    private CudaContext? _context;
    private PtxLibrary? _library;
    private CudaStream? _stream;
    private string _unavailable = "";
    private readonly List<IDisposable> _owned = [];

    private protected PtxLibrary Lib => _library!;
    private protected CudaStream Stream => _stream!;
    private protected CudaContext Context => _context!;
    protected Random Rng { get; private set; } = new(0);

    [OneTimeSetUp]
    public void CreateGpu()
    {
        if (!global::QwQ.Cuda.Native.Cuda.IsAvailable(out _unavailable)) return;
        _context = CudaContext.Create();
        _library = PtxLibrary.Load(_context);
        _stream = CudaStream.Create();
        CreateOps();
    }

    /// <summary>Resolve the op classes under test (called once, only with a GPU).</summary>
    protected abstract void CreateOps();

    [SetUp]
    public void PerTest()
    {
        if (_context is null) Assert.Ignore($"no CUDA device ({_unavailable})");
        _context!.MakeCurrent(); // NUnit may run a test on another thread than the one-time setup
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int fixedSeed) ? fixedSeed : Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        Rng = new Random(seed);
    }

    [TearDown]
    public void FreeBuffers()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }

    [OneTimeTearDown]
    public void DisposeGpu()
    {
        _stream?.Dispose();
        _library?.Dispose();
        _context?.Dispose();
    }

    // ---------------------------------------------------------------- buffers

    private protected DeviceBuffer Alloc(long bytes)
    {
        var b = DeviceBuffer.Allocate(bytes);
        _owned.Add(b);
        return b;
    }

    private protected DeviceBuffer Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var b = DeviceBuffer.FromHost(data);
        _owned.Add(b);
        return b;
    }

    private protected DeviceBuffer UploadBf16(ReadOnlySpan<float> data) => Upload<ushort>(Bf16.FromFloat(data));

    /// <summary>fp32 buffer of <paramref name="count"/> elements filled with NaN.</summary>
    private protected DeviceBuffer PoisonedF32(long count)
    {
        var b = Alloc(count * 4);
        b.Memset32(F32NaN);
        return b;
    }

    /// <summary>bf16 buffer of <paramref name="count"/> elements filled with NaN (0xFFFF).</summary>
    private protected DeviceBuffer PoisonedBf16(long count)
    {
        var b = Alloc(count * 2);
        b.Memset32(Bf16NaNPair);
        return b;
    }

    private protected float[] DownloadF32(DeviceBuffer b)
    {
        Stream.Synchronize();
        return b.ToArray<float>();
    }

    private protected float[] DownloadBf16(DeviceBuffer b)
    {
        Stream.Synchronize();
        return Bf16.ToFloat(b.ToArray<ushort>());
    }

    // ---------------------------------------------------------------- random data

    /// <summary>N(mean, std²) values (Box–Muller).</summary>
    protected float[] Normal(long count, float std = 1f, float mean = 0f)
    {
        var r = new float[count];
        for (long i = 0; i < count; i += 2)
        {
            double u1 = 1.0 - Rng.NextDouble(), u2 = Rng.NextDouble();
            double rad = Math.Sqrt(-2.0 * Math.Log(u1));
            r[i] = (float)(mean + std * rad * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < count) r[i + 1] = (float)(mean + std * rad * Math.Sin(2 * Math.PI * u2));
        }
        return r;
    }

    /// <summary>Normal values already rounded to bf16 (what the GPU sees after upload as bf16).</summary>
    protected float[] NormalBf16(long count, float std = 1f, float mean = 0f)
    {
        var r = Normal(count, std, mean);
        for (long i = 0; i < r.Length; i++) r[i] = Bf16.Round(r[i]);
        return r;
    }

    // ---------------------------------------------------------------- comparisons

    /// <summary>‖actual − expected‖ / ‖expected‖ (double accumulation).</summary>
    protected static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), "length");
        double num = 0, den = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = (double)actual[i] - expected[i];
            num += d * d;
            den += (double)expected[i] * expected[i];
        }
        return Math.Sqrt(num) / Math.Max(Math.Sqrt(den), 1e-30);
    }

    /// <summary>Every element written (no NaN poison left) and finite.</summary>
    protected static void AssertAllFinite(ReadOnlySpan<float> values, string what)
    {
        for (int i = 0; i < values.Length; i++)
            if (!float.IsFinite(values[i])) Assert.Fail($"{what}[{i}] = {values[i]} (not written, or not finite)");
    }

    protected static void AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double tolerance, string what)
    {
        AssertAllFinite(actual, what);
        double rel = RelativeError(actual, expected);
        TestContext.Out.WriteLine($"{what}: relative error {rel:E3} (tolerance {tolerance:E1})");
        Assert.That(rel, Is.LessThanOrEqualTo(tolerance), $"{what}: ‖Δ‖/‖ref‖");
    }
}

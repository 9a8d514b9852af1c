using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

/// <summary>cuBLAS / cuBLASLt row-major NT products against a CPU reference on bf16-rounded inputs.</summary>
public class CublasGpuTests : GpuTestBase
{
    private const double Tolerance = 1e-2;

    private static ushort[] RandomBf16(int count, int seed)
    {
        var rng = new Random(seed);
        var r = new ushort[count];
        for (int i = 0; i < count; i++) r[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        return r;
    }

    private static float[] RandomF32(int count, int seed)
    {
        var rng = new Random(seed);
        var r = new float[count];
        for (int i = 0; i < count; i++) r[i] = (float)(rng.NextDouble() * 2 - 1);
        return r;
    }

    /// <summary>ref[i,j] = alpha · Σ_p A[i,p]·B[j,p] + beta · c0[i,j], in double.</summary>
    private static double[] Reference(ushort[] a, ushort[] b, float[]? c0, int m, int n, int k, float alpha, float beta)
    {
        var af = Bf16.ToFloat(a);
        var bf = Bf16.ToFloat(b);
        var r = new double[m * n];
        Parallel.For(0, n, j =>
        {
            for (int i = 0; i < m; i++)
            {
                double s = 0;
                int ai = i * k, bj = j * k;
                for (int p = 0; p < k; p++) s += (double)af[ai + p] * bf[bj + p];
                r[i * n + j] = alpha * s + (c0 is null ? 0 : beta * (double)c0[i * n + j]);
            }
        });
        return r;
    }

    private static void AssertClose(float[] actual, double[] expected, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length));
        double diff = 0, norm = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            if (!float.IsFinite(actual[i])) Assert.Fail($"{what}: non-finite value {actual[i]} at {i}");
            double d = actual[i] - expected[i];
            diff += d * d;
            norm += expected[i] * expected[i];
        }
        double rel = Math.Sqrt(diff) / Math.Sqrt(norm);
        TestContext.Out.WriteLine($"{what}: rel error {rel:E3}");
        Assert.That(rel, Is.LessThan(Tolerance), what);
    }

    private static IEnumerable<TestCaseData> Shapes()
    {
        yield return new TestCaseData(37, 96, 64);
        yield return new TestCaseData(1, 7168, 5120); // decode: M = 1
        yield return new TestCaseData(130, 40, 264);
    }

    private sealed class Operands : IDisposable
    {
        public required ushort[] A, B;
        public required DeviceBuffer DA, DB, DC;
        public void Dispose() { DA.Dispose(); DB.Dispose(); DC.Dispose(); }
    }

    private static Operands Upload(int m, int n, int k, int cElementBytes)
    {
        var a = RandomBf16(m * k, 1 + m);
        var b = RandomBf16(n * k, 2 + n);
        return new Operands
        {
            A = a, B = b,
            DA = DeviceBuffer.FromHost<ushort>(a),
            DB = DeviceBuffer.FromHost<ushort>(b),
            DC = DeviceBuffer.Allocate((long)m * n * cElementBytes),
        };
    }

    [TestCaseSource(nameof(Shapes))]
    public void GemmBf16NT(int m, int n, int k)
    {
        using var stream = CudaStream.Create();
        using var blas = Cublas.Create(stream);
        using var o = Upload(m, n, k, 4);
        o.DC.Memset32(0x7FC00000); // NaN poison: beta = 0 must overwrite, not blend
        blas.GemmBf16NT(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k);
        stream.Synchronize();
        AssertClose(o.DC.ToArray<float>(), Reference(o.A, o.B, null, m, n, k, 1, 0), "cublas fp32 out");

        // alpha scales; beta = 1 accumulates onto existing C (how o_proj/down_proj add into the residual).
        var c0 = RandomF32(m * n, 3);
        o.DC.CopyFromHost<float>(c0);
        blas.GemmBf16NT(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k, alpha: 0.5f, beta: 1f);
        stream.Synchronize();
        AssertClose(o.DC.ToArray<float>(), Reference(o.A, o.B, c0, m, n, k, 0.5f, 1), "cublas fp32 out, beta=1");
    }

    [TestCaseSource(nameof(Shapes))]
    public void GemmBf16NTOutBf16(int m, int n, int k)
    {
        using var stream = CudaStream.Create();
        using var blas = Cublas.Create(stream);
        using var o = Upload(m, n, k, 2);
        o.DC.Memset32(0x7FC07FC0); // bf16 NaN pairs
        blas.GemmBf16NTOutBf16(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k);
        stream.Synchronize();
        AssertClose(Bf16.ToFloat(o.DC.ToArray<ushort>()), Reference(o.A, o.B, null, m, n, k, 1, 0), "cublas bf16 out");

        var c0Bits = RandomBf16(m * n, 4);
        o.DC.CopyFromHost<ushort>(c0Bits);
        blas.GemmBf16NTOutBf16(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k, beta: 1f);
        stream.Synchronize();
        AssertClose(Bf16.ToFloat(o.DC.ToArray<ushort>()), Reference(o.A, o.B, Bf16.ToFloat(c0Bits), m, n, k, 1, 1), "cublas bf16 out, beta=1");
    }

    [TestCaseSource(nameof(Shapes))]
    public void CublasLtMatmulBf16NT(int m, int n, int k)
    {
        using var stream = CudaStream.Create();
        using var lt = CublasLt.Create();
        using var o = Upload(m, n, k, 4);
        o.DC.Memset32(0x7FC00000);
        lt.MatmulBf16NT(stream, o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k);
        stream.Synchronize();
        var expected = Reference(o.A, o.B, null, m, n, k, 1, 0);
        AssertClose(o.DC.ToArray<float>(), expected, "cublasLt");

        // Second call reuses the cached plan; beta = 1 accumulates.
        var c0 = RandomF32(m * n, 5);
        o.DC.CopyFromHost<float>(c0);
        lt.MatmulBf16NT(stream, o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k, beta: 1f);
        stream.Synchronize();
        AssertClose(o.DC.ToArray<float>(), Reference(o.A, o.B, c0, m, n, k, 1, 1), "cublasLt, beta=1");
    }

    [TestCaseSource(nameof(Shapes))]
    public void CublasLtMatmulBf16NTOutBf16(int m, int n, int k)
    {
        using var stream = CudaStream.Create();
        using var lt = CublasLt.Create();
        using var o = Upload(m, n, k, 2);
        o.DC.Memset32(0x7FC07FC0); // bf16 NaN pairs: beta = 0 must overwrite
        lt.MatmulBf16NT(stream, o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k, outBf16: true);
        stream.Synchronize();
        AssertClose(Bf16.ToFloat(o.DC.ToArray<ushort>()), Reference(o.A, o.B, null, m, n, k, 1, 0), "cublasLt bf16 out");

        // the fp32-output plan of the same shape is another plan: both stay right when used in turn
        using var c32 = DeviceBuffer.Allocate((long)m * n * 4);
        lt.MatmulBf16NT(stream, o.DA.Ptr, o.DB.Ptr, c32.Ptr, m, n, k);
        lt.MatmulBf16NT(stream, o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k, outBf16: true);
        stream.Synchronize();
        AssertClose(Bf16.ToFloat(o.DC.ToArray<ushort>()), c32.ToArray<float>().Select(v => (double)v).ToArray(),
            "cublasLt bf16 out after the fp32 plan, against its output");
    }

    [Test]
    public void GemmCapturesIntoAGraph()
    {
        const int m = 4, n = 256, k = 128;
        using var stream = CudaStream.Create();
        using var blas = Cublas.Create(stream);
        using var o = Upload(m, n, k, 4);
        blas.GemmBf16NT(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k); // first call outside capture (cuBLAS lazy init)
        o.DC.Memset32(0x7FC00000);
        using var graph = CudaGraph.Capture(stream, () => blas.GemmBf16NT(o.DA.Ptr, o.DB.Ptr, o.DC.Ptr, m, n, k));
        graph.Launch(stream);
        stream.Synchronize();
        AssertClose(o.DC.ToArray<float>(), Reference(o.A, o.B, null, m, n, k, 1, 0), "cublas in graph");
    }

    [Test]
    public void ZeroSizedGemmIsANoOp()
    {
        using var stream = CudaStream.Create();
        using var blas = Cublas.Create(stream);
        Assert.DoesNotThrow(() => blas.GemmBf16NT(0, 0, 0, 0, 16, 16));
        Assert.Throws<ArgumentOutOfRangeException>(() => blas.GemmBf16NT(0, 0, 0, -1, 16, 16));
    }
}

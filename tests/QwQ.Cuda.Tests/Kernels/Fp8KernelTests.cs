using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// The FP8 weight kernels against references written here from the E4M3 definition (sign, 4 exponent bits with bias
/// 7, 3 mantissa bits; exponent 0 subnormal; 0x7F/0xFF NaN, no infinities), independent of the kernels' bit tricks:
/// the conversion for all 256 codes, the quantizer's scales and codes, and every GEMV variant against a CPU product
/// of the dequantized weights (fp32 accumulation: tolerance 1e-4).
/// </summary>
public sealed class Fp8KernelTests : KernelTestBase
{
    private const double Tolerance = 1e-4;
    private Fp8Ops _fp8 = null!;

    protected override void CreateOps() => _fp8 = new Fp8Ops(Lib);

    /// <summary>The E4M3 value of a code, from the format's definition.</summary>
    internal static float Decode(byte code)
    {
        int sign = code >> 7, exponent = (code >> 3) & 0xF, mantissa = code & 7;
        if (exponent == 15 && mantissa == 7) return float.NaN;
        double magnitude = exponent == 0 ? mantissa / 8.0 * Math.Pow(2, -6) : (1 + mantissa / 8.0) * Math.Pow(2, exponent - 7);
        return (float)(sign == 1 ? -magnitude : magnitude);
    }

    /// <summary>Nearest finite code (ties to the even code), saturating at ±448: what round-to-nearest-even with satfinite gives.</summary>
    internal static byte Encode(float v)
    {
        byte best = 0;
        double bestErr = double.MaxValue;
        for (int c = 0; c < 256; c++)
        {
            float value = Decode((byte)c);
            if (float.IsNaN(value) || (c & 0x80) != 0 && !(v < 0) || (c & 0x80) == 0 && v < 0) continue;
            double err = Math.Abs((double)value - v);
            if (err < bestErr || err == bestErr && (c & 1) == 0) (best, bestErr) = ((byte)c, err);
        }
        return best;
    }

    [Test]
    public void DequantizeIsExactForEveryCode()
    {
        // 16 rows of 16 codes: all 256, each row with its own power-of-two scale (exact in bf16 too).
        var codes = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var scales = Enumerable.Range(0, 16).Select(r => MathF.Pow(2, r - 8)).ToArray();
        var dq = Upload<byte>(codes);
        var ds = Upload<float>(scales);
        var dout = PoisonedBf16(256);
        _fp8.DequantizeRows(Stream, dq.Ptr, ds.Ptr, dout.Ptr, 16, 16);
        float[] got = DownloadBf16(dout);
        for (int i = 0; i < 256; i++)
        {
            float expected = Decode((byte)i) * scales[i / 16];
            if (float.IsNaN(expected)) continue; // NaN codes never come out of a quantizer
            Assert.That(got[i], Is.EqualTo(expected), $"code 0x{i:x2} × {scales[i / 16]}");
            if (expected == 0) Assert.That(float.IsNegative(got[i]), Is.EqualTo((i & 0x80) != 0), $"sign of zero, code 0x{i:x2}");
        }
    }

    [Test]
    public void QuantizeGivesAmaxScaleAndNearestCodes()
    {
        int rows = 37, k = 520;
        float[] w = NormalBf16((long)rows * k, 0.02f);
        for (int j = 0; j < k; j++) w[3 * k + j] = 0;                  // an all-zero row: scale 1, codes 0
        w[5 * k + 7] = Bf16.Round(3e4f);                                 // one outlier: the rest of its row goes subnormal
        var src = UploadBf16(w);
        var dq = Alloc((long)rows * k);
        var ds = Alloc(4L * rows);
        _fp8.QuantizeRows(Stream, src.Ptr, dq.Ptr, ds.Ptr, rows, k);
        var codes = new byte[rows * k];
        dq.CopyToHost<byte>(codes);
        float[] scales = DownloadF32(ds);
        for (int r = 0; r < rows; r++)
        {
            float amax = 0;
            for (int j = 0; j < k; j++) amax = Math.Max(amax, Math.Abs(w[r * k + j]));
            float scale = amax > 0 ? amax / 448f : 1f;
            Assert.That(scales[r], Is.EqualTo(scale), $"scale of row {r}");
            for (int j = 0; j < k; j++)
            {
                byte expected = Encode(w[r * k + j] / scale);
                if (codes[r * k + j] != expected)
                    Assert.Fail($"row {r} col {j}: {w[r * k + j]} / {scale} → code 0x{codes[r * k + j]:x2} ({Decode(codes[r * k + j])}), expected 0x{expected:x2} ({Decode(expected)})");
            }
        }
    }

    /// <summary>Random codes (no NaN) and per-row scales: the device weight and scales, and the dequantized fp32 matrix.</summary>
    internal static (byte[] Codes, float[] Scales, float[] Dequantized) RandomWeights(Random rng, int n, int k)
    {
        var codes = new byte[(long)n * k];
        var scales = new float[n];
        var dequantized = new float[(long)n * k];
        for (int r = 0; r < n; r++)
        {
            scales[r] = 0.01f * (1 + rng.NextSingle());
            for (int j = 0; j < k; j++)
            {
                byte c;
                do c = (byte)rng.Next(256); while ((c & 0x7F) == 0x7F); // no NaN codes
                codes[(long)r * k + j] = c;
                dequantized[(long)r * k + j] = Decode(c) * scales[r];
            }
        }
        return (codes, scales, dequantized);
    }

    private void Check(int rows, int n, int k, bool accumulate)
    {
        var (codes, scales, w) = RandomWeights(Rng, n, k);
        var dw = Upload<byte>(codes);
        var ds = Upload<float>(scales);
        float[] x = NormalBf16((long)rows * k);
        float[] y0 = accumulate ? Normal((long)rows * n, 4f) : new float[(long)rows * n];
        var dx = UploadBf16(x);
        var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)rows * n);
        _fp8.Gemv(Stream, dw.Ptr, ds.Ptr, dx.Ptr, dy.Ptr, rows, n, k, accumulate);
        var expected = new float[(long)rows * n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, rows, n, k);
        if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
        AssertClose(DownloadF32(dy), expected, Tolerance, $"gemv_fp8 rows={rows} {n}x{k} acc={accumulate}");
    }

    [Test]
    public void GemvMatchesCpu([Range(1, Fp8Ops.MaxGemvRows)] int rows)
    {
        Check(rows, 1001, 2064, accumulate: false); // odd rows, k tail (not a multiple of 512)
        Check(rows, 515, 5120, accumulate: true);
        Check(rows, 9, 16, accumulate: false);      // one 16-element piece
    }

    [TestCase(7168, 5120, false, TestName = "Fp8Gemv_QkvProj_7168x5120")]
    [TestCase(5120, 27648, true, TestName = "Fp8Gemv_DownProj_5120x27648_Accumulate")]
    public void QwqShapes(int n, int k, bool accumulate) => Check(1, n, k, accumulate);
}

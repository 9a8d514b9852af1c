using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// The FP8 weight kernels against references written here from the E4M3 definition (sign, 4 exponent bits with bias
/// 7, 3 mantissa bits; exponent 0 subnormal; 0x7F/0xFF NaN, no infinities), independent of the kernels' bit tricks:
/// the conversion for all 256 codes, the quantizer's scales and codes, and the repacking into the tile layout (the
/// decode products over fp8 weights are in <see cref="TensorCoreGemvKernelTests"/>).
/// </summary>
public sealed class Fp8KernelTests : KernelTestBase
{
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
        // 16 rows of 64 codes: every code 4 times, each row with its own power-of-two scale (exact in bf16 too).
        const int rows = 16, k = 64;
        var codes = Enumerable.Range(0, rows * k).Select(i => (byte)(i * 37 % 256)).ToArray();
        var scales = Enumerable.Range(0, rows).Select(r => MathF.Pow(2, r - 8)).ToArray();
        var dq = Upload<byte>(Fp8Ops.PackTiles(codes, rows, k));
        var ds = Upload<float>(scales);
        var dout = PoisonedBf16(rows * k);
        _fp8.DequantizeRows(Stream, dq.Ptr, ds.Ptr, dout.Ptr, rows, k);
        float[] got = DownloadBf16(dout);
        Assert.That(codes.Distinct().Count(), Is.EqualTo(256));
        for (int i = 0; i < rows * k; i++)
        {
            float expected = Decode(codes[i]) * scales[i / k];
            if (float.IsNaN(expected)) continue; // NaN codes never come out of a quantizer
            Assert.That(got[i], Is.EqualTo(expected), $"code 0x{codes[i]:x2} × {scales[i / k]}");
            if (expected == 0) Assert.That(float.IsNegative(got[i]), Is.EqualTo((codes[i] & 0x80) != 0), $"sign of zero, code 0x{codes[i]:x2}");
        }
    }

    [Test]
    public void QuantizeGivesAmaxScaleAndNearestCodesInTheTileLayout()
    {
        int rows = 37, k = 576, row0 = 5, n = row0 + rows; // rows 5..41 of a 42-row weight: tiles 0-2, the last one padded
        float[] w = NormalBf16((long)rows * k, 0.02f);
        for (int j = 0; j < k; j++) w[3 * k + j] = 0;                  // an all-zero row: scale 1, codes 0
        w[5 * k + 7] = Bf16.Round(3e4f);                                 // one outlier: the rest of its row goes subnormal
        var src = UploadBf16(w);
        var dq = Alloc(Fp8Ops.TiledBytes(n, k));
        var ds = Alloc(4L * n);
        _fp8.QuantizeRows(Stream, src.Ptr, dq.Ptr, ds.Ptr, row0, rows, k);
        var tiled = new byte[Fp8Ops.TiledBytes(n, k)];
        dq.CopyToHost<byte>(tiled);
        float[] scales = DownloadF32(ds);
        for (int r = 0; r < rows; r++)
        {
            float amax = 0;
            for (int j = 0; j < k; j++) amax = Math.Max(amax, Math.Abs(w[r * k + j]));
            float scale = amax > 0 ? amax / 448f : 1f;
            Assert.That(scales[row0 + r], Is.EqualTo(scale), $"scale of row {row0 + r}");
            for (int j = 0; j < k; j++)
            {
                byte expected = Encode(w[r * k + j] / scale), got = tiled[Fp8Ops.TileOffset(row0 + r, j, k)];
                if (got != expected)
                    Assert.Fail($"row {r} col {j}: {w[r * k + j]} / {scale} → code 0x{got:x2} ({Decode(got)}), expected 0x{expected:x2} ({Decode(expected)})");
            }
        }
    }

    [Test]
    public void RepackPutsRowMajorCodesInTheTileLayout()
    {
        int n = 40, k = 128;
        var codes = new byte[n * k];
        Rng.NextBytes(codes);
        var src = Upload<byte>(codes.AsSpan(8 * k).ToArray());        // rows 8..39, repacked at row 8
        var dst = Alloc(Fp8Ops.TiledBytes(n, k));
        dst.Memset32(0, Stream);
        _fp8.RepackRows(Stream, src.Ptr, dst.Ptr, 8, n - 8, k);
        var got = new byte[Fp8Ops.TiledBytes(n, k)];
        dst.CopyToHost<byte>(got);
        var expected = Fp8Ops.PackTiles(codes.Select((c, i) => i < 8 * k ? (byte)0 : c).ToArray(), n, k);
        Assert.That(got, Is.EqualTo(expected));
        // the layout is a permutation: every (row, k) has its own byte
        var offsets = new HashSet<long>();
        for (int r = 0; r < n; r++) for (int j = 0; j < k; j++) Assert.That(offsets.Add(Fp8Ops.TileOffset(r, j, k)), $"({r}, {j})");
    }

    /// <summary>
    /// quantize_fp8_act_rows against the host reference (Fp8E4M3.QuantizePerToken) bit for bit, codes and scales: random
    /// rows of several magnitudes, an all-zero row, an outlier that sends the rest of its row subnormal, and k a multiple
    /// of 16 but not of 64 (activations need only cuBLASLt's alignment).
    /// </summary>
    [Test]
    public void QuantizeActivationsEqualsTheHostReferenceBitForBit([Values(1040, 5120)] int k)
    {
        const int rows = 45;
        float[] x = NormalBf16((long)rows * k, 1f);
        for (int r = 0; r < rows; r++)
        {
            float scale = MathF.Pow(2, Rng.Next(-20, 12));
            for (int j = 0; j < k; j++) x[r * k + j] = Bf16.Round(x[r * k + j] * scale);
        }
        for (int j = 0; j < k; j++) x[7 * k + j] = 0;
        x[11 * k + 3] = Bf16.Round(-3e4f);
        var codesExpected = new byte[rows * k];
        var scalesExpected = new float[rows];
        global::QwQ.Cuda.Weights.Quantization.Fp8E4M3.QuantizePerToken(x, rows, k, codesExpected, scalesExpected);
        var dx = UploadBf16(x);
        var dcodes = Alloc((long)rows * k);
        dcodes.Memset32(0xFFFFFFFF, Stream); // NaN codes: every byte must be written
        var dscales = PoisonedF32(rows);
        _fp8.QuantizeActivations(Stream, dx.Ptr, dcodes.Ptr, dscales.Ptr, rows, k);
        float[] scales = DownloadF32(dscales);
        var codes = new byte[rows * k];
        dcodes.CopyToHost<byte>(codes);
        for (int r = 0; r < rows; r++)
            Assert.That(BitConverter.SingleToUInt32Bits(scales[r]), Is.EqualTo(BitConverter.SingleToUInt32Bits(scalesExpected[r])), $"scale of row {r}");
        for (int i = 0; i < codes.Length; i++)
            if (codes[i] != codesExpected[i])
                Assert.Fail($"row {i / k} col {i % k}: {x[i]} / {scales[i / k]} → code 0x{codes[i]:x2}, expected 0x{codesExpected[i]:x2}");
    }

    [Test]
    public void UntileGivesTheRowMajorCodesBack()
    {
        int n = 40, k = 192; // a padded last tile, three 64-column chunks
        var codes = new byte[n * k];
        Rng.NextBytes(codes);
        var src = Upload<byte>(Fp8Ops.PackTiles(codes, n, k));
        var dst = Alloc((long)n * k + 64);
        dst.Memset32(0xA5A5A5A5, Stream);
        _fp8.UntileRows(Stream, src.Ptr, dst.Ptr, n, k);
        var got = new byte[n * k + 64];
        Stream.Synchronize();
        dst.CopyToHost<byte>(got);
        Assert.That(got.AsSpan(0, n * k).ToArray(), Is.EqualTo(codes));
        Assert.That(got.AsSpan(n * k).ToArray(), Is.All.EqualTo((byte)0xA5), "nothing written past the last row (the tile padding stays behind)");
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
}

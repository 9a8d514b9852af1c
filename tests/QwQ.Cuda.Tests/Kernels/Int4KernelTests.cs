using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// The INT4 weight kernels (kernels/gemv_int4.cu, kernels/quantize_int4.cu) against references written here from
/// w = (q − z) · s on row-major arrays, so a wrong layout, nibble or zero point shows as a wrong product: the GEMV for
/// every batch tile count, split count, group size and QwQ's shapes; the round-to-nearest quantizer against the formula;
/// the AWQ repacker against AutoAWQ's packing (<see cref="AwqPacking"/>); and the dequantizer.
/// </summary>
public sealed class Int4KernelTests : KernelTestBase
{
    private const double Tolerance = 1e-4;
    private Int4Ops _int4 = null!;

    protected override void CreateOps() => _int4 = new Int4Ops(Lib);

    /// <summary>Random codes, fp16 scales and zeros ([k / group, n]) and the fp32 matrix [n, k] they stand for.</summary>
    internal static (byte[] Codes, Half[] Scales, byte[] Zeros, float[] W) RandomWeights(Random rng, int n, int k, int group)
    {
        var codes = new byte[(long)n * k];
        int groups = k / group;
        var scales = new Half[groups * n];
        var zeros = new byte[groups * n];
        for (int i = 0; i < scales.Length; i++)
        {
            scales[i] = (Half)(0.004f * (1 + rng.NextSingle()));
            zeros[i] = (byte)rng.Next(16);
        }
        var w = new float[(long)n * k];
        for (int r = 0; r < n; r++)
            for (int j = 0; j < k; j++)
            {
                byte q = (byte)rng.Next(16);
                codes[(long)r * k + j] = q;
                int at = j / group * n + r;
                w[(long)r * k + j] = (q - zeros[at]) * (float)scales[at];
            }
        return (codes, scales, zeros, w);
    }

    private void Check(int rows, int n, int k, int group, bool accumulate, int? splitCount = null,
        TensorCoreVariant variant = TensorCoreVariant.Standard)
    {
        var (codes, scales, zeros, w) = RandomWeights(Rng, n, k, group);
        var (tiled, sz) = Int4Ops.Pack(codes, scales, zeros, n, k, group);
        var dw = Upload<byte>(tiled);
        var ds = Upload<uint>(sz);
        float[] x = NormalBf16((long)rows * k);
        float[] y0 = accumulate ? Normal((long)rows * n, 4f) : new float[(long)rows * n];
        var dx = UploadBf16(x);
        var ws = Alloc(TensorCoreGemvOps.WorkspaceBytes);
        ws.Memset32(0, Stream);
        int splits = splitCount ?? Math.Min(k / group, TensorCoreGemvOps.DefaultSplits(n, k, rows, Context.MultiprocessorCount));
        float[] Run()
        {
            var dy = accumulate ? Upload<float>(y0) : PoisonedF32((long)rows * n);
            _int4.Gemv(Stream, dw.Ptr, ds.Ptr, dx.Ptr, dy.Ptr, rows, n, k, group, accumulate, ws.Ptr, splits, variant);
            return DownloadF32(dy);
        }
        float[] got = Run();
        var expected = new float[(long)rows * n];
        CpuOps.MatMulNT(x, w, ReadOnlySpan<float>.Empty, expected, rows, n, k);
        if (accumulate) for (long i = 0; i < expected.Length; i++) expected[i] += y0[i];
        AssertClose(got, expected, Tolerance, $"gemv_int4 {variant} rows={rows} {n}x{k} g{group} acc={accumulate} splits={splits}");
        Assert.That(Run(), Is.EqualTo(got), "second run");
    }

    [Test]
    public void GemvMatchesCpu([Values(1, 5, 8, 9, 16, 17, 32)] int rows)
    {
        Check(rows, 1001, 2048, 128, accumulate: false);
        Check(rows, 515, 5120, 128, accumulate: true);
        Check(rows, 13, 64, 64, accumulate: false);
        Check(rows, 40, 320, 64, accumulate: true); // tiny-awq's shapes: group 64, k = 5 groups
        Check(rows, 64, 512, 256, accumulate: false);
    }

    [Test]
    public void GemvEverySplitCountMatchesCpu([Values(1, 8, 32)] int rows)
    {
        foreach (int group in new[] { 64, 128, 256 })
            foreach (int splits in Int4Ops.SplitCandidates(1001, 2048, group, rows))
                foreach (var variant in Int4Ops.Variants(rows))
                    Check(rows, 1001, 2048, group, accumulate: true, splits, variant);
    }

    /// <summary>
    /// The even-runs build (1..8 rows): its warps' runs are whole groups of a split, so shapes where a split holds fewer
    /// groups than the block has warps (some warps with nothing), an odd group count and QwQ's k = 5120 all appear.
    /// </summary>
    [Test]
    public void GemvEvenRunsMatchesCpu([Values(1, 2, 5, 8)] int rows)
    {
        Check(rows, 1001, 2048, 128, accumulate: false, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 515, 5120, 128, accumulate: true, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 13, 64, 64, accumulate: false, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 40, 320, 64, accumulate: true, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 64, 512, 256, accumulate: false, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 7168, 5120, 128, accumulate: false, splitCount: 1, variant: TensorCoreVariant.EvenRuns);
        Check(rows, 7168, 5120, 128, accumulate: true, splitCount: Int4Ops.SplitCandidates(7168, 5120, 128, rows).Max(), variant: TensorCoreVariant.EvenRuns);
    }

    [Test]
    public void GemvRefusesABuildThatDoesNotServeTheRows()
    {
        var buf = Alloc(1 << 20);
        var ws = Alloc(TensorCoreGemvOps.WorkspaceBytes);
        Assert.Throws<ArgumentException>(() => _int4.Gemv(Stream, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 9, 64, 128, 64, false, ws.Ptr, 1, TensorCoreVariant.EvenRuns));
        Assert.Throws<ArgumentException>(() => _int4.Gemv(Stream, buf.Ptr, buf.Ptr, buf.Ptr, buf.Ptr, 1, 64, 128, 64, false, ws.Ptr, 1, TensorCoreVariant.Lite));
    }

    [TestCase(7168, 5120, false, TestName = "Int4_QkvProj_7168x5120")]
    [TestCase(5120, 27648, true, TestName = "Int4_DownProj_5120x27648_Accumulate")]
    public void GemvQwqShapes(int n, int k, bool accumulate)
    {
        foreach (int rows in new[] { 1, 8, 32 })
            Check(rows, n, k, 128, accumulate);
    }

    /// <summary>The quantizer's formula, written out here (kernels/quantize_int4.cu and Int4Rtn implement it).</summary>
    internal static (byte Code, Half Scale, byte Zero)[] Rtn(float[] w, int rows, int k, int group, out Half[] scales, out byte[] zeros)
    {
        var codes = new (byte, Half, byte)[w.Length];
        int groups = k / group;
        scales = new Half[groups * rows];
        zeros = new byte[groups * rows];
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
            {
                var slice = w.AsSpan(r * k + g * group, group);
                float mn = float.MaxValue, mx = float.MinValue;
                foreach (float v in slice) { mn = Math.Min(mn, v); mx = Math.Max(mx, v); }
                Half s = (Half)Math.Min(Math.Max(mx - mn, 1e-5f) / 15f, 65504f);
                float sf = (float)s;
                float z = Math.Clamp(-MathF.Round(mn / sf, MidpointRounding.ToEven), 0f, 15f);
                scales[g * rows + r] = s;
                zeros[g * rows + r] = (byte)z;
                for (int j = 0; j < group; j++)
                {
                    float q = Math.Clamp(MathF.Round(slice[j] / sf, MidpointRounding.ToEven) + z, 0f, 15f);
                    codes[r * k + g * group + j] = ((byte)q, s, (byte)z);
                }
            }
        return codes;
    }

    /// <summary>Each row of [rows, cols] quantized by <see cref="Rtn"/> and dequantized: what the GPU computes with.</summary>
    internal static float[] RtnDequantized(float[] w, int rows, int cols, int group = 128)
    {
        var codes = Rtn(w, rows, cols, group, out _, out _);
        return codes.Select(c => (c.Code - c.Zero) * (float)c.Scale).ToArray();
    }

    [Test]
    public void QuantizeMatchesTheRoundToNearestFormulaBitForBit([Values(64, 128, 256)] int group)
    {
        int rows = 37, k = 1024, row0 = 5, n = row0 + rows; // rows 5..41 of a 42-row weight: the last tile padded
        float[] w = NormalBf16((long)rows * k, 0.02f);
        for (int j = 0; j < group; j++) w[3 * k + j] = Bf16.Round(0.25f);                  // a constant group: scale from 1e-5
        for (int j = 0; j < group; j++) w[4 * k + group + j] = Bf16.Round(0.5f + j * 1e-3f); // all positive: zero clamps to 0
        w[6 * k + 7] = Bf16.Round(3f);                                                       // an outlier
        var src = UploadBf16(w);
        var dq = Alloc(Int4Ops.CodeBytes(n, k));
        var dsz = Alloc(Int4Ops.ScaleZeroBytes(n, k, group));
        dq.Memset32(0, Stream);
        dsz.Memset32(0, Stream);
        _int4.QuantizeRows(Stream, src.Ptr, dq.Ptr, dsz.Ptr, row0, rows, n, k, group);
        var tiled = new byte[Int4Ops.CodeBytes(n, k)];
        dq.CopyToHost<byte>(tiled);
        var sz = new uint[Int4Ops.ScaleZeroBytes(n, k, group) / 4];
        dsz.CopyToHost<uint>(sz);

        var expected = Rtn(w, rows, k, group, out var scales, out var zeros);
        int pad = Int4Ops.PaddedRows(n);
        for (int r = 0; r < rows; r++)
        {
            for (int g = 0; g < k / group; g++)
            {
                uint word = sz[g * pad + row0 + r];
                Assert.That(BitConverter.UInt16BitsToHalf((ushort)word), Is.EqualTo(scales[g * rows + r]), $"scale of row {r} group {g}");
                Assert.That((int)(word >> 16), Is.EqualTo(0xC300 | zeros[g * rows + r]), $"zero word of row {r} group {g}");
            }
            for (int j = 0; j < k; j++)
            {
                uint word = BitConverter.ToUInt32(tiled, (int)Int4Ops.WordOffset(row0 + r, j, k));
                int got = (int)(word >> Int4Ops.Bit(j)) & 0xF;
                if (got != expected[r * k + j].Code)
                    Assert.Fail($"row {r} col {j}: {w[r * k + j]} → code {got}, expected {expected[r * k + j].Code}");
            }
        }
        Assert.That(scales.Distinct().Count(), Is.GreaterThan(10), "the scales vary");
        Assert.That(zeros.Any(z => z == 0) && zeros.Any(z => z > 0), "some zero points clamp, some do not");
    }

    [Test]
    public void RepackAwqGivesTheSameDeviceImageAsPackingTheValues([Values(64, 128)] int group)
    {
        // One AWQ layer of 48 outputs placed at rows 16..63 of a 72-row fused weight (as k_proj sits after q_proj).
        int outF = 48, k = 512, row0 = 16, n = 72, groups = k / group;
        var (codes, scales, zeros, _) = RandomWeights(Rng, outF, k, group);
        var qT = new byte[k * outF]; // AWQ keeps q transposed, [in, out]
        for (int r = 0; r < outF; r++) for (int j = 0; j < k; j++) qT[j * outF + r] = codes[r * k + j];
        var qweight = new int[k * outF / 8];
        var qzeros = new int[groups * outF / 8];
        AwqPacking.PackQWeight(qT, k, outF, qweight);
        AwqPacking.PackQZeros(zeros, groups, outF, qzeros);
        var dqw = Upload<int>(qweight);
        var dqz = Upload<int>(qzeros);
        var dsc = Upload<Half>(scales);
        var dst = Alloc(Int4Ops.CodeBytes(n, k));
        var dsz = Alloc(Int4Ops.ScaleZeroBytes(n, k, group));
        dst.Memset32(0, Stream);
        dsz.Memset32(0, Stream);
        _int4.RepackAwq(Stream, dqw.Ptr, dqz.Ptr, dsc.Ptr, dst.Ptr, dsz.Ptr, row0, outF, n, k, group);
        var gotCodes = new byte[Int4Ops.CodeBytes(n, k)];
        dst.CopyToHost<byte>(gotCodes);
        var gotSz = new uint[Int4Ops.ScaleZeroBytes(n, k, group) / 4];
        dsz.CopyToHost<uint>(gotSz);

        // The same values as rows 16..63 of the fused weight, every other row zero.
        var fullCodes = new byte[n * k];
        var fullScales = new Half[groups * n];
        var fullZeros = new byte[groups * n];
        for (int r = 0; r < outF; r++)
        {
            Array.Copy(codes, r * k, fullCodes, (row0 + r) * k, k);
            for (int g = 0; g < groups; g++)
            {
                fullScales[g * n + row0 + r] = scales[g * outF + r];
                fullZeros[g * n + row0 + r] = zeros[g * outF + r];
            }
        }
        var (expectedCodes, expectedSz) = Int4Ops.Pack(fullCodes, fullScales, fullZeros, n, k, group);
        Assert.That(gotCodes, Is.EqualTo(expectedCodes), "codes");
        int pad = Int4Ops.PaddedRows(n);
        for (int g = 0; g < groups; g++)
            for (int r = row0; r < row0 + outF; r++)
                Assert.That(gotSz[g * pad + r], Is.EqualTo(expectedSz[g * pad + r]), $"scale/zero of row {r}, group {g}");
    }

    [Test]
    public void DequantizeGivesQMinusZTimesScaleInBf16()
    {
        int n = 40, k = 384, group = 128;
        var (codes, scales, zeros, w) = RandomWeights(Rng, n, k, group);
        var (tiled, sz) = Int4Ops.Pack(codes, scales, zeros, n, k, group);
        var dq = Upload<byte>(tiled);
        var dsz = Upload<uint>(sz);
        var dout = PoisonedBf16((long)n * k);
        _int4.DequantizeRows(Stream, dq.Ptr, dsz.Ptr, dout.Ptr, n, k, group);
        float[] got = DownloadBf16(dout);
        for (int i = 0; i < w.Length; i++)
            if (got[i] != Bf16.Round(w[i])) Assert.Fail($"element {i} (row {i / k}, col {i % k}): {got[i]}, expected {Bf16.Round(w[i])}");
    }
}

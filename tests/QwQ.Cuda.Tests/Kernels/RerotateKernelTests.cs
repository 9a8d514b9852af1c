using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// kv_rerotate_paged_bf16 / _fp8 (adaptive YaRN's switch by re-rotation, kernels/rope.cu) against the host's
/// <see cref="AdaptiveYarn.Rerotate"/> on fresh random keys: every layer's K plane of the sequence's blocks turns, from
/// plain RoPE into QwQ's YaRN and back; the V planes, the blocks the sequence does not hold and the positions past its
/// length stay as they were. Block tables are shuffled and a layer's planes sit one layer stride apart, as in KvPool.
/// The long case reaches position 32,800, where the angles are ~3·10⁴ rad.
/// </summary>
public sealed class RerotateKernelTests : KernelTestBase
{
    private const int Block = AttentionOps.KvBlockSize;
    private RopeOps _rope = null!;

    protected override void CreateOps() => _rope = new RopeOps(Lib);

    private static (RopeParameters Plain, RopeParameters Yarn) Ropes(int headDim)
    {
        var c = ModelPresets.Get("qwq-32b-yarn") with { HeadDim = headDim };
        return (Rope.PlainParameters(c), Rope.Parameters(c));
    }

    /// <summary>Sequence blocks in a shuffled order, drawn from a pool of <paramref name="poolBlocks"/>.</summary>
    private int[] Table(int positions, int poolBlocks)
    {
        int used = (positions + Block - 1) / Block;
        return [.. Enumerable.Range(0, poolBlocks).OrderBy(_ => Rng.Next()).Take(used)];
    }

    [TestCase(3, 2, 128, 150, true, TestName = "Rerotate_Bf16_ThreeLayers_PartialLastBlock_ToYarn")]
    [TestCase(2, 3, 64, 64, false, TestName = "Rerotate_Bf16_HeadDim64_OneFullBlock_BackToPlain")]
    [TestCase(2, 1, 128, 32800, true, TestName = "Rerotate_Bf16_LongSequence_ToYarn")]
    public void Bf16KeysTurnLikeTheHost(int layers, int nkv, int d, int positions, bool toYarn)
    {
        var (plain, yarn) = Ropes(d);
        var (from, to) = toYarn ? (plain, yarn) : (yarn, plain);
        int poolBlocks = (positions + Block - 1) / Block + 2;
        long plane = (long)poolBlocks * nkv * Block * d;            // elements of one K (or V) plane
        long layerBytes = 2 * plane * 2;                              // K then V, bf16
        float[] pool = NormalBf16(2 * plane * layers, std: 2f);      // [layers][K, V][blocks, nkv, 64, d]
        int[] table = Table(positions, poolBlocks);
        var dPool = UploadBf16(pool);

        _rope.RerotateKeys(Stream, KvLayer.Bf16(dPool.Ptr, dPool.Ptr + (ulong)(plane * 2)), layerBytes, layers, Upload<int>(table).Ptr,
            positions, nkv, d, UploadF32(from.InverseFrequencies), from.AttentionFactor, UploadF32(to.InverseFrequencies), to.AttentionFactor);
        Stream.Synchronize();
        float[] got = DownloadBf16(dPool);

        float[] want = (float[])pool.Clone();
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions; p++)
                for (int h = 0; h < nkv; h++)
                {
                    long at = l * 2 * plane + (((long)table[p / Block] * nkv + h) * Block + p % Block) * d;
                    var key = want.AsSpan((int)at, d);
                    AdaptiveYarn.Rerotate(key, p, from, to);
                    for (int i = 0; i < d; i++) key[i] = Bf16.Round(key[i]);
                }
        double err = RelativeError(got, want);
        TestContext.Out.WriteLine($"‖Δ‖/‖ref‖ = {err:E2} over {layers} layers × {positions} positions × {nkv} heads");
        Assert.That(err, Is.LessThan(1e-3), "turned keys (bf16 rounding of the same rotation: a last-ulp difference at most here and there)");
        // Per key: no element further from the host's than one bf16 ulp of the key's largest element (a component that
        // comes out of cancellation, x1 cos - x2 sin, is small beside its inputs, and its rounding is relative to them).
        int changed = 0;
        for (int k = 0; k < got.Length; k += d)
        {
            float largest = 0;
            for (int i = k; i < k + d; i++) largest = Math.Max(largest, Math.Abs(want[i]));
            for (int i = k; i < k + d; i++)
                if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(want[i]))
                {
                    Assert.That(Math.Abs(got[i] - want[i]), Is.LessThanOrEqualTo(largest / 128), $"element {i}: more than one bf16 ulp of its key's largest");
                    changed++;
                }
        }
        Assert.That(changed, Is.LessThan(got.Length / 50), "differences are rare last-ulp roundings");
        // untouched: V planes, blocks outside the table, positions past the length (all within `want` as uploaded)
    }

    [TestCase(2, 2, 128, 150, TestName = "Rerotate_Fp8_TwoLayers_PartialLastBlock")]
    [TestCase(1, 1, 128, 32800, TestName = "Rerotate_Fp8_LongSequence")]
    public void Fp8KeysTurnAndRequantizeLikeTheHost(int layers, int nkv, int d, int positions)
    {
        var (from, to) = Ropes(d);
        int poolBlocks = (positions + Block - 1) / Block + 2;
        long rows = (long)poolBlocks * nkv * Block;                 // keys of one plane
        long codeBytes = rows * d, scaleBytes = rows * 4;
        long layerBytes = 2 * codeBytes + 2 * scaleBytes;            // K codes, V codes, K scales, V scales
        var host = new byte[layerBytes * layers];
        for (int i = 0; i < host.Length; i++) host[i] = (byte)Rng.Next(256);
        var scales = new float[rows];
        for (int l = 0; l < layers; l++)
        {
            // valid e4m3 codes (0x7F and 0xFF are NaN), positive scales
            for (long i = 0; i < 2 * codeBytes; i++)
                if ((host[l * layerBytes + i] & 0x7F) == 0x7F) host[l * layerBytes + i] ^= 1;
            for (long r = 0; r < rows; r++) scales[r] = 0.01f + (float)Rng.NextDouble();
            Buffer.BlockCopy(scales, 0, host, (int)(l * layerBytes + 2 * codeBytes), (int)scaleBytes);
            Buffer.BlockCopy(scales, 0, host, (int)(l * layerBytes + 2 * codeBytes + scaleBytes), (int)scaleBytes);
        }
        int[] table = Table(positions, poolBlocks);
        var dPool = Upload<byte>(host);
        ulong p0 = dPool.Ptr;
        _rope.RerotateKeys(Stream, KvLayer.Fp8(p0, p0 + (ulong)codeBytes, p0 + (ulong)(2 * codeBytes), p0 + (ulong)(2 * codeBytes + scaleBytes)),
            layerBytes, layers, Upload<int>(table).Ptr, positions, nkv, d,
            UploadF32(from.InverseFrequencies), from.AttentionFactor, UploadF32(to.InverseFrequencies), to.AttentionFactor);
        Stream.Synchronize();
        byte[] got = dPool.ToArray<byte>();

        byte[] want = (byte[])host.Clone();
        var key = new float[d];
        var codes = new byte[d];
        var gotKey = new float[d];
        double diff = 0, norm = 0;
        int codeDiffs = 0;
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions; p++)
                for (int h = 0; h < nkv; h++)
                {
                    long slot = ((long)table[p / Block] * nkv + h) * Block + p % Block;
                    long codeAt = l * layerBytes + slot * d, scaleAt = l * layerBytes + 2 * codeBytes + slot * 4;
                    KvCacheFp8.Dequantize(host.AsSpan((int)codeAt, d), BitConverter.ToSingle(host, (int)scaleAt), key);
                    AdaptiveYarn.Rerotate(key, p, from, to);
                    float scale = KvCacheFp8.Quantize(key, codes);
                    codes.CopyTo(want.AsSpan((int)codeAt, d));
                    BitConverter.TryWriteBytes(want.AsSpan((int)scaleAt, 4), scale);
                    KvCacheFp8.Dequantize(got.AsSpan((int)codeAt, d), BitConverter.ToSingle(got, (int)scaleAt), gotKey);
                    KvCacheFp8.Dequantize(codes, scale, key);
                    for (int i = 0; i < d; i++)
                    {
                        diff += (double)(gotKey[i] - key[i]) * (gotKey[i] - key[i]);
                        norm += (double)key[i] * key[i];
                        if (got[codeAt + i] != codes[i]) codeDiffs++;
                    }
                }
        double err = Math.Sqrt(diff / norm);
        TestContext.Out.WriteLine($"dequantized ‖Δ‖/‖ref‖ = {err:E2}; {codeDiffs} codes differ of {(long)layers * positions * nkv * d}");
        Assert.That(err, Is.LessThan(2e-3), "the same keys, requantized (a code one step apart where fp32 and double rotations straddle a rounding edge)");
        Assert.That(codeDiffs, Is.LessThan((long)layers * positions * nkv * d / 100));
        // Everything but the sequence's K codes and K scales is untouched, bit for bit.
        var touched = new bool[host.Length];
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < positions; p++)
                for (int h = 0; h < nkv; h++)
                {
                    long slot = ((long)table[p / Block] * nkv + h) * Block + p % Block;
                    for (int i = 0; i < d; i++) touched[l * layerBytes + slot * d + i] = true;
                    for (int i = 0; i < 4; i++) touched[l * layerBytes + 2 * codeBytes + slot * 4 + i] = true;
                }
        for (int i = 0; i < host.Length; i++)
            if (!touched[i] && got[i] != host[i]) Assert.Fail($"byte {i} outside the sequence's keys changed");
    }

    private ulong UploadF32(float[] values) => Upload<float>(values).Ptr;
}

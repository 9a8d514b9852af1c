using QwQ.Cuda.Kernels;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// kv_copy_blocks (copy-on-write of paged KV blocks in one launch) on random bytes laid out as KvPool lays a pool out:
/// every pair's source block lands on its destination in every layer and plane, byte for byte, and nothing else changes.
/// </summary>
public sealed class KvBlockCopyKernelTests : KernelTestBase
{
    private KvBlockOps _ops = null!;

    protected override void CreateOps() => _ops = new KvBlockOps(Lib);

    // bf16 pool (K, V planes of 8 KV heads x 64 positions x 128 dims x 2 bytes a block) and fp8 (codes, codes, scales, scales)
    [TestCase(new long[] { 131072, 131072 }, 3, 7, TestName = "CopyBlocks_Bf16Planes")]
    [TestCase(new long[] { 65536, 65536, 2048, 2048 }, 2, 9, TestName = "CopyBlocks_Fp8Planes")]
    [TestCase(new long[] { 16, 16 }, 5, 40, TestName = "CopyBlocks_TinyBlocksManyPairs")]
    public void EveryPairIsCopiedInEveryLayerAndPlaneAndNothingElse(long[] planeBlockBytes, int layers, int blocks)
    {
        var offsets = new long[planeBlockBytes.Length];
        for (int p = 1; p < offsets.Length; p++) offsets[p] = offsets[p - 1] + planeBlockBytes[p - 1] * blocks;
        long layerBytes = offsets[^1] + planeBlockBytes[^1] * blocks;
        var host = new byte[layerBytes * layers];
        Rng.NextBytes(host);
        // distinct destinations, sources anywhere else (a block copied from may be copied twice)
        int[] order = [.. Enumerable.Range(0, blocks).OrderBy(_ => Rng.Next())];
        int n = blocks / 2;
        var pairs = new int[2 * n];
        for (int i = 0; i < n; i++) (pairs[2 * i], pairs[2 * i + 1]) = (order[n + Rng.Next(blocks - n)], order[i]);

        var pool = Upload<byte>(host);
        _ops.CopyBlocks(Stream, pool.Ptr, layerBytes, layers, offsets, planeBlockBytes, Upload<int>(pairs).Ptr, n);
        Stream.Synchronize();
        byte[] got = pool.ToArray<byte>();

        byte[] want = (byte[])host.Clone();
        for (int l = 0; l < layers; l++)
            for (int p = 0; p < offsets.Length; p++)
                for (int i = 0; i < n; i++)
                {
                    long plane = l * layerBytes + offsets[p], bytes = planeBlockBytes[p];
                    Array.Copy(host, plane + pairs[2 * i] * bytes, want, plane + pairs[2 * i + 1] * bytes, bytes);
                }
        Assert.That(got, Is.EqualTo(want));
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>
/// What the fp8 KV cache costs the GPU engine's memory (docs/KV_CACHE.md, no GPU needed): the pool's bytes per block and
/// position are the format's (2 × kv_heads × (head_dim + 4) per position and layer: 2,112 of bf16's 4,096 for QwQ-32B),
/// so the plan's pool holds about 4096 / 2112 times the positions in the same memory, per GPU with tensor parallel too.
/// </summary>
public sealed class Fp8KvMemoryTests
{
    private static readonly ModelConfig Qwq = ModelPresets.Get("qwq-32b");
    private static readonly ModelConfig Tiny = ModelConfig.Parse(CudaModelTests.TinyConfigJson(), "config.json");
    private const long GiB = 1L << 30;

    private static EngineOptions Options(KvCacheKind kind) => new() { KvCache = kind };

    [Test]
    public void BlocksAndPositionsCountTheFormatsBytes()
    {
        foreach (var c in new[] { Qwq, Tiny })
        {
            foreach (var kind in new[] { KvCacheKind.Bf16, KvCacheKind.Fp8 })
            {
                long perLayer = KvCacheFp8.BytesPerPositionPerLayer(c, kind);
                Assert.That(KvPool.BytesPerToken(c, kind), Is.EqualTo(perLayer * c.NumHiddenLayers), $"{kind}");
                Assert.That(KvPool.BytesPerBlock(c, kind), Is.EqualTo(perLayer * c.NumHiddenLayers * AttentionOps.KvBlockSize), $"{kind}");
            }
            Assert.That(KvPool.BytesPerToken(c, KvCacheKind.Bf16), Is.EqualTo(c.KvBytesPerToken), "bf16 is the model's figure");
        }
        Assert.That(KvPool.BytesPerToken(Qwq, KvCacheKind.Fp8), Is.EqualTo(64L * 2 * 8 * (128 + 4)));
        Assert.That((double)KvPool.BytesPerBlock(Qwq, KvCacheKind.Fp8) / KvPool.BytesPerBlock(Qwq, KvCacheKind.Bf16), Is.EqualTo(2112.0 / 4096));
    }

    [TestCase(24)]
    [TestCase(80)]
    [TestCase(141)]
    public void ThePlanHoldsAboutTwiceThePositionsInTheSameMemory(int cardGiB)
    {
        // int4 weights (about 19 GB) so that a 24 GB card holds some KV too; the same bytes go to the pool either way.
        long free = MemoryTable.AssumedFreeBytes(cardGiB * GiB);
        var bf16 = MemoryPlan.Create(Qwq, free, Options(KvCacheKind.Bf16), WeightKind.Int4Awq);
        var fp8 = MemoryPlan.Create(Qwq, free, Options(KvCacheKind.Fp8), WeightKind.Int4Awq);
        TestContext.Out.WriteLine($"{cardGiB} GiB: bf16 {bf16.KvPoolPositions:N0} positions (chunk {bf16.PrefillChunk}), fp8 {fp8.KvPoolPositions:N0} (chunk {fp8.PrefillChunk})");
        Assert.That(fp8.KvBytesPerToken, Is.EqualTo(135_168));
        Assert.That(bf16.KvBytesPerToken, Is.EqualTo(262_144));
        Assert.That(fp8.WeightBytes, Is.EqualTo(bf16.WeightBytes));
        if (fp8.PrefillChunk == bf16.PrefillChunk)
            Assert.That((double)fp8.KvPoolPositions / bf16.KvPoolPositions, Is.InRange(1.93, 4096.0 / 2112 + 1e-3));
        else // a bf16 pool short of ComfortablePositions shrank its prefill chunk; fp8's did not need to
            Assert.That(fp8.PrefillChunk, Is.GreaterThan(bf16.PrefillChunk));
        Assert.That(fp8.KvCacheBytes, Is.LessThanOrEqualTo(free - fp8.WeightBytes - fp8.WorkspaceBytes - fp8.ReserveBytes));
        Assert.That(fp8.MaxContext, Is.GreaterThanOrEqualTo(bf16.MaxContext));
    }

    [TestCase(2)]
    [TestCase(4)]
    public void EachGpuStoresItsKvHeadsInFp8(int ranks)
    {
        var shape = TensorParallelPlan.Create(Qwq, ranks).Shape;
        var plan = MemoryPlan.Create(shape, 80 * GiB, Options(KvCacheKind.Fp8), WeightKind.Bf16);
        Assert.That(plan.KvBytesPerToken, Is.EqualTo(135_168 / ranks));
        Assert.That(KvPool.BytesPerBlock(shape.Config, KvCacheKind.Fp8), Is.EqualTo(135_168L / ranks * AttentionOps.KvBlockSize));
    }

    [Test]
    public void TheMemoryTableCountsTheAskedFormat()
    {
        var fp8 = MemoryTable.For(Qwq, 80 * GiB, Options(KvCacheKind.Fp8));
        var bf16 = MemoryTable.For(Qwq, 80 * GiB, Options(KvCacheKind.Bf16));
        foreach (var row in fp8.Rows)
        {
            Assert.That(row.KvBytesPerToken, Is.EqualTo(135_168), row.Name);
            Assert.That(row.Plan!.KvBytesPerToken, Is.EqualTo(135_168), row.Name);
            Assert.That(row.Plan.KvPoolPositions, Is.GreaterThan(bf16[row.Kind].Plan!.KvPoolPositions * 19 / 10), row.Name);
        }
    }

    [Test]
    public void SharedMemoryOfTheFp8KernelsIsAsStatedAndFitsTheOptInLimit()
    {
        // Decode's fp8 kernel holds only its stages of codes and scales (the mma reads the codes in place): less than the
        // bf16 ring, so it launches wherever that does (kernels/attention_decode.cu). Prefill's also holds the expanded
        // bf16 tile pair, 4% more than the bf16 kernel at head_dim 128; it runs one block per multiprocessor
        // (__launch_bounds__(256, 1)), far under the 227 KiB a block may opt into on sm_80 and sm_90.
        foreach (int d in new[] { 32, 64, 128 })
        {
            Assert.That(AttentionOps.DecodeSmemBytes(d, KvCacheKind.Fp8), Is.LessThanOrEqualTo(AttentionOps.DecodeSmemBytes(d)), $"decode, head_dim {d}");
            Assert.That(AttentionOps.PrefillSmemBytes(d, KvCacheKind.Fp8), Is.LessThanOrEqualTo(163 * 1024), $"prefill, head_dim {d}: the A100's opt-in limit");
        }
        // what the kernels' comments state: a stage is K and V codes [2, 64, D + 16] and scales [2, 64] fp32
        // (attn::fp8_stage_bytes), decode's ring 3 stages (or its cross-warp merge if larger), prefill's 2
        Assert.That(AttentionOps.Fp8StageBytes(128), Is.EqualTo(18_944));
        Assert.That(AttentionOps.DecodeSmemBytes(128, KvCacheKind.Fp8), Is.EqualTo(56_832));
        Assert.That(AttentionOps.DecodeSmemBytes(64, KvCacheKind.Fp8), Is.EqualTo(32_256));
        Assert.That(AttentionOps.DecodeSmemBytes(32, KvCacheKind.Fp8), Is.EqualTo(19_968));
        Assert.That(AttentionOps.PrefillSmemBytes(128, KvCacheKind.Fp8), Is.EqualTo(72_704));
        // four decode blocks fit an H100 multiprocessor (228 KiB, 1 KiB reserved per block), as DecodeSplitSlots plans
        Assert.That(4 * (AttentionOps.DecodeSmemBytes(128, KvCacheKind.Fp8) + 1024), Is.LessThanOrEqualTo(228 * 1024));
    }

    [Test]
    public void DecodeSplitsPlanOneWaveOfTheBlocksThatFitAMultiprocessor()
    {
        // bf16 at head_dim 128: a 104,448-byte ring, two a multiprocessor; the fp8 cache and smaller heads: four (the cap)
        Assert.That(AttentionOps.DecodeSmemBytes(128), Is.EqualTo(104_448));
        Assert.That(AttentionOps.DecodeBlocksPerSm(128, KvCacheKind.Bf16), Is.EqualTo(2));
        Assert.That(AttentionOps.DecodeBlocksPerSm(128, KvCacheKind.Fp8), Is.EqualTo(4));
        Assert.That(AttentionOps.DecodeBlocksPerSm(64, KvCacheKind.Bf16), Is.EqualTo(4));
        foreach (int d in new[] { 32, 64, 128 })
            foreach (var kind in new[] { KvCacheKind.Bf16, KvCacheKind.Fp8 })
                Assert.That(AttentionOps.DecodeBlocksPerSm(d, kind) * (AttentionOps.DecodeSmemBytes(d, kind) + 1024), Is.LessThanOrEqualTo(228 * 1024),
                    $"head_dim {d}, {kind}: the blocks planned fit");
        // the workspace is sized for the most slots any kind takes: every launch's partials fit it
        const int sms = 132, nq = 40, nkv = 8;
        long bytes = AttentionOps.DecodePagedWorkspaceBytes(sms, nq, nkv, 128, 64);
        int Slots(int batch, KvCacheKind kind) => AttentionOps.DecodeSplitSlots(sms, nkv, batch, AttentionOps.DecodeBlocksPerSm(128, kind));
        foreach (var kind in new[] { KvCacheKind.Bf16, KvCacheKind.Fp8 })
            for (int batch = 1; batch <= 64; batch++)
            {
                int slots = Slots(batch, kind);
                Assert.That(4L * nq * slots * 128 + 8L * nq * slots, Is.LessThanOrEqualTo(bytes), $"{kind}, batch {batch}");
                long resident = (long)AttentionOps.DecodeBlocksPerSm(128, kind) * sms;
                Assert.That((long)slots * nkv, Is.LessThanOrEqualTo(Math.Max(resident, (long)batch * nkv)), $"{kind}, batch {batch}: one wave (or one slot a row)");
                Assert.That((slots + 1L) * nkv, Is.GreaterThan(resident), $"{kind}, batch {batch}: as many slots as one wave holds");
            }
        Assert.That(Slots(8, KvCacheKind.Bf16), Is.EqualTo(33), "264 resident blocks over 8 KV heads, rounded down");
        Assert.That(Slots(64, KvCacheKind.Bf16), Is.EqualTo(64), "more rows than slots: one each");
    }
}

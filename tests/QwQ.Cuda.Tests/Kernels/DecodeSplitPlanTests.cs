using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Kernels;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// How a decode step's split slots are dealt to its rows by their context lengths (AttentionOps.PlanDecodeSplits; the
/// kernels read the plan, kernels/attention_decode.cu RowSplits). Host arithmetic only: the GPU tests run the kernels on it.
/// </summary>
public class DecodeSplitPlanTests
{
    private const int Tile = AttentionOps.KvBlockSize;
    private const int MaxContext = 131072;

    /// <summary>Each row's (first slot, splits, keys per split); <paramref name="work"/>: each slot's row (−1 unused).</summary>
    private static (int First, int Splits, int Chunk)[] Plan(int[] contexts, int slots, out int[] work)
    {
        var rows = new int[4 * contexts.Length];
        var slotsOut = new int[4 * slots];
        AttentionOps.PlanDecodeSplits(contexts, MaxContext, slots, rows, slotsOut);
        work = [.. Enumerable.Range(0, slots).Select(g => slotsOut[4 * g])];
        for (int g = 0; g < slots; g++)
        {
            int r = slotsOut[4 * g];
            if (r < 0) { Assert.That(slotsOut.AsSpan(4 * g, 4).ToArray(), Is.EqualTo(new[] { -1, 0, 0, 0 }), $"unused slot {g}"); continue; }
            // what a split block reads in its one load: its split of the row, the step's keys per split, the row's length
            Assert.That(slotsOut.AsSpan(4 * g + 1, 3).ToArray(), Is.EqualTo(new[] { g - rows[4 * r], rows[4 * r + 2], Math.Clamp(contexts[r], 0, MaxContext) }), $"slot {g}");
            Assert.That(rows[4 * r + 3], Is.EqualTo(Math.Clamp(contexts[r], 0, MaxContext)), $"row {r}: its length, for the combine");
        }
        return [.. Enumerable.Range(0, contexts.Length).Select(r => (rows[4 * r], rows[4 * r + 1], rows[4 * r + 2]))];
    }

    private static int Tiles(int context) => (Math.Clamp(context, 0, MaxContext) + Tile - 1) / Tile;

    [Test]
    public void EqualContextsSplitAsOneWaveDividedByTheRows()
    {
        // The bf16 cache on 132 SMs: 33 slots a KV head. Batch 8 at 1k: 4 splits of 4 tiles each (32 slots), as the
        // batch-wide rule gave before; one row at 1k: a split per tile; one row at 32k: 32 splits of 16 tiles.
        var p = Plan([.. Enumerable.Repeat(1024, 8)], 33, out _);
        Assert.That(p.Select(r => (r.Splits, r.Chunk)), Is.All.EqualTo((4, 4 * Tile)));
        Assert.That(Plan([1024], 33, out _)[0], Is.EqualTo((0, 16, Tile)));
        Assert.That(Plan([32768], 33, out _)[0], Is.EqualTo((0, 32, 16 * Tile)));
    }

    [Test]
    public void ALongRowBesideShortOnesTakesMostSlots()
    {
        // After an adaptive switch: a 32k row decoding beside seven 1k rows. One split count for the batch (4) gave the
        // long row 4 splits of 128 tiles, which every other row waited for; dealt by length, no split reads more than 20.
        int[] contexts = [32768, .. Enumerable.Repeat(1024, 7)];
        var p = Plan(contexts, 33, out int[] work);
        Assert.That(p.Max(r => r.Chunk / Tile), Is.EqualTo(20));
        Assert.That(p[0].Splits, Is.EqualTo(26));
        Assert.That(p.Skip(1).Select(r => r.Splits), Is.All.EqualTo(1));
        Assert.That(work, Is.EqualTo(Enumerable.Repeat(0, 26).Concat(Enumerable.Range(1, 7)).ToArray()));
    }

    [TestCase(33, new[] { 1, 64, 65, 3001, 0, 2600 })]
    [TestCase(33, new[] { 0, 0, 0, 0 })]
    [TestCase(66, new[] { 131072, 1, 5000, 70000 })]
    [TestCase(8, new[] { 1, 2, 3, 4, 5, 6, 7, 8 })]
    [TestCase(128, new[] { 40000, 200, 200, 200, 17, 9000, 1, 64, 128, 129 })]
    public void EveryRowIsCoveredByTheFewestTilesPerSplitThatFit(int slots, int[] contexts)
    {
        var p = Plan(contexts, slots, out int[] work);
        int chunk = p[0].Chunk;
        Assert.That(p.Select(r => r.Chunk), Is.All.EqualTo(chunk), "one split length for the step");
        int next = 0;
        for (int r = 0; r < contexts.Length; r++)
        {
            Assert.That(p[r].First, Is.EqualTo(next), $"row {r}: its slots follow the previous row's");
            Assert.That(p[r].Splits, Is.EqualTo(Math.Max(1, (Tiles(contexts[r]) * Tile + chunk - 1) / chunk)), $"row {r}: as many splits as its keys need, at least one");
            Assert.That(work.AsSpan(next, p[r].Splits).ToArray(), Is.All.EqualTo(r), $"row {r}: its slots name it");
            next += p[r].Splits;
        }
        Assert.That(next, Is.LessThanOrEqualTo(slots));
        Assert.That(work[next..], Is.All.EqualTo(-1), "unused slots");
        int tiles = chunk / Tile;
        if (tiles > 1) // one tile fewer per split would need more slots than the grid has
            Assert.That(contexts.Sum(c => Math.Max(1, (Tiles(c) + tiles - 2) / (tiles - 1))), Is.GreaterThan(slots));
    }

    [Test]
    public void RefusesMoreRowsThanSlotsAndShortBuffers()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => AttentionOps.PlanDecodeSplits([1, 2, 3], MaxContext, 2, new int[12], new int[8]));
        Assert.Throws<ArgumentException>(() => AttentionOps.PlanDecodeSplits([1, 2], MaxContext, 4, new int[7], new int[16]));
        Assert.Throws<ArgumentException>(() => AttentionOps.PlanDecodeSplits([1, 2], MaxContext, 4, new int[8], new int[15]));
        Assert.Throws<ArgumentOutOfRangeException>(() => AttentionOps.PlanDecodeSplits([], MaxContext, 4, new int[8], new int[16]));
    }

    [TestCase(0)]
    [TestCase(5)]
    [TestCase(-2)]
    public void DecodeBlocksPerSmOutsideOneToFourIsRefusedBeforeAnyGpuWork(int blocksPerSm)
    {
        var e = Assert.Throws<OptionException>(() => AttentionOps.CheckDecodeBlocksPerSm(blocksPerSm))!;
        Assert.That(e.Message, Is.EqualTo($"--decode-blocks-per-sm must be from 1 to 4, got {blocksPerSm}"));
        // the engine refuses it before it looks for a GPU (CI has none: a later check would say "no CUDA device")
        var load = Assert.Throws<OptionException>(() =>
            CudaBackend.Load(ModelPresets.Get("qwq-32b"), null, new EngineOptions { DecodeBlocksPerSm = blocksPerSm }).Dispose())!;
        Assert.That(load.Message, Is.EqualTo(e.Message));
    }

    [TestCase(1)]
    [TestCase(4)]
    public void DecodeBlocksPerSmFromOneToFourIsAccepted(int blocksPerSm) =>
        Assert.DoesNotThrow(() => AttentionOps.CheckDecodeBlocksPerSm(blocksPerSm));
}

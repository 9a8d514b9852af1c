using QwQ.Cuda.Kernels;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// Which tensor-core GEMV builds serve which products (TensorCoreGemvOps.Serves: the load-time tuner times only those):
/// host arithmetic only; the GPU tests (TensorCoreGemvKernelTests, Fp8EngineTests) run each build at these row counts.
/// </summary>
public class TensorCoreVariantTests
{
    private static int[] RowsServed(TensorCoreVariant variant, bool fp8, int k = 5120) =>
        [.. Enumerable.Range(0, TensorCoreGemvOps.MaxRows + 2).Where(rows => TensorCoreGemvOps.Serves(variant, fp8, rows, k))];

    private static int[] Range(int first, int last) => [.. Enumerable.Range(first, last - first + 1)];

    [Test]
    public void EachBuildServesItsRowCounts()
    {
        Assert.Multiple(() =>
        {
            Assert.That(RowsServed(TensorCoreVariant.Standard, fp8: true), Is.EqualTo(Range(1, 32)));
            Assert.That(RowsServed(TensorCoreVariant.Standard, fp8: false), Is.EqualTo(Range(1, 32)), "the only bf16 build");
            Assert.That(RowsServed(TensorCoreVariant.Lite, fp8: true), Is.EqualTo(Range(1, 8)));
            Assert.That(RowsServed(TensorCoreVariant.Wide, fp8: true), Is.EqualTo(Range(17, 32)));
            Assert.That(RowsServed(TensorCoreVariant.Half, fp8: true), Is.EqualTo(Range(9, 32)));
            Assert.That(RowsServed(TensorCoreVariant.HalfWide, fp8: true), Is.EqualTo(Range(17, 32)));
            Assert.That(RowsServed(TensorCoreVariant.Warpgroup, fp8: true), Is.EqualTo(Range(9, 32)), "n16 build to 16 rows, n32 above");
            Assert.That(RowsServed(TensorCoreVariant.WarpgroupDeep, fp8: true), Is.EqualTo(Range(17, 32)), "an n32 build only");
            Assert.That(RowsServed(TensorCoreVariant.WarpgroupBf16, fp8: true), Is.EqualTo(Range(9, 32)), "n16 build to 16 rows, n32 above");
            Assert.That(RowsServed(TensorCoreVariant.WarpgroupBf16Deep, fp8: true), Is.EqualTo(Range(17, 32)), "an n32 build only");
            Assert.That(RowsServed(TensorCoreVariant.EvenRuns, fp8: true), Is.Empty, "an int4 build (Int4Ops.Variants)");
        });
    }

    /// <summary>
    /// The int4 GEMV's builds the tuner times: the standard one at every row count, the even-runs one (which serves the
    /// block-per-tile plan's 1..8 rows) up to 4, where it measured faster in the step.
    /// </summary>
    [Test]
    public void Int4BuildsTimedAtTheirRowCounts()
    {
        for (int rows = 1; rows <= TensorCoreGemvOps.MaxRows; rows++)
            Assert.That(Int4Ops.Variants(rows), Is.EqualTo(rows <= 4
                ? new[] { TensorCoreVariant.Standard, TensorCoreVariant.EvenRuns }
                : new[] { TensorCoreVariant.Standard }), $"rows {rows}");
    }

    [Test]
    public void OnlyTheStandardBuildServesBf16Weights()
    {
        foreach (var variant in Enum.GetValues<TensorCoreVariant>().Where(v => v != TensorCoreVariant.Standard))
            Assert.That(RowsServed(variant, fp8: false), Is.Empty, $"{variant}");
    }

    /// <summary>The builds that read x in f16 hold it in the workspace, so their inputs are bounded (MaxHalfIn).</summary>
    [Test]
    public void TheF16BuildsStopAtTheirWorkspace([Values("Half", "HalfWide", "Warpgroup", "WarpgroupDeep")] string name)
    {
        var variant = Enum.Parse<TensorCoreVariant>(name);
        Assert.That(TensorCoreGemvOps.Serves(variant, fp8: true, rows: 32, k: TensorCoreGemvOps.MaxHalfIn), Is.True);
        Assert.That(TensorCoreGemvOps.Serves(variant, fp8: true, rows: 32, k: TensorCoreGemvOps.MaxHalfIn + TensorCoreGemvOps.Chunk), Is.False);
        Assert.That(TensorCoreGemvOps.Serves(TensorCoreVariant.Standard, fp8: true, rows: 32, k: TensorCoreGemvOps.MaxHalfIn + TensorCoreGemvOps.Chunk), Is.True,
            "the plain build reads bf16 x in place");
    }

    /// <summary>The warpgroup builds that read bf16 x where it is keep no copy of it, so any k serves.</summary>
    [Test]
    public void TheBf16XWarpgroupBuildsHaveNoInputBound([Values("WarpgroupBf16", "WarpgroupBf16Deep")] string name)
    {
        var variant = Enum.Parse<TensorCoreVariant>(name);
        Assert.That(TensorCoreGemvOps.Serves(variant, fp8: true, rows: 32, k: TensorCoreGemvOps.MaxHalfIn + TensorCoreGemvOps.Chunk), Is.True);
    }
}

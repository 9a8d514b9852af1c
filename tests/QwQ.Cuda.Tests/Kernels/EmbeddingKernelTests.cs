using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>embedding_gather_bf16 and gather_rows_bf16: exact copies (bf16 → fp32 is exact).</summary>
public sealed class EmbeddingKernelTests : KernelTestBase
{
    private EmbeddingOps _emb = null!;

    protected override void CreateOps() => _emb = new EmbeddingOps(Lib);

    [TestCase(4096, 5120, 9, TestName = "Embedding_Hidden5120")]
    [TestCase(50, 100, 5, TestName = "Embedding_OddHidden")]
    [TestCase(300, 37, 4, TestName = "Embedding_ScalarPath")]
    public void GatherMatchesCpu(int vocab, int hidden, int tokens)
    {
        float[] table = NormalBf16((long)vocab * hidden);
        var ids = new int[tokens];
        for (int t = 0; t < tokens; t++) ids[t] = Rng.Next(vocab);
        ids[0] = vocab - 1;
        if (tokens > 1) ids[1] = 0;

        var dTable = UploadBf16(table);
        var dIds = Upload<int>(ids);
        var dOut = PoisonedF32((long)tokens * hidden);
        _emb.Gather(Stream, dTable.Ptr, dIds.Ptr, dOut.Ptr, tokens, hidden, vocab);
        float[] got = DownloadF32(dOut);

        var expected = new float[(long)tokens * hidden];
        CpuOps.Embedding(ids, table, expected, hidden);
        AssertAllFinite(got, "embedding");
        Assert.That(got, Is.EqualTo(expected));
    }

    [Test]
    public void OutOfRangeIdGivesNaNRow()
    {
        const int vocab = 10, hidden = 64;
        var dTable = UploadBf16(NormalBf16(vocab * hidden));
        var dIds = Upload<int>([3, vocab, -1]);
        var dOut = PoisonedF32(3 * hidden);
        dOut.Memset32(0);
        _emb.Gather(Stream, dTable.Ptr, dIds.Ptr, dOut.Ptr, 3, hidden, vocab);
        float[] got = DownloadF32(dOut);
        AssertAllFinite(got.AsSpan(0, hidden), "valid row");
        Assert.That(got.Skip(hidden), Is.All.NaN);
    }

    [TestCase(9, 5120, 3, TestName = "GatherRows_Hidden5120")]
    [TestCase(6, 37, 4, TestName = "GatherRows_ScalarPath")]
    public void GatherRowsCopiesRows(int t, int hidden, int r)
    {
        float[] src = NormalBf16((long)t * hidden);
        var rows = new int[r];
        for (int i = 0; i < r; i++) rows[i] = Rng.Next(t);
        rows[0] = t - 1;
        var dSrc = UploadBf16(src);
        var dRows = Upload<int>(rows);
        var dDst = PoisonedBf16((long)r * hidden);
        _emb.GatherRowsBf16(Stream, dSrc.Ptr, dRows.Ptr, dDst.Ptr, r, hidden, t);
        float[] got = DownloadBf16(dDst);
        var expected = new float[(long)r * hidden];
        for (int i = 0; i < r; i++) src.AsSpan(rows[i] * hidden, hidden).CopyTo(expected.AsSpan(i * hidden, hidden));
        AssertAllFinite(got, "gathered");
        Assert.That(got, Is.EqualTo(expected));
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(4096);
        Assert.That(() => _emb.Gather(Stream, b.Ptr, b.Ptr + 1, b.Ptr, 1, 8),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("ids"));
        Assert.That(() => _emb.GatherRowsBf16(Stream, b.Ptr, b.Ptr, b.Ptr, 0, 8),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("rowCount"));
    }
}

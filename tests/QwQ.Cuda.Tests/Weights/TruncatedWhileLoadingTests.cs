using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>
/// A checkpoint that shrinks after it was opened (a download restarted over it, a copy still running) must fail
/// with a WeightsException naming the file and the tensor. With a memory map the process died of SIGBUS instead.
/// </summary>
public class TruncatedWhileLoadingTests
{
    private TempDir _dir = null!;
    private string _path = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = new TempDir();
        _path = _dir.File(SafetensorsCheckpoint.SingleFileName);
        File.Copy(TinyGqaFixture.WeightsPath, _path);
    }

    [TearDown] public void TearDown() => _dir.Dispose();

    /// <summary>Truncates the file the way another process would, while the checkpoint holds it open.</summary>
    private void Truncate(long length)
    {
        using var writer = new FileStream(_path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        writer.SetLength(length);
    }

    [TestCase(0.5, TestName = "FileTruncatedAfterOpenFailsClearly(half)")]
    [TestCase(0.0, TestName = "FileTruncatedAfterOpenFailsClearly(to the header)")]
    [TestCase(0.999, TestName = "FileTruncatedAfterOpenFailsClearly(last bytes)")]
    public void FileTruncatedAfterOpenFailsClearly(double keep)
    {
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        long dataStart = ck.Files.Single().DataStart;
        long length = dataStart + (long)((new FileInfo(_path).Length - dataStart) * keep);
        Truncate(length);

        // The load reads tensors in the config's order; the first whose bytes are gone is the one the error names.
        var config = TinyGqaFixture.Config;
        var cut = TensorNames.Expected(config).Select(x => ck.Tensors[x.Name]).First(t => t.DataOffset + t.ByteLength > length);
        var e = Assert.Throws<WeightsException>(() => CpuWeights.Load(ck, config))!;
        Assert.That(e.Message, Does.Contain(_path).And.Contain($"tensor '{cut.Name}'").And.Contain("file shrank while loading")
                                   .And.Contain($"ends at byte {length} now"));
    }

    [Test]
    public void ChunkedBf16ReadOfATruncatedFileFails()
    {
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        var t = ck.Tensors.Values.MaxBy(t => t.DataOffset)!;
        Truncate(t.DataOffset + 8);
        var dst = new ushort[t.ElementCount];
        ck.CopyAsBf16(t, dst.AsSpan(0, 2), 0);   // the bytes still there read fine
        var e = Assert.Throws<WeightsException>(() => ck.CopyAsBf16(t, dst, 0))!;
        Assert.That(e.Message, Does.Contain(_path).And.Contain($"tensor '{t.Name}'").And.Contain("file shrank"));
    }
}

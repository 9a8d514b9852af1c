using System.Runtime.InteropServices;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Weights;

public class SafetensorsReaderTests
{
    private TempDir _dir = null!;

    [SetUp] public void SetUp() => _dir = new TempDir();
    [TearDown] public void TearDown() => _dir.Dispose();

    [Test]
    public void ReadsTensorsOfEveryDtype()
    {
        string path = _dir.File("model.safetensors");
        Write(path,
        [
            F32("a", [2, 3], 1, 2, 3, 4, 5, -6.5f),
            Bf16("b", [2], 0x3F80, 0xC000),            // 1, -2
            F16("c", [3], (Half)0.5f, (Half)(-3f), (Half)1024f),
            F32("scalar", [], 42),
        ], new() { ["format"] = "pt" });

        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.Multiple(() =>
        {
            Assert.That(ck.Tensors.Keys, Is.EquivalentTo(new[] { "a", "b", "c", "scalar" }));
            var a = ck.Tensors["a"];
            Assert.That((a.DType, a.Shape, a.ByteLength, a.FilePath), Is.EqualTo((DType.F32, new long[] { 2, 3 }, 24L, path)));
            Assert.That(ck.Files.Single().Metadata["format"], Is.EqualTo("pt"));
            Assert.That(ck.ReadFloat32("a"), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, -6.5f }));
            Assert.That(ck.ReadFloat32("b"), Is.EqualTo(new float[] { 1, -2 }));
            Assert.That(ck.ReadFloat32("c"), Is.EqualTo(new float[] { 0.5f, -3, 1024 }));
            Assert.That(ck.ReadFloat32("scalar"), Is.EqualTo(new float[] { 42 }));
        });
    }

    [Test]
    public void ReadCopiesRawBytesFromAnOffset()
    {
        Write(_dir.File("model.safetensors"), [F32("a", [1], 9), Bf16("b", [3], 0x3F80, 0xC000, 0x4040)]);
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        var two = new ushort[2];
        ck.Read(ck.Tensors["b"], 2, MemoryMarshal.AsBytes(two.AsSpan()));
        Assert.That(two, Is.EqualTo(new ushort[] { 0xC000, 0x4040 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ck.Read(ck.Tensors["b"], 4, new byte[4]));
        Assert.Throws<ArgumentOutOfRangeException>(() => ck.Read(ck.Tensors["b"], -1, new byte[1]));
        var stranger = ck.Tensors["a"] with { FilePath = _dir.File("other.safetensors") };
        Assert.Throws<ArgumentException>(() => ck.Read(stranger, 0, new byte[4]));
    }

    [Test]
    public void DataOffsetIsAbsoluteInTheFile()
    {
        string path = _dir.File("model.safetensors");
        Write(path, [F32("x", [1], 1), F32("y", [2], 7, 8)]);
        using var f = SafetensorsFile.Open(path);
        var y = f.Tensors["y"];
        var bytes = File.ReadAllBytes(path);
        Assert.That(BitConverter.ToSingle(bytes, (int)y.DataOffset + 4), Is.EqualTo(8f));
        Assert.That(y.DataOffset, Is.EqualTo(f.DataStart + 4));
    }

    [Test]
    public void CopyAsBf16ConvertsAndSlices()
    {
        Write(_dir.File("model.safetensors"),
        [
            F32("f", [4], 1.0f, 1.00390625f /* exactly halfway: ties to even → 1.0 */, 1.01171875f /* halfway → up */, -2.5f),
            F16("h", [2], (Half)0.25f, (Half)(-1f)),
            Bf16("b", [3], 1, 2, 3),
        ]);
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        var dst = new ushort[3];
        ck.CopyAsBf16(ck.Tensors["f"], dst, 1);
        Assert.That(dst, Is.EqualTo(new ushort[] { 0x3F80, 0x3F82, 0xC020 }));
        var two = new ushort[2];
        ck.CopyAsBf16(ck.Tensors["h"], two, 0);
        Assert.That(two, Is.EqualTo(new ushort[] { 0x3E80, 0xBF80 }));
        ck.CopyAsBf16(ck.Tensors["b"], two, 1);
        Assert.That(two, Is.EqualTo(new ushort[] { 2, 3 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ck.CopyAsBf16(ck.Tensors["b"], two, 2));
    }

    [Test]
    public void TruncatedDataNamesTensorAndFile()
    {
        string path = _dir.File("model.safetensors");
        var entries = new[] { F32("w", [4], 1, 2, 3, 4) };
        WriteRaw(path, Header(entries), entries[0].Data[..10]);
        var e = OpenFails(path);
        Assert.That(e.Message, Does.Contain(path).And.Contain("'w'").And.Contain("truncated"));
    }

    [Test]
    public void TooShortFile()
    {
        string path = _dir.File("x.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.That(OpenFails(path).Message, Does.Contain(path).And.Contain("too short"));
    }

    [Test]
    public void HeaderLengthPastEndOfFile()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, "{}", [], headerLengthOverride: 4096);
        Assert.That(OpenFails(path).Message, Does.Contain(path).And.Contain("header length 4096").And.Contain("past the end"));
    }

    [Test]
    public void InsaneHeaderLength()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, "{}", new byte[16], headerLengthOverride: ulong.MaxValue - 3);
        Assert.That(OpenFails(path).Message, Does.Contain(path).And.Contain("exceeds the format's limit"));
    }

    [Test]
    public void HeaderNotJson()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, "this is not json at all", new byte[8]);
        Assert.That(OpenFails(path).Message, Does.Contain(path).And.Contain("not valid JSON"));
    }

    [Test]
    public void UnknownDtypeNamesTensorAndDtype()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, """{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}""", new byte[16]);
        var e = OpenFails(path);
        Assert.That(e.Message, Does.Contain(path).And.Contain("'ids'").And.Contain("I64"));
    }

    [Test]
    public void OffsetsPastEnd()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, """{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}""", new byte[8]);
        var e = OpenFails(path);
        Assert.That(e.Message, Does.Contain(path).And.Contain("'w'").And.Contain("past the end"));
    }

    [Test]
    public void ByteLengthMustMatchShape()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, """{"w": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}}""", new byte[8]);
        var e = OpenFails(path);
        Assert.That(e.Message, Does.Contain("'w'").And.Contain("hold 8 bytes").And.Contain("needs 12"));
    }

    [Test]
    public void MalformedEntries()
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, """{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}""", new byte[4]);
        Assert.That(OpenFails(path).Message, Does.Contain("'w'").And.Contain("shape"));
        WriteRaw(path, """{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}""", new byte[4]);
        Assert.That(OpenFails(path).Message, Does.Contain("'w'").And.Contain("data_offsets"));
        WriteRaw(path, """{"w": {"shape": [1], "data_offsets": [0, 4]}}""", new byte[4]);
        Assert.That(OpenFails(path).Message, Does.Contain("'w'").And.Contain("dtype"));
    }

    [Test]
    public void ShardedCheckpoint()
    {
        Write(_dir.File("model-00001-of-00002.safetensors"), [F32("a", [1], 1)]);
        Write(_dir.File("model-00002-of-00002.safetensors"), [F32("b", [2], 2, 3)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"),
            """{"metadata": {"total_size": 12}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}""");
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.That(ck.Files, Has.Count.EqualTo(2));
        Assert.That(ck.ReadFloat32("b"), Is.EqualTo(new float[] { 2, 3 }));
        Assert.That(ck.Tensors["a"].FilePath, Does.EndWith("model-00001-of-00002.safetensors"));
    }

    [Test]
    public void MissingShardNamesShardAndIndex()
    {
        Write(_dir.File("model-00001-of-00002.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"),
            """{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("model-00002-of-00002.safetensors").And.Contain("model.safetensors.index.json"));
    }

    [Test]
    public void EveryMissingShardIsNamedWithTheFix()
    {
        // A download that stopped part-way misses several shards: all of them are named, not only the first.
        Write(_dir.File("model-00001-of-00003.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"),
            """{"weight_map": {"a": "model-00001-of-00003.safetensors", "b": "model-00002-of-00003.safetensors", "c": "model-00003-of-00003.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("model-00002-of-00003.safetensors").And.Contain("model-00003-of-00003.safetensors")
            .And.Contain("2 of the 3 shards").And.Contain("download"));
    }

    [Test]
    public void IndexLeftOverBesideASingleFileIsIgnored()
    {
        // transformers' save_pretrained, writing one model.safetensors where a sharded save was, deletes the old shards
        // but not their index; transformers then loads the single file, and so must we.
        Write(_dir.File("model.safetensors"), [F32("a", [1], 1), F32("b", [2], 2, 3)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"),
            """{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}""");
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.That(ck.Files.Select(f => Path.GetFileName(f.FilePath)), Is.EqualTo(new[] { "model.safetensors" }));
        Assert.That(ck.ReadFloat32("b"), Is.EqualTo(new float[] { 2, 3 }));
    }

    [Test]
    public void IndexWithSomeShardsBesideASingleFileStillNeedsThemAll()
    {
        // Some shards present: the index is not a leftover (a download in progress, or a sharded save over a single
        // file), so the single file is not silently taken instead.
        Write(_dir.File("model.safetensors"), [F32("a", [1], 9), F32("b", [2], 9, 9)]);
        Write(_dir.File("model-00001-of-00002.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"),
            """{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("model-00002-of-00002.safetensors").And.Contain("model.safetensors.index.json"));
    }

    [Test]
    public void IndexedTensorAbsentFromItsShard()
    {
        Write(_dir.File("s1.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"), """{"weight_map": {"a": "s1.safetensors", "zz": "s1.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("'zz'").And.Contain("s1.safetensors"));
    }

    [Test]
    public void NoWeightsNamesDirectory()
    {
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain(_dir.Path).And.Contain("no safetensors"));
        string missing = Path.Combine(_dir.Path, "nope");
        Assert.That(Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(missing))!.Message, Does.Contain(missing));
    }

    [Test]
    public void MissingTensorNamesCheckpoint()
    {
        Write(_dir.File("model.safetensors"), [F32("a", [1], 1)]);
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.That(Assert.Throws<WeightsException>(() => ck.ReadFloat32("b"))!.Message, Does.Contain("'b'").And.Contain(_dir.Path));
    }
}

using System.Text;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>
/// Files the reference reader (huggingface/safetensors) rejects must be rejected here too, with one
/// WeightsException naming the file and, where there is one, the tensor. Each of these loaded before, most of
/// them with weights other than the ones written.
/// </summary>
public class SafetensorsStrictnessTests
{
    private TempDir _dir = null!;
    private string _path = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = new TempDir();
        _path = _dir.File("model.safetensors");
    }

    [TearDown] public void TearDown() => _dir.Dispose();

    private WeightsException OpenFails() => SafetensorsTestFiles.OpenFails(_path);

    private void WriteHeader(string header, int dataBytes) => WriteRaw(_path, header, new byte[dataBytes]);

    [Test]
    public void HeaderLongerThanTheReferenceLimit()
    {
        WriteRaw(_path, "{}", new byte[16], headerLengthOverride: 100_000_001);
        Assert.That(OpenFails().Message, Does.Contain("100000001").And.Contain("limit of 100000000"));
    }

    [TestCase(new byte[] { 0xFF }, TestName = "InvalidUtf8InName(FF)")]
    [TestCase(new byte[] { 0xC0, 0xAF }, TestName = "InvalidUtf8InName(overlong)")]
    [TestCase(new byte[] { 0xED, 0xA0, 0x80 }, TestName = "InvalidUtf8InName(encoded surrogate)")]
    [TestCase(new byte[] { 0xE2, 0x82 }, TestName = "InvalidUtf8InName(cut short)")]
    public void InvalidUtf8InName(byte[] bad)
    {
        var header = Encoding.UTF8.GetBytes("""{"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""");
        int at = Encoding.UTF8.GetBytes("""{"model.norm""").Length;
        File.WriteAllBytes(_path, Bytes([.. header[..at], .. bad, .. header[at..]], new byte[4]));
        Assert.That(OpenFails().Message, Does.Contain("not valid UTF-8").And.Contain("model.norm"));
    }

    [Test]
    public void UnpairedSurrogateEscapeInName()
    {
        WriteHeader("""{"w\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("surrogate").And.Contain("""w\ud800"""));
    }

    [Test]
    public void UnpairedSurrogateEscapeInMetadata()
    {
        WriteHeader("""{"__metadata__":{"format":"p\udc00t"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("surrogate").And.Contain("format"));
    }

    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x""")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}{}""")]
    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},""")]
    public void AnythingButWhitespaceAfterTheHeaderObject(string header)
    {
        WriteHeader(header, 4);
        Assert.That(OpenFails().Message, Does.Contain("not valid JSON"));
    }

    [TestCase("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", "'w' appears twice", 8)]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,1],"shape":[1,2],"data_offsets":[0,8]}}""", "'shape' appears twice", 8)]
    [TestCase("""{"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", "'dtype' appears twice", 4)]
    [TestCase("""{"__metadata__":{},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{}}""", "'__metadata__' appears twice", 4)]
    [TestCase("""{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", "'a' appears twice", 4)]
    public void DuplicateKeys(string header, string message, int dataBytes)
    {
        WriteHeader(header, dataBytes);
        Assert.That(OpenFails().Message, Does.Contain(message));
    }

    [TestCase("""{"format":1}""")]
    [TestCase("""{"format":["pt"]}""")]
    [TestCase("\"pt\"")]
    public void MetadataMustMapToStrings(string metadata)
    {
        WriteHeader($$$"""{"__metadata__":{{{metadata}}},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("__metadata__"));
    }

    [TestCase("""["0","4"]""")]
    [TestCase("[0.0,4.0]")]
    [TestCase("[0,4e0]")]
    [TestCase("[0,4,8]")]
    [TestCase("[4]")]
    [TestCase("[-4,0]")]
    [TestCase("[0,18446744073709551620]")]
    [TestCase("null")]
    [TestCase("""{"begin":0,"end":4}""")]
    public void DataOffsetsMustBeTwoNonNegativeIntegers(string offsets)
    {
        WriteHeader($$$"""{"w":{"dtype":"F32","shape":[1],"data_offsets":{{{offsets}}}}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("'w'").And.Contain("data_offsets"));
    }

    [TestCase("[1.0]")]
    [TestCase("""["1"]""")]
    [TestCase("[-1]")]
    [TestCase("[1e0]")]
    [TestCase("null")]
    public void ShapeMustBeNonNegativeIntegers(string shape)
    {
        WriteHeader($$$"""{"w":{"dtype":"F32","shape":{{{shape}}},"data_offsets":[0,4]}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("'w'").And.Contain("shape"));
    }

    [TestCase("[4294967296,4294967296]", "more elements")]
    [TestCase("[4611686018427387904]", "more bytes")]
    public void ElementAndByteCountsMayNotOverflow(string shape, string message)
    {
        WriteHeader($$$"""{"w":{"dtype":"F32","shape":{{{shape}}},"data_offsets":[0,4]}}""", 4);
        Assert.That(OpenFails().Message, Does.Contain("'w'").And.Contain(message));
    }

    [Test]
    public void F32DataRelabelledBf16()
    {
        WriteHeader("""{"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}}""", 16);
        Assert.That(OpenFails().Message, Does.Contain("'w'").And.Contain("hold 16 bytes").And.Contain("BF16[4] needs 8"));
    }

    /// <summary>
    /// The reference reader's rule: sorted by offset, each tensor begins where the previous one ended and the last
    /// ends at the end of the file. Without it two tensors may share bytes and a shifted header goes unnoticed.
    /// </summary>
    [TestCase("""{"model.embed_tokens.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"lm_head.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""",
              8, "tensor 'lm_head.weight' (data_offsets [0, 8]) overlaps tensor 'model.embed_tokens.weight' (data_offsets [0, 8])",
              TestName = "OffsetsMustTileTheData(lm_head on the embedding's bytes)")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""",
              12, "tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a'", TestName = "OffsetsMustTileTheData(partial overlap)")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""",
              12, "tensor 'b' (data_offsets [8, 12]) leaves 4 bytes unused before it after tensor 'a'", TestName = "OffsetsMustTileTheData(hole)")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""",
              8, "tensor 'a' (data_offsets [4, 8]) leaves 4 bytes unused before it at the start of the data", TestName = "OffsetsMustTileTheData(hole at the start)")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""",
              7, "3 bytes follow the end of the last tensor 'a'", TestName = "OffsetsMustTileTheData(bytes after the last tensor)")]
    [TestCase("{}", 8, "8 bytes of data, but the header lists no tensors", TestName = "OffsetsMustTileTheData(data but no tensors)")]
    public void OffsetsMustTileTheData(string header, int dataBytes, string message)
    {
        WriteHeader(header, dataBytes);
        Assert.That(OpenFails().Message, Does.Contain(message));
    }

    [Test]
    public void ZeroSizedTensorsAndAnEmptyFileAreValid()
    {
        WriteHeader("""{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4);
        using (var f = SafetensorsFile.Open(_path))
            Assert.That(f.Tensors["e"].ByteLength, Is.Zero);
        WriteHeader("{}", 0);
        using (var f = SafetensorsFile.Open(_path))
            Assert.That(f.Tensors, Is.Empty);
    }

    /// <summary>
    /// The fixture's header ends in padding spaces, so a length one or two short still ends on valid JSON; only the
    /// data then starts early and every tensor would be read shifted. Off by up to 8 either way must fail.
    /// </summary>
    [Test]
    public void HeaderLengthOffByUpToEight([Values(-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8)] int delta)
    {
        var bytes = File.ReadAllBytes(TinyGqaFixture.WeightsPath);
        var (header, _) = Split(bytes);
        Assert.That(header, Does.EndWith("  "), "fixture header padding (what makes -1 and -2 parse)");
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), (ulong)(Encoding.UTF8.GetByteCount(header) + delta));
        File.WriteAllBytes(_path, bytes);
        OpenFails();
    }

    [Test]
    public void ShardTensorMissingFromTheIndex()
    {
        Write(_dir.File("s1.safetensors"), [F32("a", [1], 1), F32("extra", [1], 2)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"), """{"weight_map": {"a": "s1.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("'extra'").And.Contain("s1.safetensors").And.Contain("not listed"));
    }

    [Test]
    public void TensorInTwoShards()
    {
        Write(_dir.File("s1.safetensors"), [F32("a", [1], 1)]);
        Write(_dir.File("s2.safetensors"), [F32("a", [1], 2), F32("b", [1], 3)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"), """{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("'a'").And.Contain("s1.safetensors").And.Contain("s2.safetensors"));
    }

    [Test]
    public void IndexListingATensorTwice()
    {
        Write(_dir.File("s1.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"), """{"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(_dir.Path))!;
        Assert.That(e.Message, Does.Contain("model.safetensors.index.json").And.Contain("'a' appears twice"));
    }

    [TestCase("../s1.safetensors")]
    [TestCase("sub/../../s1.safetensors")]
    [TestCase("/tmp/s1.safetensors")]
    [TestCase("")]
    [TestCase(".")]
    public void ShardOutsideTheModelDirectory(string shard)
    {
        string model = Path.Combine(_dir.Path, "model");
        Directory.CreateDirectory(model);
        Write(_dir.File("s1.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(Path.Combine(model, "model.safetensors.index.json"), $$$"""{"weight_map": {"a": "{{{shard}}}"}}""");
        var e = Assert.Throws<WeightsException>(() => SafetensorsCheckpoint.Open(model))!;
        Assert.That(e.Message, Does.Contain("'a'").And.Contain($"'{shard}'").And.Contain("not a file inside"));
    }

    [Test]
    public void ShardInASubdirectoryIsInside()
    {
        Directory.CreateDirectory(_dir.File("sub"));
        Write(_dir.File("sub/s1.safetensors"), [F32("a", [1], 1)]);
        File.WriteAllText(_dir.File("model.safetensors.index.json"), """{"weight_map": {"a": "sub/../sub/s1.safetensors"}}""");
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.That(ck.ReadFloat32("a"), Is.EqualTo(new float[] { 1 }));
    }
}

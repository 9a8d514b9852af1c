using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>The safetensors reader knows F8_E4M3 (1 byte) and I32 (4 bytes) and checks their byte lengths as strictly as the others.</summary>
public class QuantizedSafetensorsTests
{
    private TempDir _dir = null!;
    [SetUp] public void SetUp() => _dir = new TempDir();
    [TearDown] public void TearDown() => _dir.Dispose();

    [TestCase("F8_E4M3", 12, DType.F8_E4M3)]
    [TestCase("I32", 48, DType.I32)]
    public void ReadsTheDtypeWithItsElementSize(string dtype, int bytes, DType parsed)
    {
        string path = _dir.File("x.safetensors");
        var data = Enumerable.Range(0, bytes).Select(i => (byte)i).ToArray();
        WriteRaw(path, $$$"""{"t": {"dtype": "{{{dtype}}}", "shape": [4, 3], "data_offsets": [0, {{{bytes}}}]}}""", data);
        using var f = SafetensorsFile.Open(path);
        var t = f.Tensors["t"];
        Assert.That((t.DType, t.ElementCount), Is.EqualTo((parsed, 12L)));
        var back = new byte[bytes];
        f.Read(t, 0, back);
        Assert.That(back, Is.EqualTo(data));
    }

    [TestCase("F8_E4M3", 24, 12)]   // bytes of an F16 [4, 3]
    [TestCase("F8_E4M3", 11, 12)]
    [TestCase("I32", 12, 48)]       // bytes of an F8 [4, 3]
    [TestCase("I32", 24, 48)]
    public void WrongByteLengthIsRefused(string dtype, int bytes, int needed)
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, $$$"""{"t": {"dtype": "{{{dtype}}}", "shape": [4, 3], "data_offsets": [0, {{{bytes}}}]}}""", new byte[bytes]);
        Assert.That(OpenFails(path).Message, Does.Contain($"hold {bytes} bytes but {dtype}[4, 3] needs {needed}"));
    }

    [TestCase("F8_E5M2")]
    [TestCase("I8")]
    [TestCase("U8")]
    [TestCase("i32")]
    public void OtherDtypesStayUnsupported(string dtype)
    {
        string path = _dir.File("x.safetensors");
        WriteRaw(path, $$$"""{"t": {"dtype": "{{{dtype}}}", "shape": [4], "data_offsets": [0, 4]}}""", new byte[4]);
        Assert.That(OpenFails(path).Message, Does.Contain($"unsupported dtype \"{dtype}\" (supported: BF16, F16, F32, F8_E4M3, I32)"));
    }
}

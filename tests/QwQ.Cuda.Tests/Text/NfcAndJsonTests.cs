using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class NfcAndJsonTests
{
    [TestCase("abc", "abc")]
    [TestCase("e\u0301", "\u00E9")]
    [TestCase("A\u030A", "\u00C5")]
    [TestCase("\u212B", "\u00C5")]                 // singleton decomposition
    [TestCase("\u1100\u1161\u11A8", "\uAC01")]     // Hangul L V T
    [TestCase("\uAC00\u11A8", "\uAC01")]           // LV + T
    [TestCase("q\u0307\u0323", "q\u0323\u0307")]   // canonical reordering, no composite
    [TestCase("e\u0323\u0301", "\u1EB9\u0301")]    // compose with the dot below, keep acute
    [TestCase("\u0958", "\u0915\u093C")]           // composition exclusion
    [TestCase("\u0344", "\u0308\u0301")]           // non-starter decomposition
    [TestCase("\uD834\uDD5E", "\uD834\uDD57\uD834\uDD65")] // astral exclusion (musical symbol)
    [TestCase("\u0301abc", "\u0301abc")]           // leading combining mark
    public void Nfc_Normalize(string input, string expected)
    {
        Assert.That(Nfc.Normalize(input), Is.EqualTo(expected));
        Assert.That(Nfc.Normalize(expected), Is.EqualTo(expected), "idempotent");
    }

    [Test]
    public void Nfc_ReturnsSameInstanceForAscii()
    {
        string s = "plain ascii text";
        Assert.That(Nfc.Normalize(s), Is.SameAs(s));
    }

    [TestCase("0", "0")]
    [TestCase("-0", "0")]
    [TestCase("12345678901234567890", "12345678901234567890")]
    [TestCase("1.0", "1.0")]
    [TestCase("100.0", "100.0")]
    [TestCase("0.5", "0.5")]
    [TestCase("-0.25", "-0.25")]
    [TestCase("-0.0", "-0.0")]
    [TestCase("1e-7", "1e-07")]
    [TestCase("1E21", "1e+21")]
    [TestCase("1e16", "1e+16")]
    [TestCase("1e15", "1000000000000000.0")]
    [TestCase("123456789012345678.0", "1.2345678901234568e+17")]
    [TestCase("0.0001", "0.0001")]
    [TestCase("0.00001", "1e-05")]
    [TestCase("3.14159", "3.14159")]
    [TestCase("0.1", "0.1")]
    [TestCase("2.5e-3", "0.0025")]
    [TestCase("1.7976931348623157e308", "1.7976931348623157e+308")]
    public void PythonJson_Numbers(string raw, string expected) =>
        Assert.That(PythonJson.FormatNumber(raw), Is.EqualTo(expected));

    [Test]
    public void PythonJson_Dumps_LikePython()
    {
        string json = "{\"a\":1,\"b\":[true,false,null,{}],\"c\":\"x\\\"y\\\\z\\n\\t\\u0001\\u007f é 😀\",\"d\":[],\"e\":{\"f\":2.50}}";
        Assert.That(PythonJson.Dumps(json),
            Is.EqualTo("{\"a\": 1, \"b\": [true, false, null, {}], \"c\": \"x\\\"y\\\\z\\n\\t\\u0001\u007f é 😀\", \"d\": [], \"e\": {\"f\": 2.5}}"));
    }
}

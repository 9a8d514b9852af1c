using System.Diagnostics;
using System.Text;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Text;
using static QwQ.Cuda.Tests.Text.TextFixtures;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class TokenizerTests
{
    private static System.Text.Json.JsonElement Case(int i) => Goldens.GetProperty("encode")[i];

    [TestCaseSource(typeof(TextFixtures), nameof(EncodeCases))]
    public void Encode_MatchesHuggingFaceIds(int i)
    {
        var c = Case(i);
        string text = c.GetProperty("text").GetString()!;
        Assert.That(Tokenizer.Encode(text), Is.EqualTo(Ids(c.GetProperty("ids"))));
    }

    [TestCaseSource(typeof(TextFixtures), nameof(EncodeCases))]
    public void Decode_MatchesHuggingFace(int i)
    {
        var c = Case(i);
        var ids = Ids(c.GetProperty("ids"));
        Assert.That(Tokenizer.Decode(ids), Is.EqualTo(c.GetProperty("decoded").GetString()));
        Assert.That(Tokenizer.Decode(ids, skipSpecialTokens: true), Is.EqualTo(c.GetProperty("decoded_skip_special").GetString()));
    }

    [TestCaseSource(typeof(TextFixtures), nameof(EncodeCases))]
    public void RoundTrip_IsNfcOfInput(int i)
    {
        var c = Case(i);
        string text = c.GetProperty("text").GetString()!;
        string nfc = c.GetProperty("nfc").GetString()!;
        Assert.That(Nfc.Normalize(text), Is.EqualTo(nfc), "NFC");
        Assert.That(Tokenizer.Decode(Tokenizer.Encode(text)), Is.EqualTo(nfc), "decode(encode(x))");
    }

    [Test]
    public void Goldens_CoverTheCorpus()
    {
        Assert.That(Goldens.GetProperty("encode").GetArrayLength(), Is.GreaterThanOrEqualTo(60));
        var corpus = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturesDir, "text", "corpus.json"))).RootElement;
        var texts = Goldens.GetProperty("encode").EnumerateArray().Select(e => e.GetProperty("text").GetString()).ToList();
        Assert.That(texts, Is.EqualTo(corpus.EnumerateArray().Select(e => e.GetString()).ToList()),
            "text_goldens.json is stale: regenerate it with tests/goldens/make_text_goldens.py");
    }

    [Test]
    public void SpecialIdsAndVocabSize()
    {
        var t = Tokenizer;
        Assert.Multiple(() =>
        {
            Assert.That(t.VocabSize, Is.EqualTo(151669));
            Assert.That(t.EndOfTextId, Is.EqualTo(151643));
            Assert.That(t.ImStartId, Is.EqualTo(151644));
            Assert.That(t.ImEndId, Is.EqualTo(151645));
            Assert.That(t.ThinkId, Is.EqualTo(151667));
            Assert.That(t.ThinkEndId, Is.EqualTo(151668));
            Assert.That(t.AddedTokens, Has.Count.EqualTo(26));
            Assert.That(t.AddedTokens.Count(a => a.Special), Is.EqualTo(14));
            Assert.That(t.TokenToId("<|im_start|>"), Is.EqualTo(151644));
            Assert.That(t.TokenToId("Hello"), Is.EqualTo(9707));
            Assert.That(t.TokenToId("Ġthe"), Is.EqualTo(279));
            Assert.That(t.TokenToId("no such token"), Is.Null);
            Assert.That(t.IdToToken(151668), Is.EqualTo("</think>"));
            Assert.That(t.IdToToken(220), Is.EqualTo("Ġ"));
            Assert.That(t.IdToToken(-1), Is.Null);
            Assert.That(t.IdToToken(151669), Is.Null);
            Assert.That(t.IsSpecial(t.ImEndId), Is.True);
            Assert.That(t.IsSpecial(t.ThinkId), Is.False, "<think> is added but not special, as in HF");
            Assert.That(t.IsAdded(t.ThinkId), Is.True);
        });
    }

    [Test]
    public void AddedTokens_AreMatchedWholeAndNeverProducedByMerges()
    {
        var t = Tokenizer;
        Assert.That(t.Encode("<|im_start|>"), Is.EqualTo(new[] { 151644 }));
        Assert.That(t.Encode("a<think>b</think>c"), Has.Member(t.ThinkId).And.Member(t.ThinkEndId));
        var partial = t.Encode("<|im_start");
        Assert.That(partial, Has.None.GreaterThanOrEqualTo(151643));
        Assert.That(t.Decode(partial), Is.EqualTo("<|im_start"));
        foreach (var a in t.AddedTokens)
            Assert.That(t.Encode("x" + a.Content + "y"), Has.Member(a.Id), a.Content);
    }

    [Test]
    public void Digits_AreSplitOneByOne()
    {
        var ids = Tokenizer.Encode("1234567890");
        Assert.That(ids, Has.Length.EqualTo(10));
        Assert.That(Tokenizer.Decode(ids), Is.EqualTo("1234567890"));
    }

    [Test]
    public void Decode_IgnoresUnknownIdsAndReplacesBrokenUtf8()
    {
        var t = Tokenizer;
        var rare = t.Encode("𠀀");
        Assert.That(rare.Length, Is.GreaterThan(1), "the character should be split across byte tokens for this test");
        Assert.That(t.Decode([rare[0]]), Does.Contain("\uFFFD"));
        Assert.That(t.Decode([.. rare, 152000, -5]), Is.EqualTo("𠀀"));
        Assert.That(t.Decode([]), Is.EqualTo(""));
    }

    [Test]
    public void Encode_EmptyString_IsEmpty() => Assert.That(Tokenizer.Encode(""), Is.Empty);

    [Test]
    public void Load_PlainDirectoryWithOnlyTokenizerFiles()
    {
        var t = QwenTokenizer.Load(PlainTokenizerDir);
        Assert.That(t.Encode("Hello world"), Is.EqualTo(new[] { 9707, 1879 }));
    }

    [Test]
    public void Load_MissingDirectory_Throws()
    {
        var e = Assert.Throws<QwqException>(() => QwenTokenizer.Load("/nonexistent/qwq-dir"));
        Assert.That(e!.Message, Does.Contain("/nonexistent/qwq-dir"));
    }

    [Test]
    public void Load_MissingTokenizerJson_NamesTheFile()
    {
        string dir = NewTempDir();
        File.Copy(Path.Combine(QwqDir, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
        var e = Assert.Throws<QwqException>(() => QwenTokenizer.Load(dir));
        Assert.That(e!.Message, Does.Contain("tokenizer.json"));
    }

    [Test]
    public void Load_MissingTokenizerConfig_NamesTheFile()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{}");
        var e = Assert.Throws<QwqException>(() => QwenTokenizer.Load(dir));
        Assert.That(e!.Message, Does.Contain("tokenizer_config.json"));
    }

    [TestCase("{ not json", "not valid JSON")]
    [TestCase("[]", "malformed")]
    [TestCase("{\"model\": {\"type\": \"Unigram\"}}", "not supported")]
    [TestCase("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": null, \"decoder\": {\"type\": \"ByteLevel\"}}", "pre_tokenizer")]
    [TestCase("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "malformed")]
    public void Load_MalformedTokenizerJson_NamesTheFile(string json, string expected)
    {
        string dir = NewTempDir();
        File.Copy(Path.Combine(QwqDir, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json);
        var e = Assert.Throws<QwqException>(() => QwenTokenizer.Load(dir));
        Assert.That(e!.Message, Does.Contain("tokenizer.json").And.Contain(expected));
    }

    [Test]
    public void Load_MalformedTokenizerConfig_NamesTheFile()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{}");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"chat_template\": ");
        var e = Assert.Throws<QwqException>(() => QwenTokenizer.Load(dir));
        Assert.That(e!.Message, Does.Contain("tokenizer_config.json").And.Contain("not valid JSON"));
    }

    [Test]
    public void Encode_IsThreadSafe()
    {
        var texts = Goldens.GetProperty("encode").EnumerateArray()
            .Select(e => (Text: e.GetProperty("text").GetString()!, Ids: Ids(e.GetProperty("ids")))).ToArray();
        Parallel.For(0, 200, i =>
        {
            var (text, ids) = texts[i % texts.Length];
            Assert.That(Tokenizer.Encode(text), Is.EqualTo(ids));
        });
    }

    /// <summary>A smoke guard only; the real number (≥ 5 MB/s on one core) comes from
    /// bench/QwQ.Cuda.Bench/TokenizerBenchmarks.cs. Measured in process CPU time, so a busy machine does not fail it.</summary>
    [Test]
    public void Encode_EnglishProse_IsFast()
    {
        string prose = BenchProse(1 << 20);
        Tokenizer.Encode(prose); // warm up (JIT, regex, BPE cache)
        var process = Process.GetCurrentProcess();
        double best = double.MaxValue;
        for (int r = 0; r < 3; r++)
        {
            process.Refresh();
            var cpu0 = process.TotalProcessorTime;
            Tokenizer.Encode(prose);
            process.Refresh();
            best = Math.Min(best, (process.TotalProcessorTime - cpu0).TotalSeconds);
        }
        double mbPerSecond = Encoding.UTF8.GetByteCount(prose) / 1e6 / Math.Max(best, 1e-6);
        TestContext.Out.WriteLine($"English prose: {mbPerSecond:F1} MB/s of CPU time");
        Assert.That(mbPerSecond, Is.GreaterThan(3.0));
    }

    internal static string BenchProse(int chars)
    {
        const string paragraph =
            "It was a bright cold day in April, and the clocks were striking thirteen. The committee met on Tuesday " +
            "to discuss the budget for the coming year; several members argued that the library's opening hours should " +
            "be extended, while others worried about the cost of heating the old building through another winter. " +
            "Nobody could remember who had first proposed the idea, but everyone agreed it deserved a careful answer. ";
        var sb = new StringBuilder(chars + paragraph.Length);
        while (sb.Length < chars) sb.Append(paragraph);
        return sb.ToString(0, chars);
    }
}

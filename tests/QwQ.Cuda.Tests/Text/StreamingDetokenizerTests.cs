using System.Text;
using QwQ.Cuda.Text;
using static QwQ.Cuda.Tests.Text.TextFixtures;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class StreamingDetokenizerTests
{
    private static readonly string[] MultiByteTexts =
    [
        "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 👩🏾‍💻 🇯🇵🇺🇸",
        "你好，世界！今天天气很好。日本語のテキスト。한국어 텍스트",
        "中𠀀文 𝓗𝓮𝓵𝓵𝓸 𝟙𝟚𝟛 ｆｕｌｌ",
        "नमस्ते दुनिया! สวัสดีครับ مرحبا Привет",
        "<think>\n思考中…🤔\n</think>\n\n答案是 **42** 🎉<|im_end|>",
    ];

    private static IEnumerable<string> Texts() => MultiByteTexts;

    [TestCaseSource(nameof(Texts))]
    public void EveryPrefix_EmitsOnlyCompleteText_ThatNeverChanges(string text)
    {
        var tok = Tokenizer;
        int[] ids = tok.Encode(text);
        for (int n = 0; n <= ids.Length; n++)
        {
            var detok = new StreamingDetokenizer(tok);
            var emitted = new StringBuilder();
            for (int k = 0; k < n; k++)
            {
                string piece = detok.Push(ids[k]);
                Assert.That(piece, Does.Not.Contain("\uFFFD"), $"prefix {n}, token {k}");
                Assert.That(IsWellFormed(piece), Is.True, "no lone surrogates");
                emitted.Append(piece);
                // What was emitted is a prefix of the full decode and of the final text: it never changes.
                Assert.That(text.StartsWith(emitted.ToString(), StringComparison.Ordinal), Is.True, $"prefix {n}, token {k}");
            }
            string all = emitted + detok.Flush();
            Assert.That(all, Is.EqualTo(tok.Decode(ids.AsSpan(0, n))), $"prefix {n}: stream == Decode");
        }
    }

    [Test]
    public void SplitCharacter_IsHeldBackUntilComplete()
    {
        var tok = Tokenizer;
        // Find a character split over several byte tokens.
        string ch = "𠀀";
        int[] ids = tok.Encode(ch);
        Assume.That(ids.Length, Is.GreaterThan(1));
        var detok = new StreamingDetokenizer(tok);
        for (int k = 0; k < ids.Length - 1; k++)
        {
            Assert.That(detok.Push(ids[k]), Is.Empty);
            Assert.That(detok.PendingByteCount, Is.GreaterThan(0));
        }
        Assert.That(detok.Push(ids[^1]), Is.EqualTo(ch));
        Assert.That(detok.Flush(), Is.Empty);
    }

    [Test]
    public void InvalidBytes_BecomeReplacement_LikeDecode()
    {
        var tok = Tokenizer;
        int[] ids = tok.Encode("𠀀");
        Assume.That(ids.Length, Is.GreaterThan(1));
        int[] broken = [ids[0], tok.Encode("A")[0], ids[0]];
        var detok = new StreamingDetokenizer(tok);
        string s = string.Concat(broken.Select(detok.Push)) + detok.Flush();
        Assert.That(s, Is.EqualTo(tok.Decode(broken)));
        Assert.That(s, Does.Contain("\uFFFD").And.Contain("A"));
    }

    [Test]
    public void SkipSpecialTokens_DropsOnlySpecialOnes()
    {
        var tok = Tokenizer;
        int[] ids = tok.Encode("<think>x</think>y<|im_end|>");
        var detok = new StreamingDetokenizer(tok, skipSpecialTokens: true);
        string s = string.Concat(ids.Select(detok.Push)) + detok.Flush();
        Assert.That(s, Is.EqualTo("<think>x</think>y"));
    }

    [Test]
    public void CompletePrefixLength_Utf8Boundaries()
    {
        Assert.That(StreamingDetokenizer.CompletePrefixLength([0x41, 0xE2, 0x82]), Is.EqualTo(1));
        Assert.That(StreamingDetokenizer.CompletePrefixLength([0x41, 0xE2, 0x82, 0xAC]), Is.EqualTo(4));
        Assert.That(StreamingDetokenizer.CompletePrefixLength([0xF0, 0x9F]), Is.EqualTo(0));
        Assert.That(StreamingDetokenizer.CompletePrefixLength([0xFF, 0x41]), Is.EqualTo(2)); // invalid: decoded now
    }

    private static bool IsWellFormed(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i])) { if (i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1])) return false; i++; }
            else if (char.IsLowSurrogate(s[i])) return false;
        }
        return true;
    }
}

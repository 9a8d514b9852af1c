using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Evaluation;

[TestFixture]
public class AnswerExtractorTests
{
    [TestCase("The answer is \\boxed{42}.", "42")]
    [TestCase("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}")]
    [TestCase("first \\boxed{1} then \\boxed{ 2 }", "2")]
    [TestCase("\\boxed{a_{i}^{2} + \\{x\\}}", "a_{i}^{2} + \\{x\\}")]
    [TestCase("good \\boxed{7} then broken \\boxed{8", "7")]
    [TestCase("\\fbox{x}", "x")]
    [TestCase("\\boxed {5}", "5")]
    [TestCase("$\\boxed{\\dfrac{\\sqrt{3}}{2}}$", "\\dfrac{\\sqrt{3}}{2}")]
    [TestCase("\\boxed{42}, as asked: the final answer goes in \\boxed{}", "42")] // an empty box is not an answer
    [TestCase("put it in \\boxed{ }", null)]
    [TestCase("no box here", null)]
    [TestCase("", null)]
    public void ExtractBoxed(string text, string? expected) =>
        Assert.That(AnswerExtractor.ExtractBoxed(text), Is.EqualTo(expected));

    [TestCase("{\"answer\": \"B\"}", "B")]
    [TestCase("So {\"answer\":\"A\"} ... final: {\"answer\": \"C\"}", "C")]
    [TestCase("{\"reasoning\": \"x\", \"answer\" : \" D \"}", "D")]
    [TestCase("{\"answer\": \"say \\\"hi\\\"\"}", "say \"hi\"")]
    [TestCase("The JSON is `\"answer\": \"C\"`.", "C")]
    [TestCase("answer: B", "B")]
    [TestCase("Final answer: (d)", "D")]
    [TestCase("**Answer:** C", "C")]
    [TestCase("{'answer': 'A'}", "A")]
    [TestCase("\"answer\": C", "C")]
    [TestCase("The answer is: E.", "E")]
    [TestCase("{\"answer\": \"\"}", null)] // an empty field is no answer
    [TestCase("answer: B ... {\"answer\": \" \"}", "B")]
    [TestCase("answer: because the field is strong", null)] // a word is not a letter
    [TestCase("I will answer soon", null)]
    [TestCase(null, null)]
    public void ExtractChoice(string? text, string? expected) =>
        Assert.That(AnswerExtractor.ExtractChoice(text), Is.EqualTo(expected));

    [Test]
    public void ChoiceFallsBackToABoxedLetterButNotToABoxedNumber()
    {
        Assert.That(AnswerExtractor.Extract("{\"answer\": \"\"} so \\boxed{D}", AnswerKind.Choice), Is.EqualTo("D"), "an empty field does not hide the box");
        Assert.That(AnswerExtractor.Extract("so it is \\boxed{B}", AnswerKind.Choice), Is.EqualTo("B"));
        Assert.That(AnswerExtractor.Extract("so it is \\boxed{\\text{(c)}}", AnswerKind.Choice), Is.EqualTo("C"));
        Assert.That(AnswerExtractor.Extract("so it is \\boxed{12}", AnswerKind.Choice), Is.Null);
        Assert.That(AnswerExtractor.Extract("\"answer\": \"A\" and \\boxed{B}", AnswerKind.Choice), Is.EqualTo("A"), "the field asked for wins");
        Assert.That(AnswerExtractor.Extract("answer: A, \\boxed{7}", AnswerKind.Math), Is.EqualTo("7"));
    }

    [TestCase("42", "42")]
    [TestCase(" $42$ ", "42")]
    [TestCase("\\(42\\)", "42")]
    [TestCase("1,234,567", "1234567")]
    [TestCase("1,234.5", "1234.5")]
    [TestCase("1,2", "1,2")] // a pair, not a thousands separator
    [TestCase("12.", "12")]
    [TestCase("5\\text{ cm}", "5")]
    [TestCase("5 \\mbox{meters}", "5")]
    [TestCase("5\\text{ cm}^2", "5")]
    [TestCase("5 \\text{ cm}^{3}", "5")]
    [TestCase("2 \\text{ and } 3", "2and3")] // words between numbers are not units
    [TestCase("\\text{Tuesday}", "Tuesday")]
    [TestCase("x = 3", "3")]
    [TestCase("\\dfrac{3}{4}", "\\frac{3}{4}")]
    [TestCase("\\tfrac12", "\\frac{1}{2}")]
    [TestCase("90^\\circ", "90")]
    [TestCase("50\\%", "50")]
    [TestCase("\\left( 1, 2 \\right)", "(1,2)")]
    [TestCase("2\\sqrt{3}", "2\\sqrt{3}")]
    public void Normalize(string raw, string expected) =>
        Assert.That(AnswerExtractor.Normalize(raw), Is.EqualTo(expected));

    [TestCase("0.5", "1/2")]
    [TestCase("0.5", "\\frac{1}{2}")]
    [TestCase("\\dfrac{1}{2}", "1/2")]
    [TestCase("-\\frac{3}{4}", "-0.75")]
    [TestCase("\\frac{-3}{4}", "-0.75")]
    [TestCase("1,000", "1000")]
    [TestCase("1000.0", "1000")]
    [TestCase("1 000 000", "1000000")] // spaces as thousands separators
    [TestCase("x + 1", "x+1")]
    [TestCase("$12$.", "12")]
    [TestCase("12 \\text{ apples}", "12")]
    [TestCase("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt{3}}{2}")] // not a number: compared as normalized text
    [TestCase("x=7", "7")]
    [TestCase("1e3", "1000")]
    public void EquivalentMathAnswers(string predicted, string expected) =>
        Assert.That(AnswerExtractor.IsCorrect(predicted, expected, AnswerKind.Math), Is.True);

    [TestCase("0.5", "0.05")]
    [TestCase("1/3", "0.33")]
    [TestCase("12", "120")]
    [TestCase("\\frac{1}{2}", "\\frac{2}{1}")]
    [TestCase("\\sqrt{2}", "\\sqrt{3}")]
    [TestCase("1,2", "12")]
    [TestCase("2 \\text{ and } 3", "23")]
    [TestCase("1 1/2", "11/2")] // a mixed number is not eleven halves
    [TestCase("2 3", "23")]
    [TestCase("1\\text{ or }2", "12")]
    [TestCase("", "0")]
    [TestCase("Infinity", "Infinity1")]
    public void DifferentMathAnswers(string predicted, string expected) =>
        Assert.That(AnswerExtractor.IsCorrect(predicted, expected, AnswerKind.Math), Is.False);

    [Test]
    public void NoAnswerIsNeverCorrect()
    {
        Assert.That(AnswerExtractor.IsCorrect(null, "42", AnswerKind.Math), Is.False);
        Assert.That(AnswerExtractor.IsCorrect(null, "C", AnswerKind.Choice), Is.False);
    }

    [TestCase("C", "C", true)]
    [TestCase("c", "C", true)]
    [TestCase("(C)", "C", true)]
    [TestCase("C.", "c", true)]
    [TestCase("B", "C", false)]
    [TestCase("CD", "C", false)]
    public void ChoiceAnswers(string predicted, string expected, bool correct) =>
        Assert.That(AnswerExtractor.IsCorrect(predicted, expected, AnswerKind.Choice), Is.EqualTo(correct));

    [TestCase("-12", -12.0)]
    [TestCase(".5", 0.5)]
    [TestCase("3/4", 0.75)]
    [TestCase("\\frac{1}{8}", 0.125)]
    [TestCase("\\frac{\\frac{1}{2}}{2}", 0.25)]
    public void ParsesNumbers(string text, double expected)
    {
        Assert.That(AnswerExtractor.TryParseNumber(text, out double v), Is.True);
        Assert.That(v, Is.EqualTo(expected));
    }

    [TestCase("1/0")]
    [TestCase("\\frac{1}{0}")]
    [TestCase("NaN")]
    [TestCase("1_000")]
    [TestCase("x+1")]
    [TestCase("\\frac{1}{2}+1")]
    public void RefusesNonNumbers(string text) =>
        Assert.That(AnswerExtractor.TryParseNumber(text, out _), Is.False);

    [Test]
    public void EqualAnswersShareAVoteKey()
    {
        Assert.That(AnswerExtractor.VoteKey("\\frac{1}{2}", AnswerKind.Math), Is.EqualTo(AnswerExtractor.VoteKey("0.5", AnswerKind.Math)));
        Assert.That(AnswerExtractor.VoteKey("1/3", AnswerKind.Math), Is.EqualTo(AnswerExtractor.VoteKey("0.333333333333", AnswerKind.Math)));
        Assert.That(AnswerExtractor.VoteKey("(b)", AnswerKind.Choice), Is.EqualTo("B"));
        Assert.That(AnswerExtractor.VoteKey("2", AnswerKind.Math), Is.Not.EqualTo(AnswerExtractor.VoteKey("3", AnswerKind.Math)));
    }
}

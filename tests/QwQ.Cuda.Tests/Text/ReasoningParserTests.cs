using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class ReasoningParserTests
{
    private const string Output =
        "Okay, let me think about 2+2.\nIt is 4.\n</think>\n\nThe answer is 4.\n" +
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"東京\", \"days\": 3}}\n</tool_call>\n" +
        "<tool_call>\n{\"name\": \"search\", \"arguments\": {}}\n</tool_call>";

    private static ReasoningParser Feed(string text, int chunk)
    {
        var p = new ReasoningParser();
        for (int i = 0; i < text.Length; i += chunk)
            p.Push(text.Substring(i, Math.Min(chunk, text.Length - i)));
        p.Flush();
        return p;
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    [TestCase(7)]
    [TestCase(1000)]
    public void SplitsReasoningAnswerAndToolCalls_ForAnyChunking(int chunk)
    {
        var p = Feed(Output, chunk);
        Assert.That(p.Reasoning, Is.EqualTo("Okay, let me think about 2+2.\nIt is 4.\n"));
        Assert.That(p.Answer, Is.EqualTo("The answer is 4.\n\n"));
        Assert.That(p.ReasoningDone, Is.True);
        Assert.That(p.ToolCalls, Is.EqualTo(new[]
        {
            new ToolCall("get_weather", "{\"city\": \"東京\", \"days\": 3}"),
            new ToolCall("search", "{}"),
        }));
    }

    [TestCase(1)]
    [TestCase(5)]
    [TestCase(1000)]
    public void WithoutToolCallParsing_TheBlocksStayInTheAnswer(int chunk)
    {
        var p = new ReasoningParser(parseToolCalls: false);
        for (int i = 0; i < Output.Length; i += chunk)
            p.Push(Output.Substring(i, Math.Min(chunk, Output.Length - i)));
        p.Flush();
        Assert.That(p.Reasoning, Is.EqualTo("Okay, let me think about 2+2.\nIt is 4.\n"));
        Assert.That(p.Answer, Is.EqualTo(Output[(Output.IndexOf("</think>\n\n", StringComparison.Ordinal) + 10)..]));
        Assert.That(p.ToolCalls, Is.Empty);
    }

    [Test]
    public void Deltas_AddUpToTheTotals()
    {
        var p = new ReasoningParser();
        string reasoning = "", answer = "";
        var calls = new List<ToolCall>();
        foreach (char c in Output)
        {
            var d = p.Push(c.ToString());
            reasoning += d.Reasoning; answer += d.Answer; calls.AddRange(d.ToolCalls);
        }
        var f = p.Flush();
        reasoning += f.Reasoning; answer += f.Answer; calls.AddRange(f.ToolCalls);
        Assert.That(reasoning, Is.EqualTo(p.Reasoning));
        Assert.That(answer, Is.EqualTo(p.Answer));
        Assert.That(calls, Is.EqualTo(p.ToolCalls));
    }

    [Test]
    public void PartialTag_IsHeldBack()
    {
        var p = new ReasoningParser();
        Assert.That(p.Push("abc</thi").Reasoning, Is.EqualTo("abc"));
        Assert.That(p.InReasoning, Is.True);
        var d = p.Push("nk>Hi");
        Assert.That(d.Reasoning, Is.Empty);
        Assert.That(d.Answer, Is.EqualTo("Hi"));
        Assert.That(p.InReasoning, Is.False);
    }

    [Test]
    public void NoThinkEnd_EverythingIsReasoning()
    {
        var p = Feed("still thinking </thi", 4);
        Assert.That(p.Reasoning, Is.EqualTo("still thinking </thi"));
        Assert.That(p.Answer, Is.Empty);
        Assert.That(p.ReasoningDone, Is.False);
    }

    [Test]
    public void NotStartingInReasoning_DetectsThinkOpen()
    {
        var p = new ReasoningParser(startInReasoning: false);
        p.Push("\n<th"); p.Push("ink>r</think>\n\na"); p.Flush();
        Assert.That(p.Reasoning, Is.EqualTo("r"));
        Assert.That(p.Answer, Is.EqualTo("a"));

        var q = new ReasoningParser(startInReasoning: false);
        q.Push("plain answer"); q.Flush();
        Assert.That(q.Answer, Is.EqualTo("plain answer"));
        Assert.That(q.Reasoning, Is.Empty);
    }

    [Test]
    public void InvalidOrUnfinishedToolCall_StaysAnswerText()
    {
        var p = Feed("</think>x<tool_call>not json</tool_call>y<tool_call>{\"name\": \"f\"", 3);
        Assert.That(p.ToolCalls, Is.Empty);
        Assert.That(p.Answer, Is.EqualTo("x<tool_call>not json</tool_call>y<tool_call>{\"name\": \"f\""));
    }

    [Test]
    public void TryParseCall_Shapes()
    {
        Assert.That(ReasoningParser.TryParseCall("{\"name\": \"f\", \"arguments\": {\"a\": [1]}}"), Is.EqualTo(new ToolCall("f", "{\"a\": [1]}")));
        Assert.That(ReasoningParser.TryParseCall("{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}"), Is.EqualTo(new ToolCall("f", "{\"a\": 1}")));
        Assert.That(ReasoningParser.TryParseCall("{\"name\": \"f\"}"), Is.EqualTo(new ToolCall("f", "{}")));
        Assert.That(ReasoningParser.TryParseCall("{\"arguments\": {}}"), Is.Null);
        Assert.That(ReasoningParser.TryParseCall("[1]"), Is.Null);
    }
}

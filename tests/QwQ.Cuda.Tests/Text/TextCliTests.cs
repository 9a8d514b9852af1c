using System.CommandLine;
using System.Text.Json;
using QwQ.Cuda.Cli.Commands;
using static QwQ.Cuda.Tests.Text.TextFixtures;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class TextCliTests
{
    private static (int Code, string Out, string Err) Tokenize(string model, string? text, string stdin = "")
    {
        var o = new StringWriter(); var e = new StringWriter();
        int code = TokenizeCommand.Run(model, text, new StringReader(stdin), o, e);
        return (code, o.ToString(), e.ToString());
    }

    private static (int Code, string Out, string Err) Render(string model, string messagesFile, string? toolsFile = null, bool gen = true, string stdin = "")
    {
        var o = new StringWriter(); var e = new StringWriter();
        int code = RenderCommand.Run(model, messagesFile, toolsFile, gen, new StringReader(stdin), o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Test]
    public void Tokenize_StdinLines()
    {
        var (code, output, err) = Tokenize(PlainTokenizerDir, null, "\"Hello world\"\n\n\"<|im_start|>user\\n\"\n");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo("[9707,1879]\n[151644,872,198]\n"));
        Assert.That(err, Is.Empty);
    }

    [Test]
    public void Tokenize_TextOption()
    {
        var (code, output, _) = Tokenize(QwqDir, "Hello world");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(output, Is.EqualTo("[9707,1879]\n"));
    }

    [Test]
    public void Tokenize_BadInput_OneMessageNonZeroExit()
    {
        var (code, output, err) = Tokenize(QwqDir, null, "\"ok\"\nnot json\n");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(output, Is.EqualTo("[562]\n"));
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1));
        Assert.That(err, Does.Contain("line 2"));

        (code, _, err) = Tokenize(QwqDir, null, "[1, 2]\n");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(err, Does.Contain("JSON string"));

        (code, _, err) = Tokenize("/nonexistent/model", "x");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(err, Does.Contain("/nonexistent/model"));
    }

    [Test]
    public void Tokenize_ThroughSystemCommandLine()
    {
        var o = new StringWriter(); var e = new StringWriter();
        var root = new RootCommand { TokenizeCommand.Create() };
        int code = root.Parse(["tokenize", "--model", QwqDir, "--text", "Hello world"])
            .Invoke(new InvocationConfiguration { Output = o, Error = e });
        Assert.That(code, Is.EqualTo(0), e.ToString());
        Assert.That(o.ToString(), Is.EqualTo("[9707,1879]\n"));
    }

    [TestCaseSource(typeof(TextFixtures), nameof(ChatCases))]
    public void Render_GoldenCases_ExactOutput(int i)
    {
        var c = Goldens.GetProperty("chat")[i];
        string dir = NewTempDir();
        string messages = Path.Combine(dir, "messages.json");
        File.WriteAllText(messages, c.GetProperty("messages").GetRawText());
        string? tools = null;
        if (c.GetProperty("tools").ValueKind != JsonValueKind.Null)
        {
            tools = Path.Combine(dir, "tools.json");
            File.WriteAllText(tools, c.GetProperty("tools").GetRawText());
        }
        var (code, output, err) = Render(PlainTokenizerDir, messages, tools, c.GetProperty("add_generation_prompt").GetBoolean());
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Is.Empty);
        Assert.That(output, Is.EqualTo(c.GetProperty("rendered").GetString()));
    }

    [Test]
    public void Render_ThroughSystemCommandLine_NoTrailingNewline()
    {
        string dir = NewTempDir();
        string messages = Path.Combine(dir, "m.json");
        File.WriteAllText(messages, "[{\"role\": \"user\", \"content\": \"Hi\"}]");
        var o = new StringWriter(); var e = new StringWriter();
        var root = new RootCommand { RenderCommand.Create() };
        int code = root.Parse(["render", "--model", QwqDir, "--messages", messages, "--no-generation-prompt"])
            .Invoke(new InvocationConfiguration { Output = o, Error = e });
        Assert.That(code, Is.EqualTo(0), e.ToString());
        Assert.That(o.ToString(), Is.EqualTo("<|im_start|>user\nHi<|im_end|>\n"));
    }

    [Test]
    public void Render_StdinAndObjectForm()
    {
        var (code, output, err) = Render(QwqDir, "-", stdin: "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"tools\": null}");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(output, Is.EqualTo("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"));
    }

    [Test]
    public void Render_BadInput_OneMessageNonZeroExit()
    {
        string dir = NewTempDir();
        string bad = Path.Combine(dir, "bad.json");
        File.WriteAllText(bad, "[{\"role\": \"user\", ");
        string good = Path.Combine(dir, "good.json");
        File.WriteAllText(good, "[{\"role\": \"user\", \"content\": \"x\"}]");

        foreach (var (model, msgs, tools, expect) in new[]
        {
            ("/nonexistent/model", good, (string?)null, "/nonexistent/model"),
            (QwqDir, Path.Combine(dir, "missing.json"), null, "missing.json"),
            (QwqDir, bad, null, "not valid JSON"),
            (QwqDir, good, bad, "not valid JSON"),
            (QwqDir, good, good.Replace("good", "nope"), "nope.json"),
            (QwqDir, dir, null, $"'{dir}' is a directory"),       // was "does not exist"
            (QwqDir, good, dir, $"'{dir}' is a directory"),
            (QwqDir, "-", null, "standard input (--messages -) is not valid JSON"), // was "The messages file '-'"
        })
        {
            var (code, output, err) = Render(model, msgs, tools);
            Assert.That(code, Is.Not.EqualTo(0), expect);
            Assert.That(output, Is.Empty);
            Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1), err);
            Assert.That(err, Does.Contain(expect));
        }
    }

    [Test]
    public void Render_OtherTemplate_WarnsOnStderr()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"chat_template\": \"x\"}");
        string m = Path.Combine(dir, "m.json");
        File.WriteAllText(m, "[{\"role\": \"user\", \"content\": \"Hi\"}]");
        var (code, output, err) = Render(dir, m);
        Assert.That(code, Is.EqualTo(0));
        Assert.That(err, Does.StartWith("warning:"));
        Assert.That(output, Does.StartWith("<|im_start|>user\nHi"));
    }
}

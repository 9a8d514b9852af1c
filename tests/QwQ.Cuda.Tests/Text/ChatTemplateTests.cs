using System.Text.Json;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Text;
using static QwQ.Cuda.Tests.Text.TextFixtures;

namespace QwQ.Cuda.Tests.Text;

[TestFixture]
public class ChatTemplateTests
{
    [TestCaseSource(typeof(TextFixtures), nameof(ChatCases))]
    public void Render_MatchesTransformers(int i)
    {
        var c = Goldens.GetProperty("chat")[i];
        var messages = ChatTemplate.ParseMessages(c.GetProperty("messages"));
        var toolsEl = c.GetProperty("tools");
        var tools = toolsEl.ValueKind == JsonValueKind.Null ? null : ChatTemplate.ParseTools(toolsEl);
        string rendered = ChatTemplate.Render(messages, tools, c.GetProperty("add_generation_prompt").GetBoolean());
        Assert.That(rendered, Is.EqualTo(c.GetProperty("rendered").GetString()));
        Assert.That(Tokenizer.Encode(rendered), Is.EqualTo(Ids(c.GetProperty("rendered_ids"))), "prompt ids");
    }

    [Test]
    public void EmbeddedTemplate_IsQwqsTemplate()
    {
        var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(QwqDir, "tokenizer_config.json"))).RootElement;
        Assert.That(ChatTemplate.QwqTemplateSource, Is.EqualTo(cfg.GetProperty("chat_template").GetString()));
    }

    [Test]
    public void Load_QwqDirectory_NoWarning()
    {
        var t = ChatTemplate.Load(QwqDir, out string? warning);
        Assert.That(warning, Is.Null);
        Assert.That(t.IsQwqTemplate, Is.True);
    }

    [Test]
    public void Load_OtherTemplate_Warns()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"chat_template\": \"{{ messages[0].content }}\"}");
        var t = ChatTemplate.Load(dir, out string? warning);
        Assert.That(warning, Does.Contain("differs"));
        Assert.That(t.IsQwqTemplate, Is.False);
        Assert.That(t.ModelTemplate, Is.EqualTo("{{ messages[0].content }}"));
    }

    [Test]
    public void Load_NoTemplate_Warns()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{}");
        ChatTemplate.Load(dir, out string? warning);
        Assert.That(warning, Does.Contain("No chat template"));
    }

    [Test]
    public void Load_ChatTemplateJinjaFile_IsPreferred()
    {
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"chat_template\": \"other\"}");
        File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), ChatTemplate.QwqTemplateSource + "\n");
        ChatTemplate.Load(dir, out string? warning);
        Assert.That(warning, Is.Null);
    }

    [Test]
    public void Load_BadDirectoryOrJson_Throws()
    {
        Assert.Throws<QwqException>(() => ChatTemplate.Load("/nonexistent/dir", out _));
        string dir = NewTempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{oops");
        var e = Assert.Throws<QwqException>(() => ChatTemplate.Load(dir, out _));
        Assert.That(e!.Message, Does.Contain("tokenizer_config.json"));
    }

    [Test]
    public void Render_SingleTurn_Exact()
    {
        string s = ChatTemplate.Render([ChatMessage.User("Hi")]);
        Assert.That(s, Is.EqualTo("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"));
        Assert.That(ChatTemplate.Render([ChatMessage.User("Hi")], addGenerationPrompt: false),
            Is.EqualTo("<|im_start|>user\nHi<|im_end|>\n"));
    }

    [Test]
    public void Render_AssistantHistory_KeepsTextAfterLastThinkEnd()
    {
        string s = ChatTemplate.Render([ChatMessage.User("q"), ChatMessage.Assistant("<think>a</think>b</think>\n\n\nc\n"), ChatMessage.User("q2")], addGenerationPrompt: false);
        Assert.That(s, Does.Contain("<|im_start|>assistant\nc\n<|im_end|>\n"));
    }

    [Test]
    public void Render_ToolCallArguments_PrintedLikePython()
    {
        var msg = ChatMessage.Assistant("", [new ToolCall("f", "{\"x\":1.0,\"y\":\"é\",\"z\":[1,2]}")]);
        string s = ChatTemplate.Render([ChatMessage.User("u"), msg], addGenerationPrompt: false);
        Assert.That(s, Does.EndWith("<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1.0, \"y\": \"é\", \"z\": [1, 2]}}\n</tool_call><|im_end|>\n"));
    }

    [Test]
    public void Render_Errors()
    {
        Assert.Throws<QwqException>(() => ChatTemplate.Render([]));
        Assert.Throws<QwqException>(() => ChatTemplate.Render([ChatMessage.User("u"), ChatMessage.Assistant("", [new ToolCall("f", "{bad")])]));
        Assert.Throws<QwqException>(() => ChatTemplate.ParseMessages(JsonDocument.Parse("{}").RootElement));
        Assert.Throws<QwqException>(() => ChatTemplate.ParseMessages(JsonDocument.Parse("[{\"content\": \"x\"}]").RootElement));
    }

    [Test]
    public void ParseMessages_AcceptsOpenAiStringArguments()
    {
        var m = ChatTemplate.ParseMessages(JsonDocument.Parse(
            "[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": 1}\"}}]}]").RootElement);
        Assert.That(m[0].ToolCalls![0], Is.EqualTo(new ToolCall("f", "{\"a\": 1}")));
        Assert.That(m[0].Content, Is.Null);
    }
}

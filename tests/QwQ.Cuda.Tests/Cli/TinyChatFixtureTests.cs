using System.Text.Json;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// tests/fixtures/models/tiny-chat (made by tests/goldens/make_tiny_chat.py): a complete chat model small enough for
/// any machine. These tests keep it loadable by the real code paths, so the CLI, the server and eval can rely on it.
/// </summary>
public class TinyChatFixtureTests
{
    internal static string Dir => TestModels.GoldenModelDir("tiny-chat");

    [Test]
    public void TokenizerFitsTheModelAndKnowsQwqsSpecialTokens()
    {
        var tok = QwenTokenizer.Load(Dir);
        var config = QwQ.Cuda.Config.ModelConfig.Load(Path.Combine(Dir, "config.json"));
        Assert.That(tok.VocabSize, Is.EqualTo(config.VocabSize), "every id the tokenizer makes is a row of the embedding");
        Assert.That(new[] { tok.EndOfTextId, tok.ImStartId, tok.ImEndId, tok.ThinkId, tok.ThinkEndId }, Is.All.LessThan(config.VocabSize));
        Assert.That(tok.TokenToId("<tool_call>"), Is.Not.Null);
        Assert.That(tok.TokenToId("</tool_call>"), Is.Not.Null);

        // Byte-level BPE round-trips any text (bytes without a merge stay single byte tokens), specials are one id each.
        const string text = "<|im_start|>user\nHow many r's are in strawberry? Ünïcödé 草莓 🍓<|im_end|>";
        int[] ids = tok.Encode(text);
        Assert.That(tok.Decode(ids), Is.EqualTo(text));
        Assert.That(ids[0], Is.EqualTo(tok.ImStartId));
        Assert.That(ids[^1], Is.EqualTo(tok.ImEndId));
        Assert.That(ids.Length, Is.LessThan(System.Text.Encoding.UTF8.GetByteCount(text)), "the merges shorten ordinary text");
    }

    [Test]
    public async Task LoadsWithQwqsTemplateAndGenerationConfig()
    {
        using var model = await QwqModel.LoadAsync(Dir, new QwqModelOptions { Backend = BackendKind.Cpu });
        Assert.That(model.Warnings, Is.Empty, "the fixture carries QwQ's exact chat template");
        Assert.That(model.EosTokenIds, Is.EquivalentTo(new[] { model.Tokenizer.ImEndId, model.Tokenizer.EndOfTextId }));
        Assert.That(model.GenerationDefaults.TopK, Is.EqualTo(40));

        using var session = model.CreateSession();
        var result = await session.GenerateAsync("Hello", new GenerationOptions { MaxNewTokens = 8 });
        Assert.That(result.Usage.GeneratedTokens, Is.InRange(1, 8));
        Assert.That(result.Usage.PromptTokens, Is.GreaterThan(5));
    }

    [Test]
    public async Task GenerateRunsThroughTheCliOnTheCpu()
    {
        var r = await CliTests.Qwq("generate", "--model", Dir, "--backend", "cpu", "--prompt", "Hello", "--max-tokens", "6",
            "--temperature", "0", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var done = JsonDocument.Parse(r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries)[^1]).RootElement;
        Assert.That(done.GetProperty("type").GetString(), Is.EqualTo("done"));
        Assert.That(done.GetProperty("usage").GetProperty("generated_tokens").GetInt32(), Is.InRange(1, 6));
    }
}

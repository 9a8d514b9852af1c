using Microsoft.Extensions.AI;
using QwQ.Cuda.Chat;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using QwqMessage = QwQ.Cuda.Text.ChatMessage;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>Sessions, the chat client and the batch API run concurrently through the model's scheduler (CPU).</summary>
public class SchedulerGenerationTests
{
    private static GenerationOptions Greedy(int maxTokens) => new() { Sampling = SamplingOptions.Greedy, MaxNewTokens = maxTokens };

    /// <summary>A chat model whose steps take a few milliseconds more, so concurrent callers surely share steps.</summary>
    private static QwqModel SlowModel() =>
        TestModels.ChatModel(backend: new SlowStepBackend(TestModels.Backend(validVocab: TestModels.Tokenizer.VocabSize), TimeSpan.FromMilliseconds(5)));

    private static readonly string[] Questions =
        ["Hello", "What is 2+2?", "Name a colour.", "Count to five.", "Why is the sky blue?", "Say hi in French.", "Pick a number.", "Tell me a joke."];

    [Test]
    public async Task ConcurrentChatClientCallsGiveWhatEachGetsAlone()
    {
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
        var alone = new List<ChatResponse>();
        using (var client = new QwqChatClient(TestModels.ChatModel(), ownsModel: true))
            foreach (var q in Questions)
                alone.Add(await client.GetResponseAsync([new(ChatRole.User, q)], options));

        using var model = SlowModel();
        using var shared = new QwqChatClient(model);
        var together = await Task.WhenAll(Questions.Select(q => shared.GetResponseAsync([new(ChatRole.User, q)], options)));

        for (int i = 0; i < Questions.Length; i++)
        {
            Assert.That(together[i].Text, Is.EqualTo(alone[i].Text), Questions[i]);
            Assert.That(together[i].Messages.SelectMany(m => m.Contents).OfType<TextReasoningContent>().Select(c => c.Text),
                Is.EqualTo(alone[i].Messages.SelectMany(m => m.Contents).OfType<TextReasoningContent>().Select(c => c.Text)), Questions[i]);
            Assert.That(together[i].Usage!.OutputTokenCount, Is.EqualTo(alone[i].Usage!.OutputTokenCount), Questions[i]);
        }
        Assert.That(model.Scheduler.Counters.LargestBatch, Is.GreaterThan(1), "the calls shared forward passes");
    }

    [Test]
    public async Task ConcurrentSessionsInterleaveAndKeepTheirOwnConversations()
    {
        string[][] turns = [["Hello", "And then?"], ["What is 2+2?", "Are you sure?"], ["Name a colour.", "Another one."]];

        async Task<(List<GenerationResult> Results, List<QwqMessage> History, int Cached)> Converse(QwqModel model, string[] script)
        {
            using var session = model.CreateSession();
            var results = new List<GenerationResult>();
            foreach (var t in script) results.Add(await session.GenerateAsync(t, Greedy(8)));
            return (results, [.. session.History], session.CachedTokens);
        }

        var alone = new List<(List<GenerationResult> Results, List<QwqMessage> History, int Cached)>();
        using (var model = TestModels.ChatModel())
            foreach (var script in turns) alone.Add(await Converse(model, script));

        using var sharedModel = SlowModel();
        var together = await Task.WhenAll(turns.Select(script => Task.Run(() => Converse(sharedModel, script))));

        for (int i = 0; i < turns.Length; i++)
        {
            Assert.That(together[i].History, Is.EqualTo(alone[i].History), $"conversation {i}");
            Assert.That(together[i].Cached, Is.EqualTo(alone[i].Cached), $"conversation {i}");
            for (int t = 0; t < turns[i].Length; t++)
            {
                Assert.That(together[i].Results[t].TokenIds, Is.EqualTo(alone[i].Results[t].TokenIds), $"conversation {i}, turn {t}");
                Assert.That(together[i].Results[t].Usage.CachedPromptTokens, Is.EqualTo(alone[i].Results[t].Usage.CachedPromptTokens));
            }
            Assert.That(together[i].Results[1].Usage.CachedPromptTokens, Is.GreaterThan(5), "the second turn reused the session's cache");
        }
        Assert.That(sharedModel.Scheduler.Counters.LargestBatch, Is.GreaterThan(1), "the sessions shared forward passes");
    }

    [Test]
    public async Task BatchReturnsEveryPromptOnceWithTheTokensItGetsAlone()
    {
        var prompts = Questions.Select((q, i) => BatchPrompt.User($"q{i}", q, Greedy(10))).ToList();
        prompts.Add(new BatchPrompt { Id = "raw", RawText = "<think>\nplain text", Options = Greedy(6) });
        var sampled = new GenerationOptions { Sampling = SamplingOptions.FromGenerationConfig() with { Seed = 5 }, MaxNewTokens = 10 };
        prompts.Add(BatchPrompt.User("s1", "Hello", sampled));
        prompts.Add(BatchPrompt.User("s2", "Hello", sampled with { Sampling = sampled.Sampling! with { Seed = 6 } }));

        using var model = SlowModel();
        var results = new List<BatchResult>();
        await foreach (var r in model.GenerateBatchAsync(prompts)) results.Add(r);

        Assert.That(results.Select(r => r.Id), Is.EquivalentTo(prompts.Select(p => p.Id)), "every prompt once");
        Assert.That(results.All(r => r.Error is null && r.Result is not null));
        Assert.That(model.Scheduler.Counters.LargestBatch, Is.GreaterThan(1));
        foreach (var p in prompts)
        {
            using var session = model.CreateSession();
            var alone = p.RawText is { } raw
                ? await session.GenerateTokensAsync(model.Tokenizer.Encode(raw), p.Options)
                : await session.GenerateAsync(p.Messages!, p.Options);
            var got = results.Single(r => r.Id == p.Id).Result!;
            Assert.That(got.TokenIds, Is.EqualTo(alone.TokenIds), p.Id);
            Assert.That((got.Text, got.Reasoning, got.Answer, got.FinishReason), Is.EqualTo((alone.Text, alone.Reasoning, alone.Answer, alone.FinishReason)), p.Id);
            Assert.That(got.Usage.PromptTokens, Is.EqualTo(alone.Usage.PromptTokens), p.Id);
        }
        Assert.That(results.Single(r => r.Id == "s1").Result!.TokenIds, Is.Not.EqualTo(results.Single(r => r.Id == "s2").Result!.TokenIds),
            "each prompt samples with its own seed");
    }

    [Test]
    public async Task BatchYieldsResultsAsTheyFinishAndReportsBadPromptsAsErrors()
    {
        using var model = TestModels.ChatModel(maxContext: 64);
        BatchPrompt[] prompts =
        [
            BatchPrompt.User("long", "Hello", Greedy(30)),
            BatchPrompt.User("too-long", string.Join(" ", Enumerable.Repeat("word", 100)), Greedy(3)),
            new() { Id = "neither", Options = Greedy(3) },
            BatchPrompt.User("short", "Hello", Greedy(1)),
        ];
        var order = new List<BatchResult>();
        await foreach (var r in model.GenerateBatchAsync(prompts)) order.Add(r);

        Assert.That(order.Select(r => r.Id), Is.EquivalentTo(prompts.Select(p => p.Id)));
        Assert.That(order.FindIndex(r => r.Id == "short"), Is.LessThan(order.FindIndex(r => r.Id == "long")), "results come as they finish");
        Assert.That(order.Single(r => r.Id == "too-long").Error, Does.Contain("context holds 64"));
        Assert.That(order.Single(r => r.Id == "neither").Error, Does.Contain("'neither'").And.Contain("Messages or RawText"));
        Assert.That(order.Single(r => r.Id == "long").Result!.Usage.GeneratedTokens, Is.EqualTo(30));
    }

    [Test]
    public async Task CancellingABatchYieldsOnlyFinishedResultsAndFreesItsSequences()
    {
        using var model = TestModels.ChatModel();
        var prompts = Enumerable.Range(0, 6).Select(i => BatchPrompt.User($"p{i}", "Hello", Greedy(i == 0 ? 1 : 400)));
        using var cts = new CancellationTokenSource();
        var got = new List<BatchResult>();
        Assert.CatchAsync<OperationCanceledException>(async () =>
        {
            await foreach (var r in model.GenerateBatchAsync(prompts, cts.Token))
            {
                got.Add(r);
                cts.Cancel();
            }
        });
        Assert.That(got.Select(r => r.Id), Is.EqualTo(new[] { "p0" }), "the one that finished before the cancellation");
        Assert.That(got[0].Result!.FinishReason, Is.EqualTo(FinishReason.MaxTokens));
        Assert.That(model.Backend.KvPool.FreeBlocks, Is.EqualTo(model.Backend.KvPool.TotalBlocks), "every sequence was disposed");
    }

    [Test]
    public void DisposingTheModelUnderABatchEndsItWithObjectDisposedExceptionNamingTheModel()
    {
        var model = TestModels.ChatModel();
        var prompts = Enumerable.Range(0, 4).Select(i => BatchPrompt.User($"p{i}", "Hello", Greedy(i == 0 ? 1 : 400)));
        var got = new List<BatchResult>();
        // It named the model's BatchScheduler, which the caller never disposed.
        var e = Assert.ThrowsAsync<ObjectDisposedException>(async () =>
        {
            await foreach (var r in model.GenerateBatchAsync(prompts))
            {
                got.Add(r);
                model.Dispose();
            }
        })!;
        Assert.That(e.ObjectName, Is.EqualTo(typeof(QwqModel).FullName));
        Assert.That(got.Select(r => r.Id), Is.EqualTo(new[] { "p0" }), "the one that finished before the model was disposed");
    }
}

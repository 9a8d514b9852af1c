using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>ChatSession on a tiny random CPU model with the real QwQ tokenizer and template.</summary>
public class ChatSessionTests
{
    private static GenerationOptions Greedy(int maxTokens) => new() { Sampling = SamplingOptions.Greedy, MaxNewTokens = maxTokens };

    private static (QwqModel Model, CountingBackend Backend) Create(int maxContext = 1024)
    {
        var counting = new CountingBackend(TestModels.Backend(maxPositions: Math.Max(1024, maxContext), maxContext: maxContext, validVocab: TestModels.Tokenizer.VocabSize));
        return (TestModels.ChatModel(maxContext, counting), counting);
    }

    private static async Task<(List<GenerationUpdate> Updates, GenerationResult Result)> Collect(IAsyncEnumerable<GenerationUpdate> stream)
    {
        var updates = new List<GenerationUpdate>();
        await foreach (var u in stream) updates.Add(u);
        return (updates, updates[^1].Result!);
    }

    // Sessions keep their KV between turns; once idle ones filled the pool, a new generation waited for ever for blocks
    // nobody would give back. Now the least recently used idle session gives its KV back, and its next turn prefills
    // the whole conversation, answering exactly as a fresh session given that conversation does.
    [Test]
    public async Task IdleSessionsThatFillThePoolGiveTheirKvBackToANewGeneration()
    {
        const int blocks = 4;
        var config = TestModels.Config(maxPositions: 1024);
        var backend = new QwQ.Cuda.Inference.CpuReferenceBackend(config, TestModels.Weights(config), validVocab: TestModels.Tokenizer.VocabSize,
            samplerSeed: 1, kvPoolPositions: blocks * 64);
        using var model = TestModels.ChatModel(backend: backend);
        // ~85 positions each, 2 blocks, no prefix shared (a shared one would come from the prefix cache instead)
        static string Question(string topic) => string.Join(' ', Enumerable.Repeat($"Tell me about {topic}.", 12));
        var patience = TimeSpan.FromSeconds(60);

        using var a = model.CreateSession();
        using var b = model.CreateSession();
        await Collect(a.StreamAsync(Question("the sea"), Greedy(4))).WaitAsync(patience);
        await Collect(b.StreamAsync(Question("the sky"), Greedy(4))).WaitAsync(patience);
        Assert.That(backend.KvPool.FreeBlocks, Is.LessThan(2), "the two idle sessions hold the pool but for less than a third prompt's 2 blocks");
        Assert.That(a.CachedTokens, Is.GreaterThan(64));

        using var c = model.CreateSession();
        var (_, third) = await Collect(c.StreamAsync(Question("the moon"), Greedy(4))).WaitAsync(patience); // waited for ever
        Assert.That(third.FinishReason, Is.EqualTo(FinishReason.MaxTokens));
        Assert.That(a.CachedTokens, Is.Zero, "the least recently used idle session gave its KV back");
        Assert.That(b.CachedTokens, Is.GreaterThan(64), "only as much as was needed");

        // a's next turn: its history is kept, its whole conversation prefilled again, the answer a fresh session gives.
        var (_, next) = await Collect(a.StreamAsync("And the rivers?", Greedy(4))).WaitAsync(patience);
        using var fresh = model.CreateSession();
        fresh.History.AddRange(a.History.Take(2));
        var (_, want) = await Collect(fresh.StreamAsync("And the rivers?", Greedy(4))).WaitAsync(patience);
        Assert.That(next.TokenIds, Is.EqualTo(want.TokenIds));
        Assert.That(a.History, Has.Count.EqualTo(4));
    }

    [Test]
    public async Task StreamEndsWithCompletedAndReportsUsage()
    {
        var (model, _) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            var (updates, result) = await Collect(session.StreamAsync("Hello", Greedy(6)));
            Assert.That(updates[^1].Kind, Is.EqualTo(GenerationUpdateKind.Completed));
            Assert.That(updates.Count(u => u.Kind == GenerationUpdateKind.Completed), Is.EqualTo(1));
            Assert.That(result.Usage.GeneratedTokens, Is.LessThanOrEqualTo(6));
            int prompt = session.Render([ChatMessage.User("Hello")]).Length;
            Assert.That(result.Usage.PromptTokens, Is.EqualTo(prompt));
            Assert.That(session.CachedTokens, Is.EqualTo(prompt + result.TokenIds.Count - 1));
            // Prompt ends in "<think>\n", so text before any </think> is reasoning.
            Assert.That(string.Concat(updates.Where(u => u.Kind == GenerationUpdateKind.Reasoning).Select(u => u.Text)), Is.EqualTo(result.Reasoning));
        }
    }

    /// <summary>A user message long enough (well over one 64-token KV block) for the prefix cache; distinct from its first words.</summary>
    internal static string LongMessage(string topic) =>
        $"{topic}: " + string.Join(" ", Enumerable.Range(0, 60).Select(i => $"item{i} of {topic}"));

    [Test]
    public async Task ANewSessionWithACachedPromptReportsTheReusedBlocks()
    {
        var (model, backend) = Create();
        using (model)
        {
            string question = LongMessage("tides");
            int prompt = model.CreateSession().Render([ChatMessage.User(question)]).Length;
            Assert.That(prompt, Is.GreaterThan(128));
            using (var s1 = model.CreateSession())
            {
                var (_, first) = await Collect(s1.StreamAsync(question, Greedy(3)));
                Assert.That(first.Usage.CachedPromptTokens, Is.Zero);
                Assert.That(first.Usage.PrefilledTokens, Is.EqualTo(prompt));
            }

            // Another session (a fresh sequence, as each server request has) with the same prompt: the full blocks of
            // the first one's prompt are still in the prefix cache, and only the rest is run through the model.
            using var s2 = model.CreateSession();
            var (_, second) = await Collect(s2.StreamAsync(question, Greedy(3)));
            int block = backend.KvPool.BlockSize;
            Assert.That(second.Usage.PromptTokens, Is.EqualTo(prompt));
            Assert.That(second.Usage.CachedPromptTokens, Is.EqualTo((prompt - 1) / block * block));
            Assert.That(second.Usage.CachedPromptTokens, Is.GreaterThan(0).And.LessThan(prompt));
            Assert.That(second.Usage.PrefilledTokens, Is.EqualTo(prompt - second.Usage.CachedPromptTokens));
            var seq = backend.Sequences[^1];
            Assert.That(seq.Appended, Is.EqualTo(second.Usage.PrefilledTokens + second.TokenIds.Count - 1),
                "the reported cached tokens were not run through the model");

            using var s3 = model.CreateSession();
            var (_, other) = await Collect(s3.StreamAsync(LongMessage("volcanoes"), Greedy(3)));
            Assert.That(other.Usage.CachedPromptTokens, Is.Zero, "a different prompt reuses nothing");
        }
    }

    [Test]
    public async Task SecondTurnPrefillsOnlyTheNewSuffix()
    {
        var (model, backend) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            var seq = backend.Sequences.Single();
            var (_, first) = await Collect(session.StreamAsync("What is 2+2?", Greedy(5)));
            Assert.That(first.FinishReason, Is.Not.EqualTo(FinishReason.Cancelled));
            Assert.That(session.History, Has.Count.EqualTo(2));
            int cachedAfterFirst = session.CachedTokens;
            var cachedTokens = session.Render([ChatMessage.User("What is 2+2?")]).Concat(first.TokenIds.Take(first.TokenIds.Count - 1)).ToArray();
            Assert.That(cachedTokens, Has.Length.EqualTo(cachedAfterFirst));

            seq.Appended = 0;
            var (_, second) = await Collect(session.StreamAsync("And 3+3?", Greedy(5)));
            int[] prompt2 = session.Render([.. session.History.Take(2), ChatMessage.User("And 3+3?")]);
            int common = cachedTokens.AsSpan().CommonPrefixLength(prompt2);
            Assert.That(common, Is.GreaterThan(10), "the first user turn is shared");
            Assert.That(second.Usage.CachedPromptTokens, Is.EqualTo(common));
            Assert.That(seq.Appended, Is.EqualTo(prompt2.Length - common + (second.TokenIds.Count - 1)),
                "only the new part of the prompt and the generated tokens were run through the model");
            Assert.That(session.CachedTokens, Is.EqualTo(prompt2.Length + second.TokenIds.Count - 1));
        }
    }

    [Test]
    public async Task SameConversationAgainRecomputesOnlyTheLastToken()
    {
        var (model, backend) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            var messages = new[] { ChatMessage.User("Hi there") };
            var (_, a) = await Collect(session.StreamAsync(messages, Greedy(1)));
            backend.Sequences[0].Appended = 0;
            var (_, b) = await Collect(session.StreamAsync(messages, Greedy(1)));
            Assert.That(backend.Sequences[0].Appended, Is.EqualTo(1));
            Assert.That(b.TokenIds, Is.EqualTo(a.TokenIds), "greedy from the same prefix gives the same token");
        }
    }

    [Test]
    public async Task CancellationEndsTheStreamAndLeavesTheSessionUsable()
    {
        var (model, backend) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            using var cts = new CancellationTokenSource();
            int generated = 0;
            var updates = new List<GenerationUpdate>();
            backend.Sequences[0].BeforeAppend = () => { if (++generated == 4) cts.Cancel(); };
            await foreach (var u in session.StreamAsync("Tell me a long story", new GenerationOptions { Sampling = SamplingOptions.Greedy }, cts.Token))
                updates.Add(u);
            backend.Sequences[0].BeforeAppend = null;
            var result = updates[^1].Result!;
            Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Cancelled));
            Assert.That(session.History, Is.EqualTo(new[] { ChatMessage.User("Tell me a long story"), ChatMessage.Assistant(result.Answer) }),
                "the interrupted turn stays: the question, and the answer so far");
            Assert.That(session.CachedTokens, Is.EqualTo(result.Usage.PromptTokens + result.TokenIds.Count - 1));

            var (_, next) = await Collect(session.StreamAsync("Short one", Greedy(3)));
            Assert.That(next.FinishReason, Is.Not.EqualTo(FinishReason.Cancelled));
            Assert.That(session.History, Has.Count.EqualTo(4));
            Assert.That(session.History[2], Is.EqualTo(ChatMessage.User("Short one")));
        }
    }

    [Test]
    public async Task CancellationDuringPrefillReachesTheBackendAndKeepsTheQuestion()
    {
        var (model, backend) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            using var cts = new CancellationTokenSource();
            var seq = backend.Sequences[0];
            seq.BeforeAppend = () => cts.Cancel(); // the first Append is the prefill: cancelled as it starts
            var (_, result) = await Collect(session.StreamAsync("Hello there", Greedy(5), cts.Token));
            seq.BeforeAppend = null;
            Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Cancelled));
            Assert.That(seq.Appended, Is.Zero, "the backend saw the token and ran no chunk");
            Assert.That(session.CachedTokens, Is.Zero);
            Assert.That(session.History, Is.EqualTo(new[] { ChatMessage.User("Hello there"), ChatMessage.Assistant("") }));

            var (_, next) = await Collect(session.StreamAsync("Still there?", Greedy(2)));
            Assert.That(next.Usage.PromptTokens, Is.EqualTo(session.Render([ChatMessage.User("Hello there"), ChatMessage.Assistant(""), ChatMessage.User("Still there?")]).Length));
        }
    }

    [Test]
    public async Task BreakingOutOfTheStreamStopsGeneration()
    {
        var (model, _) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            await foreach (var u in session.StreamAsync("Hello", new GenerationOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 200 }))
                break;
            // The session is free again and consistent.
            var (_, r) = await Collect(session.StreamAsync("Hello", Greedy(2)));
            Assert.That(r.Usage.GeneratedTokens, Is.LessThanOrEqualTo(2));
        }
    }

    [Test]
    public async Task MaxContextIsReportedAsFinishReason()
    {
        var (model, _) = Create(maxContext: 40);
        using (model)
        {
            using var session = model.CreateSession();
            int prompt = session.Render([ChatMessage.User("Hi")]).Length;
            var (_, r) = await Collect(session.StreamAsync("Hi", new GenerationOptions { Sampling = SamplingOptions.Greedy }));
            Assume.That(r.FinishReason, Is.Not.EqualTo(FinishReason.EndOfSequence));
            Assert.That(r.FinishReason, Is.EqualTo(FinishReason.MaxContext));
            Assert.That(r.Usage.GeneratedTokens, Is.EqualTo(40 - prompt + 1));
            Assert.That(session.CachedTokens, Is.EqualTo(40));
        }
    }

    [Test]
    public async Task PromptLongerThanTheContextThrowsAndKeepsTheCache()
    {
        var (model, _) = Create(maxContext: 64);
        using (model)
        {
            using var session = model.CreateSession();
            await Collect(session.StreamAsync("Hi", Greedy(2)));
            int cached = session.CachedTokens;
            var e = Assert.ThrowsAsync<OptionException>(async () => await Collect(session.StreamAsync(string.Join(" ", Enumerable.Repeat("word", 200)), Greedy(2))));
            Assert.That(e!.Message, Does.Contain("context holds 64"));
            Assert.That(session.CachedTokens, Is.EqualTo(cached));
            Assert.That(session.History, Has.Count.EqualTo(2));
        }
    }

    [Test]
    public async Task ConcurrentCallsOnOneSessionAreRejected()
    {
        var (model, backend) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            var gate = new ManualResetEventSlim();
            backend.Sequences[0].BeforeAppend = () => gate.Wait(TimeSpan.FromSeconds(10));
            var first = Collect(session.StreamAsync("Hello", Greedy(2)));
            Assert.ThrowsAsync<InvalidOperationException>(async () => await Collect(session.StreamAsync("Again", Greedy(2))));
            gate.Set();
            await first;
        }
    }

    [Test]
    public async Task StopStringEndsTheAnswer()
    {
        var (model, _) = Create();
        using (model)
        {
            using var session = model.CreateSession();
            var (_, free) = await Collect(session.StreamAsync("Hello", Greedy(12)));
            Assume.That(free.Text.Length, Is.GreaterThan(3));
            string stop = free.Text.Substring(free.Text.Length / 2, 2);
            session.Reset();
            var (_, r) = await Collect(session.StreamAsync("Hello", Greedy(12) with { StopStrings = [stop] }));
            Assert.That(r.FinishReason, Is.EqualTo(FinishReason.StopString));
            Assert.That(r.Text, Is.EqualTo(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)]));
            Assert.That(r.Text, Does.Not.Contain(stop));
        }
    }

    [Test]
    public void TokenizerLargerThanTheModelVocabularyIsRejected()
    {
        var e = Assert.Throws<ConfigException>(() => QwqModel.Create(TestModels.Backend(vocab: 256, maxPositions: 64), TestModels.Tokenizer));
        Assert.That(e!.Message, Does.Contain("vocab_size is 256").And.Contain("tokenizer"));
    }
}

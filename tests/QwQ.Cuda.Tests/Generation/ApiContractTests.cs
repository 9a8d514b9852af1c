using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>What the public API does with inputs that cannot work, and with Dispose while a session streams.</summary>
public class ApiContractTests
{
    private static GenerationOptions Greedy(int maxTokens) => new() { Sampling = SamplingOptions.Greedy, MaxNewTokens = maxTokens };

    [Test]
    public void EmptyTokenPromptNamesTheParameter()
    {
        using var model = TestModels.ChatModel();
        using var session = model.CreateSession();
        // exactly ArgumentException: it was an ArgumentOutOfRangeException "must be in [0, 71]" from deep inside
        var e = Assert.ThrowsAsync<ArgumentException>(() => session.GenerateTokensAsync([]))!;
        Assert.That(e.ParamName, Is.EqualTo("promptTokens"));
        Assert.That(e.Message, Does.Contain("the prompt is empty"));
    }

    [Test]
    public void EmptyMessageListNamesTheParameter()
    {
        using var model = TestModels.ChatModel();
        using var session = model.CreateSession();
        // exactly ArgumentException, as for an empty token prompt: it was a QwqException from the chat template
        var e = Assert.Throws<ArgumentException>(() => session.StreamAsync(new List<QwQ.Cuda.Text.ChatMessage>()))!;
        Assert.That(e.ParamName, Is.EqualTo("messages"));
        Assert.That(e.Message, Does.Contain("no messages"));
    }

    [Test]
    public void LogitBiasThatBansEveryTokenIsRefused()
    {
        using var model = TestModels.ChatModel();
        using var session = model.CreateSession();
        var banAll = Enumerable.Range(0, model.Tokenizer.VocabSize).ToDictionary(id => id, _ => float.NegativeInfinity);
        var options = new GenerationOptions { Sampling = new SamplingOptions { LogitBias = banAll }, MaxNewTokens = 3 };
        var e = Assert.ThrowsAsync<OptionException>(() => session.GenerateAsync("Hello", options))!;
        Assert.That(e.Message, Does.Contain("logit_bias bans every token"));

        // one id left unbanned is a valid (if forceful) bias
        banAll.Remove(42);
        var result = session.GenerateAsync("Hello", new GenerationOptions { Sampling = new SamplingOptions { LogitBias = banAll }, MaxNewTokens = 2 }).Result;
        Assert.That(result.TokenIds, Is.Not.Empty.And.All.EqualTo(42));
    }

    [Test]
    public void SamplerWithNoFiniteLogitLeftRefusesToPick()
    {
        // Not detectable from the options alone: the model's own logits are -inf except where the bias bans.
        var sampler = new CpuSampler(16, 12, defaultSeed: 1);
        var logits = Enumerable.Repeat(float.NegativeInfinity, 16).ToArray();
        logits[5] = 3f;
        var options = new SamplingOptions { LogitBias = new Dictionary<int, float> { [5] = float.NegativeInfinity } };
        Assert.DoesNotThrow(() => options.Validate(12));
        var e = Assert.Throws<OptionException>(() => sampler.Sample(logits, options, 0))!;
        Assert.That(e.Message, Does.Contain("no token can be sampled"));
        Assert.Throws<OptionException>(() => sampler.Sample(logits, options with { Temperature = 0 }, 0), "greedy too");
    }

    [Test]
    public void SamplerGivenNoFiniteLogitByTheModelBlamesTheModel()
    {
        var sampler = new CpuSampler(16, 12, defaultSeed: 1);
        var nan = Enumerable.Repeat(float.NaN, 16).ToArray();
        foreach (var options in new[] { new SamplingOptions(), new SamplingOptions { Temperature = 0 } })
        {
            var e = Assert.Throws<QwqException>(() => sampler.Sample(nan, options, 0))!;
            Assert.That(e, Is.Not.InstanceOf<OptionException>(), "not the caller's options");
            Assert.That(e.Message, Does.Contain("no token can be sampled").And.Contain("NaN").And.Not.Contain("logit_bias"));
        }
    }

    [Test]
    public async Task DisposingTheModelStopsARunningGenerationBeforeReturning()
    {
        var backend = new CountingBackend(TestModels.Backend(validVocab: TestModels.Tokenizer.VocabSize));
        var model = TestModels.ChatModel(backend: backend);
        var session = model.CreateSession();
        var seq = backend.Sequences.Single();
        bool disposed = false;
        int appendsAfterDispose = 0;
        seq.BeforeAppend = () => { if (Volatile.Read(ref disposed)) Interlocked.Increment(ref appendsAfterDispose); };

        var updates = new List<GenerationUpdate>();
        await foreach (var u in session.StreamAsync("Tell me a long story", Greedy(500)))
        {
            updates.Add(u);
            if (updates.Count == 1)
            {
                model.Dispose();
                Volatile.Write(ref disposed, true);
            }
        }
        await Task.Delay(100); // an unstopped generation thread would append again in this time
        Assert.That(appendsAfterDispose, Is.Zero, "the generation thread had stopped when Dispose returned");
        Assert.That(updates[^1].Result!.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(updates[^1].Result!.TokenIds, Has.Count.LessThan(500));
        Assert.Throws<ObjectDisposedException>(() => session.StreamAsync("again").GetAsyncEnumerator().MoveNextAsync().AsTask().GetAwaiter().GetResult());
    }

    [Test]
    public async Task DisposeWaitsOnlyABoundedTimeForABackendThatIgnoresCancellation()
    {
        using var release = new ManualResetEventSlim();
        using var entered = new ManualResetEventSlim();
        var backend = new CountingBackend(TestModels.Backend(validVocab: TestModels.Tokenizer.VocabSize));
        var model = TestModels.ChatModel(backend: backend);
        var session = model.CreateSession();
        backend.Sequences.Single().BeforeAppend = () => { entered.Set(); release.Wait(); }; // stuck in the prefill

        var stream = Task.Run(async () =>
        {
            await foreach (var _ in session.StreamAsync("Hello", Greedy(5))) { }
        });
        Assert.That(entered.Wait(TimeSpan.FromSeconds(30)), "the generation started");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        model.Dispose(TimeSpan.FromMilliseconds(300));
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)), "Dispose gave up waiting after its bound");
        release.Set();
        try { await stream; } catch (ObjectDisposedException) { } // the stuck pass then finds its sequence gone
    }

    [Test]
    public void CpuKvCacheTooLargeForTheHostIsRefusedBeforeAllocating()
    {
        // A config may claim 16M positions, and the CPU reference allocates a sequence's whole cache up front: with
        // 1024 thin layers that would be 2.2 TB, while the weights are 40 MB.
        var config = ModelConfig.Parse(TestModels.ConfigJson(vocab: 256, maxPositions: ModelConfig.MaxPositions, layers: 1024), "c");
        var backend = new CpuReferenceBackend(config, Model.Reference.CpuWeights.Random(config, 1));
        var e = Assert.Throws<OptionException>(() => backend.CreateSequence())!;
        Assert.That(e.Message, Does.Contain("KV cache of 16777216 positions").And.Contain("--max-context"));
    }
}

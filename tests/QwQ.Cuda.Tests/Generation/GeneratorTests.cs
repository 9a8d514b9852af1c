using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Generation;

public class GeneratorTests
{
    private static readonly int[] Eos = [151645, 151643];

    private static GenerationOutcome Run(ScriptedSequence seq, int[] prompt, GenerationOptions options, out string text,
        Func<int, string>? map = null, CancellationToken ct = default, Action<int>? onDelta = null)
    {
        var sb = new System.Text.StringBuilder();
        var outcome = new Generator(seq).Run(prompt, SamplingOptions.Greedy, options, Eos,
            new MapDecoder(map ?? (id => ((char)('a' + id % 26)).ToString())), (tok, delta) => { sb.Append(delta); onDelta?.Invoke(tok); }, ct);
        text = sb.ToString();
        return outcome;
    }

    [Test]
    public void StopsAtEndOfSequenceWithoutAppendingIt()
    {
        var seq = new ScriptedSequence(100, 0, 1, 2, 151645, 5);
        var o = Run(seq, [10, 11, 12], new GenerationOptions(), out var text);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.EndOfSequence));
        Assert.That(o.GeneratedTokens, Is.EqualTo(new[] { 0, 1, 2, 151645 }));
        Assert.That(text, Is.EqualTo("abc"));
        Assert.That(seq.Tokens, Is.EqualTo(new[] { 10, 11, 12, 0, 1, 2 }), "the eos token is not appended");
        Assert.That(o.AppendedGeneratedTokens, Is.EqualTo(3));
        Assert.That(o.Usage.GeneratedTokens, Is.EqualTo(4));
        Assert.That(o.Usage.PromptTokens, Is.EqualTo(3));
    }

    [Test]
    public void StopsAtMaxNewTokens()
    {
        var seq = new ScriptedSequence(100, 1);
        var o = Run(seq, [3], new GenerationOptions { MaxNewTokens = 5 }, out _);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.MaxTokens));
        Assert.That(o.GeneratedTokens, Has.Count.EqualTo(5));
        Assert.That(seq.Length, Is.EqualTo(1 + 4));
    }

    [Test]
    public void StopsWhenTheContextIsFull()
    {
        var seq = new ScriptedSequence(6, 1);
        var o = Run(seq, [3, 4], new GenerationOptions(), out _);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.MaxContext));
        Assert.That(seq.Length, Is.EqualTo(6));
        Assert.That(o.GeneratedTokens, Has.Count.EqualTo(5), "4 appended + the last sampled one that had no room");
    }

    [Test]
    public void StopStringAcrossTokensIsNotEmitted()
    {
        // Tokens 0..: "Hi", " <", "/st", "op>", "more"
        string[] pieces = ["Hi", " <", "/st", "op>", "more"];
        var seq = new ScriptedSequence(100, 0, 1, 2, 3, 4);
        var o = Run(seq, [9], new GenerationOptions { StopStrings = ["</stop>"] }, out var text, id => pieces[id]);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.StopString));
        Assert.That(o.StopString, Is.EqualTo("</stop>"));
        Assert.That(text, Is.EqualTo("Hi "));
        Assert.That(seq.Length, Is.EqualTo(seq.Tokens.Count));
    }

    [Test]
    public void PartialStopPrefixIsReleasedAtEndOfSequence()
    {
        string[] pieces = ["x", "<", "/s"];
        var seq = new ScriptedSequence(100, 0, 1, 2, 151643);
        var o = Run(seq, [9], new GenerationOptions { StopStrings = ["</stop>"] }, out var text, id => id < 3 ? pieces[id] : "");
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.EndOfSequence));
        Assert.That(text, Is.EqualTo("x</s"));
    }

    [Test]
    public void CancellationBetweenTokensKeepsTheSequenceConsistent()
    {
        var seq = new ScriptedSequence(1000, 1, 2, 3);
        using var cts = new CancellationTokenSource();
        int deltas = 0;
        var o = Run(seq, [7, 8], new GenerationOptions(), out _, ct: cts.Token, onDelta: _ => { if (++deltas == 4) cts.Cancel(); });
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(seq.Length, Is.EqualTo(2 + o.AppendedGeneratedTokens));
        Assert.That(o.GeneratedTokens, Has.Count.EqualTo(4));
    }

    [Test]
    public void CancellationBeforePrefillAppendsNothing()
    {
        var seq = new ScriptedSequence(1000, 1);
        var o = Run(seq, [7, 8, 9], new GenerationOptions(), out _, ct: new CancellationToken(true));
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(seq.Length, Is.Zero);
        Assert.That(o.AppendedPromptTokens, Is.Zero);
        Assert.That(o.GeneratedTokens, Is.Empty);
    }

    [Test]
    public void CancellationInsideTheBackendsPrefillStopsWithinOneChunk()
    {
        // The backend prefills in chunks of 4 and checks the token between them; the generator must hand its token on.
        using var cts = new CancellationTokenSource();
        int chunks = 0;
        var seq = new ScriptedSequence(100, 1) { Chunk = 4, AfterChunk = () => { if (++chunks == 1) cts.Cancel(); } };
        int[] prompt = [.. Enumerable.Range(10, 20)];
        var o = Run(seq, prompt, new GenerationOptions { PrefillChunk = 0 }, out _, ct: cts.Token);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(seq.Tokens, Is.EqualTo(prompt[..4]), "only the chunk that ran");
        Assert.That(o.AppendedPromptTokens, Is.EqualTo(4), "the outcome says what the sequence holds");
        Assert.That(o.GeneratedTokens, Is.Empty);
    }

    [Test]
    public void CpuBackendPrefillNoticesCancellationBetweenChunks()
    {
        // 16 chunks of 128: uncancelled this takes seconds, so the watcher has time to cancel after the first.
        var config = QwQ.Cuda.Config.ModelConfig.Parse(TestModels.ConfigJson(vocab: 256, maxPositions: 4096, hidden: 64, layers: 2), "c");
        using var backend = new QwQ.Cuda.Inference.CpuReferenceBackend(config, QwQ.Cuda.Model.Reference.CpuWeights.Random(config, 3));
        using var seq = backend.CreateSequence(4096);
        int[] prompt = [.. Enumerable.Range(0, 2048).Select(i => i % 256)];

        using var pre = new CancellationTokenSource();
        pre.Cancel();
        Assert.Throws<OperationCanceledException>(() => seq.Append(prompt, pre.Token));
        Assert.That(seq.Length, Is.Zero, "an already cancelled token runs nothing");

        using var cts = new CancellationTokenSource();
        var watcher = Task.Run(() =>
        {
            while (seq.Length == 0) Thread.SpinWait(100);
            cts.Cancel(); // as soon as the first chunk is in
        });
        Assert.Throws<OperationCanceledException>(() => seq.Append(prompt, cts.Token));
        watcher.Wait();
        int chunk = QwQ.Cuda.Inference.CpuReferenceBackend.PrefillChunk;
        Assert.That(seq.Length, Is.GreaterThanOrEqualTo(chunk).And.LessThan(prompt.Length));
        Assert.That(seq.Length % chunk, Is.Zero, "whole chunks only");
    }

    [Test]
    public void CpuBackendChunkedPrefillEqualsOnePass()
    {
        var config = QwQ.Cuda.Config.ModelConfig.Parse(TestModels.ConfigJson(vocab: 256, maxPositions: 512), "c");
        var weights = TestModels.Weights(config);
        int[] prompt = [.. Enumerable.Range(0, 300).Select(i => (i * 7) % 256)];
        using var seq = new QwQ.Cuda.Inference.CpuReferenceBackend(config, weights).CreateSequence();
        seq.Append(prompt); // 3 chunks
        var chunked = new float[256];
        seq.CopyLastLogits(chunked);
        var onePass = new QwQ.Cuda.Model.Reference.Qwen2CpuModel(config, weights).Forward(prompt);
        Assert.That(chunked, Is.EqualTo(onePass.AsSpan(299 * 256, 256).ToArray()).Within(1e-5f));
    }

    [Test]
    public void PrefillRunsInChunksAndOnlyTheUncachedPart()
    {
        var seq = new ScriptedSequence(1000, 151645);
        seq.Append([1, 2, 3]);
        var o = Run(seq, [1, 2, 3, 4, 5, 6, 7, 8], new GenerationOptions { PrefillChunk = 2 }, out _);
        Assert.That(o.Usage.CachedPromptTokens, Is.EqualTo(3));
        Assert.That(o.Usage.PrefilledTokens, Is.EqualTo(5));
        Assert.That(o.AppendedPromptTokens, Is.EqualTo(5));
        Assert.That(seq.Tokens, Is.EqualTo(new[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
    }

    [Test]
    public void PromptLongerThanTheContextIsAnOptionError()
    {
        var seq = new ScriptedSequence(4, 1);
        var e = Assert.Throws<OptionException>(() => Run(seq, [1, 2, 3, 4, 5], new GenerationOptions(), out _));
        Assert.That(e!.Message, Does.Contain("5 tokens").And.Contain("4").And.Contain("--max-context"));
        Assert.That(seq.Length, Is.Zero);
    }

    [Test]
    public void InvalidOptionsAreRejectedBeforeAnythingRuns()
    {
        var seq = new ScriptedSequence(100, 1);
        Assert.Throws<OptionException>(() => Run(seq, [1], new GenerationOptions { MaxNewTokens = 0 }, out _));
        Assert.Throws<OptionException>(() => new Generator(seq).Run([1], SamplingOptions.Greedy with { TopP = 1.5f }, new GenerationOptions(), Eos, null, null, default));
        Assert.That(seq.Length, Is.Zero);
    }

    [Test]
    public void TimingsAreFilledIn()
    {
        var seq = new ScriptedSequence(100, 1, 2, 3, 151645);
        var o = Run(seq, [5, 6], new GenerationOptions(), out _);
        Assert.That(o.Usage.TimeToFirstToken, Is.GreaterThan(TimeSpan.Zero));
        Assert.That(o.Usage.TotalTime, Is.GreaterThanOrEqualTo(o.Usage.TimeToFirstToken));
        Assert.That(o.Usage.DecodeTokensPerSecond, Is.GreaterThan(0));
        Assert.That(o.Usage.PrefillTokensPerSecond, Is.GreaterThan(0));
    }

    [Test]
    public void CpuBackendEndToEndStopsAndStaysConsistent()
    {
        using var backend = TestModels.Backend(vocab: 256, maxPositions: 64);
        using var seq = backend.CreateSequence(16);
        var gen = new Generator(seq);
        var o = gen.Run([1, 2, 3], SamplingOptions.Greedy, new GenerationOptions(), [], null, null, default);
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.MaxContext));
        Assert.That(seq.Length, Is.EqualTo(16));

        // Reuse: truncate to the prompt and regenerate: greedy gives the same tokens.
        seq.Truncate(2);
        var again = gen.Run([1, 2, 3], SamplingOptions.Greedy, new GenerationOptions { MaxNewTokens = 5 }, [], null, null, default);
        Assert.That(again.GeneratedTokens, Is.EqualTo(o.GeneratedTokens.Take(5)));
        Assert.That(seq.Length, Is.EqualTo(3 + 4));
    }
}

/// <summary><see cref="Generator.RunAsync"/>: the same consumer over a request the scheduler runs.</summary>
public class SchedulerGeneratorTests
{
    private static readonly int[] Prompt = [5, 6, 7, 8];

    private static async Task<(GenerationOutcome Outcome, string Text, int[] Held)> Run(GenerationOptions options)
    {
        using var backend = TestModels.Backend(vocab: 512);
        using var scheduler = new QwQ.Cuda.Batching.BatchScheduler(backend);
        using var seq = backend.CreateSequence();
        var text = new System.Text.StringBuilder();
        var outcome = await new Generator(seq).RunAsync(scheduler, Prompt, SamplingOptions.Greedy, options, [],
            new MapDecoder(id => $"[{id}]"), (_, d) => text.Append(d), default);
        return (outcome, text.ToString(), [.. seq.Tokens]);
    }

    [Test]
    public async Task StopStringCancelsTheRequestAndTheSequenceHoldsOnlyWhatPrecedesIt()
    {
        var (free, freeText, _) = await Run(new GenerationOptions { MaxNewTokens = 12 });
        Assert.That(free.FinishReason, Is.EqualTo(FinishReason.MaxTokens));
        Assert.That(free.GeneratedTokens, Has.Count.EqualTo(12));
        Assert.That(freeText, Is.EqualTo(string.Concat(free.GeneratedTokens.Select(t => $"[{t}]"))));

        string stop = $"[{free.GeneratedTokens[2]}]";
        int first = free.GeneratedTokens.ToList().FindIndex(t => $"[{t}]" == stop);
        var (o, text, held) = await Run(new GenerationOptions { MaxNewTokens = 12, StopStrings = [stop] });
        Assert.That(o.FinishReason, Is.EqualTo(FinishReason.StopString));
        Assert.That(o.StopString, Is.EqualTo(stop));
        Assert.That(o.GeneratedTokens, Is.EqualTo(free.GeneratedTokens.Take(first + 1)));
        Assert.That(text, Is.EqualTo(freeText[..freeText.IndexOf(stop, StringComparison.Ordinal)]), "the stop string is not released");
        Assert.That(held, Is.EqualTo(Prompt.Concat(free.GeneratedTokens.Take(first))), "nothing the scheduler sampled past the stop stays");
        Assert.That((o.AppendedPromptTokens, o.AppendedGeneratedTokens), Is.EqualTo((Prompt.Length, first)));
    }
}

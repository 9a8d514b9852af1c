using QwQ.Cuda.Batching;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>Continuous batching on the CPU reference: every request gets exactly the tokens it gets alone.</summary>
public class BatchSchedulerTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);

    private sealed record Job(int[] Prompt, SamplingOptions Sampling, int MaxNew, int[] Eos);

    private static async Task<(List<int> Streamed, FinishReason Reason)> Collect(GenerationHandle h)
    {
        var streamed = new List<int>();
        await foreach (int t in h.Tokens.ReadAllAsync()) streamed.Add(t);
        return (streamed, await h.Completion);
    }

    private static async Task RunAndCompare(IModelBackend backend, SchedulerOptions options, Job[] jobs)
    {
        var seqs = jobs.Select(_ => backend.CreateSequence()).ToArray();
        using var scheduler = new BatchScheduler(backend, options);
        // Submitted from many threads at once.
        var results = await Task.WhenAll(jobs.Select((j, i) => Task.Run(() =>
            Collect(scheduler.Submit(new GenerationRequest(seqs[i], j.Prompt, j.Sampling, j.MaxNew, j.Eos))))))
            .WaitAsync(Patience);

        using var alone = Backend();
        for (int i = 0; i < jobs.Length; i++)
        {
            var j = jobs[i];
            var expected = GenerateAlone(alone, j.Prompt, j.Sampling, j.MaxNew, j.Eos);
            var (streamed, reason) = results[i];
            Assert.That(streamed, Is.EqualTo(expected), $"request {i}");
            Assert.That(reason, Is.EqualTo(j.Eos.Contains(expected[^1]) ? FinishReason.EndOfSequence : FinishReason.MaxTokens), $"request {i}");
            Assert.That(seqs[i].Tokens, Is.EqualTo(j.Prompt.Concat(expected.SkipLast(1))), $"request {i}: the last sampled token is not appended");
            seqs[i].Dispose();
        }
        var counters = scheduler.Counters;
        TestContext.Out.WriteLine($"{counters}");
        Assert.That(counters.LargestBatch, Is.GreaterThan(1), "requests were meant to share steps");
        Assert.That(counters.Preemptions, Is.EqualTo(0));
    }

    [Test]
    public async Task ConcurrentRequestsGetExactlyWhatTheyGetAlone()
    {
        int[] lengths = [5, 30, 64, 65, 100, 12, 1, 80, 40, 7];
        var jobs = lengths.Select((n, i) => new Job(
            Tokens(n, seed: 200 + i),
            i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = (ulong)(300 + i) },
            MaxNew: 8 + i,
            Eos: [0])).ToArray();
        using var backend = Backend(kvPoolPositions: 16 * 256);
        // Small prefill chunks so prompts are spread over steps, next to other requests' decode rows.
        await RunAndCompare(backend, new SchedulerOptions { PrefillTokensPerStep = 48 }, jobs);
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(0));
    }

    /// <summary>
    /// No step gives the backend more rows than <see cref="SchedulerOptions.MaxRowsPerStep"/> (the CLI sizes the engine's
    /// workspace by it, so a larger step would run in two passes): long prompts prefilling beside requests that decode,
    /// with a small prefill budget so both kinds of row share steps.
    /// </summary>
    [Test]
    public async Task NoStepHasMoreRowsThanMaxRowsPerStep()
    {
        var options = new SchedulerOptions { PrefillTokensPerStep = 40, MaxBatch = 6, MaxSequences = 6 };
        using var inner = Backend(kvPoolPositions: 32 * 64);
        using var backend = new RowCountingBackend(inner);
        int[] lengths = [3, 90, 2, 120, 5, 70, 1, 100];
        var seqs = lengths.Select(_ => backend.CreateSequence()).ToArray();
        using (var scheduler = new BatchScheduler(backend, options))
            await Task.WhenAll(lengths.Select((n, i) => Collect(scheduler.Submit(
                new GenerationRequest(seqs[i], Tokens(n, seed: 600 + i), SamplingOptions.Greedy, 6, []))))).WaitAsync(Patience);
        foreach (var s in seqs) s.Dispose();
        TestContext.Out.WriteLine($"largest step {backend.LargestStep} rows, at most {options.MaxRowsPerStep}");
        Assert.That(backend.LargestStep, Is.LessThanOrEqualTo(options.MaxRowsPerStep));
        Assert.That(backend.LargestStep, Is.GreaterThan(options.PrefillTokensPerStep), "decode rows were meant to ride beside a full prefill budget");
    }

    /// <summary>The CPU reference, counting the rows of its largest step.</summary>
    private sealed class RowCountingBackend(IModelBackend inner) : IModelBackend
    {
        public int LargestStep { get; private set; }
        public global::QwQ.Cuda.Config.ModelConfig Config => inner.Config;
        public string DeviceDescription => inner.DeviceDescription;
        public int MaxContext => inner.MaxContext;
        public KvBlockPool KvPool => inner.KvPool;
        public ISequence CreateSequence(int? maxContext = null) => inner.CreateSequence(maxContext);
        public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
        {
            int rows = 0;
            foreach (var item in items) rows += item.Tokens.Length;
            LargestStep = Math.Max(LargestStep, rows);
            inner.Step(items, ct);
        }
        public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens) => inner.Sample(requests, tokens);
        public void Dispose() { } // the test disposes the inner backend
    }

    [Test]
    public async Task ATinyPoolPreemptsAndResumesWithIdenticalTokens()
    {
        // Each request grows to 90 positions (2 blocks); 4 blocks hold two at a time.
        var jobs = Enumerable.Range(0, 4).Select(i => new Job(
            Tokens(50, seed: 400 + i),
            i == 3 ? new SamplingOptions { Temperature = 1.0f, TopK = 50, Seed = 77 } : SamplingOptions.Greedy,
            MaxNew: 40, Eos: [])).ToArray();
        using var backend = Backend(kvPoolPositions: 4 * 64);
        var seqs = jobs.Select(_ => backend.CreateSequence()).ToArray();
        using var scheduler = new BatchScheduler(backend);
        var handles = jobs.Select((j, i) => scheduler.Submit(new GenerationRequest(seqs[i], j.Prompt, j.Sampling, j.MaxNew, j.Eos))).ToArray();
        var lengths = new int[jobs.Length];
        // A finished request's sequence keeps its blocks until its owner lets go, as a server would right away.
        var results = await Task.WhenAll(handles.Select(async (h, i) =>
        {
            var result = await Collect(h);
            lengths[i] = seqs[i].Length;
            seqs[i].Dispose();
            return result;
        })).WaitAsync(Patience);

        Assert.That(scheduler.Counters.Preemptions, Is.GreaterThan(0), "the pool was meant to run out");
        using var alone = Backend();
        for (int i = 0; i < jobs.Length; i++)
        {
            Assert.That(results[i].Streamed, Is.EqualTo(GenerateAlone(alone, jobs[i].Prompt, jobs[i].Sampling, 40, [])),
                $"request {i}: streamed once each, same as alone");
            Assert.That(results[i].Reason, Is.EqualTo(FinishReason.MaxTokens));
            Assert.That(lengths[i], Is.EqualTo(50 + 39));
        }
        TestContext.Out.WriteLine($"{scheduler.Counters}");
    }

    [Test]
    public async Task SamplesSubmittedTogetherShareTheirPromptsBlocks()
    {
        // Three samples of one prompt wait in the queue together (a slow step keeps the loop busy meanwhile): the
        // first prefills, the others wait that one step and attach its two full blocks instead of computing them.
        int[] prompt = Tokens(130, seed: 510);
        using var inner = Backend();
        using var backend = new Generation.SlowStepBackend(inner, TimeSpan.FromMilliseconds(100));
        using var scheduler = new BatchScheduler(backend);
        using var busy = backend.CreateSequence();
        var running = Collect(scheduler.Submit(new GenerationRequest(busy, Tokens(10, seed: 511), SamplingOptions.Greedy, 3, [])));
        var seqs = Enumerable.Range(0, 3).Select(_ => backend.CreateSequence()).ToArray();
        var handles = seqs.Select((s, k) => scheduler.Submit(new GenerationRequest(s, prompt,
            new SamplingOptions { Temperature = 0.6f, Seed = (ulong)k }, 4, []))).ToArray();
        await Task.WhenAll(handles.Select(Collect));
        await running;
        int held = backend.KvPool.UsedBlocks - backend.KvPool.BlocksFor(busy.Length);
        Assert.That(held, Is.EqualTo(3 + 1 + 1), "3 blocks for the first sample, 1 own block for each other");
        Assert.That(handles.Select(h => h.CachedPromptTokens).Order(), Is.EqualTo(new[] { 0, 128, 128 }), "the others report the attached blocks");
        foreach (var s in seqs) s.Dispose();
    }

    [Test]
    public async Task ARequestWithTheSamePromptReusesCachedBlocks()
    {
        int[] prompt = Tokens(130, seed: 500);
        using var backend = Backend();
        using var scheduler = new BatchScheduler(backend);
        using var first = backend.CreateSequence();
        using var second = backend.CreateSequence();
        var a = await Collect(scheduler.Submit(new GenerationRequest(first, prompt, SamplingOptions.Greedy, 4, [])));
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(3));
        var b = await Collect(scheduler.Submit(new GenerationRequest(second, prompt, SamplingOptions.Greedy, 4, [])));
        Assert.That(b.Streamed, Is.EqualTo(a.Streamed));
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(4), "the two full prompt blocks are shared");
        using var alone = Backend();
        Assert.That(b.Streamed, Is.EqualTo(GenerateAlone(alone, prompt, SamplingOptions.Greedy, 4, [])));
    }

    [Test]
    public async Task PrefixCacheHitsAreReportedOnTheHandle()
    {
        int[] prompt = Tokens(130, seed: 520);
        using var backend = Backend();
        using var scheduler = new BatchScheduler(backend);
        async Task<GenerationHandle> Run(ISequence seq, int[] p)
        {
            var h = scheduler.Submit(new GenerationRequest(seq, p, SamplingOptions.Greedy, 3, []));
            await Collect(h).WaitAsync(Patience);
            return h;
        }
        using var first = backend.CreateSequence();
        using var second = backend.CreateSequence();
        using var other = backend.CreateSequence();
        using var exact = backend.CreateSequence();

        Assert.That((await Run(first, prompt)).CachedPromptTokens, Is.Zero, "nothing is cached before the first request");
        var again = await Run(second, prompt);
        Assert.That(again.CachedPromptTokens, Is.EqualTo(2 * backend.KvPool.BlockSize),
            "the two full blocks are reused; the third holds the last 2 prompt tokens and is computed");
        Assert.That(again.CachedPromptTokens % backend.KvPool.BlockSize, Is.Zero);
        Assert.That(again.CachedPromptTokens, Is.LessThan(prompt.Length));
        Assert.That((await Run(other, Tokens(130, seed: 521))).CachedPromptTokens, Is.Zero, "a different prompt reuses nothing");
        Assert.That((await Run(exact, prompt[..128])).CachedPromptTokens, Is.EqualTo(64),
            "a prompt of exactly two blocks computes its last token, so its second block is not reused");
        // A sequence that already holds tokens attaches nothing: what it held is its owner's to count.
        Assert.That((await Run(first, Tokens(70, seed: 522))).CachedPromptTokens, Is.Zero);
    }

    [Test]
    public async Task ARequestTooBigForThePoolFailsWithThePoolMessage()
    {
        using var backend = Backend(kvPoolPositions: 128);
        using var scheduler = new BatchScheduler(backend);
        using var seq = backend.CreateSequence();
        var h = scheduler.Submit(new GenerationRequest(seq, Tokens(200, seed: 600), SamplingOptions.Greedy, 4, []));
        var e = Assert.ThrowsAsync<KvPoolExhaustedException>(async () => await h.Completion)!;
        Assert.That(e.Message, Does.Contain("the KV cache pool is full: this needs 256 more positions").And.Contain("of its 128 positions are free"));
        Assert.ThrowsAsync<KvPoolExhaustedException>(async () => { await foreach (var _ in h.Tokens.ReadAllAsync()) { } });

        // Growing past the pool while generating fails the same way, keeping what was streamed.
        using var growing = backend.CreateSequence();
        var hg = scheduler.Submit(new GenerationRequest(growing, Tokens(100, seed: 601), SamplingOptions.Greedy, 50, []));
        var streamed = new List<int>();
        var eg = Assert.ThrowsAsync<KvPoolExhaustedException>(async () => { await foreach (int t in hg.Tokens.ReadAllAsync()) streamed.Add(t); })!;
        Assert.That(eg.Message, Does.Contain("of its 128 positions are free"));
        Assert.That(streamed, Has.Count.EqualTo(29), "positions 100..127 appended, the 29th token had no room");
        growing.Dispose();

        // Fits the pool, but a sequence outside the scheduler holds it all: the request waits until it lets go.
        var holder = backend.CreateSequence();
        holder.Append(Tokens(100, seed: 602));
        using var blocked = backend.CreateSequence();
        int[] prompt = Tokens(10, seed: 603);
        var hb = scheduler.Submit(new GenerationRequest(blocked, prompt, SamplingOptions.Greedy, 3, []));
        await Task.Delay(200);
        Assert.That(hb.Completion.IsCompleted, Is.False, "waiting for blocks");
        holder.Dispose();
        var ok = await Collect(hb).WaitAsync(Patience);
        using var alone = Backend();
        Assert.That((ok.Streamed, ok.Reason), Is.EqualTo((GenerateAlone(alone, prompt, SamplingOptions.Greedy, 3, []), FinishReason.MaxTokens)));
    }

    [Test]
    public async Task CancellationEndsTheRequestAndTheSequenceKeepsWhatItAppended()
    {
        using var backend = Backend();
        using var scheduler = new BatchScheduler(backend);
        using var seq = backend.CreateSequence();
        using var cts = new CancellationTokenSource();
        int[] prompt = Tokens(20, seed: 700);
        var h = scheduler.Submit(new GenerationRequest(seq, prompt, SamplingOptions.Greedy, 200, [], cts.Token));
        var streamed = new List<int>();
        await foreach (int t in h.Tokens.ReadAllAsync())
        {
            streamed.Add(t);
            if (streamed.Count == 3) cts.Cancel();
        }
        Assert.That(await h.Completion.WaitAsync(Patience), Is.EqualTo(FinishReason.Cancelled));
        Assert.That(streamed, Has.Count.InRange(3, 199));
        Assert.That(seq.Tokens, Is.EqualTo(prompt.Concat(streamed.SkipLast(1))));

        // A request cancelled before it starts appends nothing.
        using var idle = backend.CreateSequence();
        var never = scheduler.Submit(new GenerationRequest(idle, prompt, SamplingOptions.Greedy, 5, [], cts.Token));
        Assert.That(await never.Completion.WaitAsync(Patience), Is.EqualTo(FinishReason.Cancelled));
        Assert.That(idle.Length, Is.EqualTo(0));
    }

    [Test]
    public void DisposeFailsUnfinishedRequestsAndRefusesNewOnes()
    {
        using var backend = Backend();
        var seqs = Enumerable.Range(0, 3).Select(_ => backend.CreateSequence()).ToArray();
        var scheduler = new BatchScheduler(backend);
        var handles = seqs.Select((s, i) => scheduler.Submit(new GenerationRequest(s, Tokens(5, seed: 800 + i), SamplingOptions.Greedy, 250, []))).ToArray();
        scheduler.Dispose();
        foreach (var h in handles)
        {
            Assert.That(h.Completion.IsCompleted, Is.True, "Dispose waited for the loop");
            Assert.ThrowsAsync<ObjectDisposedException>(async () => await h.Completion);
        }
        Assert.Throws<ObjectDisposedException>(() => scheduler.Submit(new GenerationRequest(seqs[0], [1], SamplingOptions.Greedy, 1, [])));
        scheduler.Dispose();
        foreach (var s in seqs) s.Dispose();
    }

    [Test]
    public void SubmitRejectsBadRequests()
    {
        using var backend = Backend();
        using var scheduler = new BatchScheduler(backend);
        using var seq = backend.CreateSequence();
        using var small = backend.CreateSequence(8);
        var greedy = SamplingOptions.Greedy;
        Assert.Throws<OptionException>(() => scheduler.Submit(new GenerationRequest(seq, [], greedy, 4, [])));
        Assert.Throws<OptionException>(() => scheduler.Submit(new GenerationRequest(seq, [256], greedy, 4, [])));
        Assert.Throws<OptionException>(() => scheduler.Submit(new GenerationRequest(seq, [1], greedy, 0, [])));
        Assert.Throws<OptionException>(() => scheduler.Submit(new GenerationRequest(small, Tokens(9, 1), greedy, 4, [])));
        Assert.Throws<OptionException>(() => scheduler.Submit(new GenerationRequest(seq, [1], new SamplingOptions { TopP = 0 }, 4, [])));
        var h = scheduler.Submit(new GenerationRequest(seq, Tokens(5, 2), greedy, 100, []));
        Assert.Throws<InvalidOperationException>(() => scheduler.Submit(new GenerationRequest(seq, [1], greedy, 4, [])));
        Assert.Throws<OptionException>(() => new BatchScheduler(backend, new SchedulerOptions { MaxBatch = 4, MaxSequences = 8 }));
        Assert.That(h.Completion.Wait(Patience), Is.True);
    }
}

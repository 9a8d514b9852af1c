using System.Diagnostics;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Benchmarking;

/// <summary>
/// One adaptive-YaRN switch under <see cref="BatchScheduler"/>: a sequence of <see cref="Context"/> positions (the
/// switch position) takes one more token while <see cref="Decoding"/> others decode beside it, with the recompute in
/// chunks of <see cref="ChunkTokens"/> (the scheduler's prefill budget; a chunk past the context is the whole recompute
/// in one step). <see cref="SwitchMs"/>: from submitting that token until the crossing sequence has its next token.
/// <see cref="LongestWaitMs"/> / <see cref="MedianWaitMs"/>: the gaps between consecutive tokens of the others from the
/// submit until the switch ended (what a streaming user sees), against <see cref="DecodeWaitMs"/>, their median gap
/// before it.
/// </summary>
public sealed record RopeSwitchResult(int Context, int Decoding, int ChunkTokens, double SwitchMs, double LongestWaitMs,
    double MedianWaitMs, double DecodeWaitMs);

/// <summary>Measures <see cref="RopeSwitchResult"/>: the adaptive switch's recompute spread over steps, and in one step.</summary>
internal static class RopeSwitchBenchmark
{
    private const int Decoding = 8, DecodeContext = 1024, TokensBefore = 8;

    public static IReadOnlyList<RopeSwitchResult> Run(CudaBackend backend, Func<int, int[]> tokens, Action<string> log)
    {
        if (backend.AdaptiveSwitchPosition is not int at)
        {
            log("rope switch: skipped, the engine does not run adaptive rope scaling (a config with YaRN rope_scaling does by default, e.g. --synthetic qwq-32b-yarn)");
            return [];
        }
        long positions = at + 16 + Decoding * (DecodeContext + 4096L);
        if (at + 16 > backend.MaxContext || positions > backend.Plan.KvPoolPositions)
        {
            log($"rope switch: skipped, a sequence at the switch ({at}) and {Decoding} others need {positions} positions; the pool holds {backend.Plan.KvPoolPositions}");
            return [];
        }
        var results = new List<RopeSwitchResult>();
        foreach (int chunk in new[] { new SchedulerOptions().PrefillTokensPerStep, at + 1 })
        {
            var r = Once(backend, at, chunk, tokens);
            results.Add(r);
            log($"rope switch at {at} beside {Decoding} decoding, recompute in chunks of {chunk}: switch {r.SwitchMs:F0} ms; " +
                $"the others' longest wait for a token {r.LongestWaitMs:F0} ms (median {r.MedianWaitMs:F1} ms, {r.DecodeWaitMs:F1} ms before the switch)");
        }
        return results;
    }

    private static RopeSwitchResult Once(CudaBackend backend, int at, int chunk, Func<int, int[]> tokens)
    {
        var greedy = new SamplingOptions { Temperature = 0 };
        using var crossing = backend.CreateSequence(at + 16);
        backend.Step([new SequenceChunk(crossing, tokens(at), FinalLength: at)]); // plain RoPE, at the switch
        var others = Enumerable.Range(0, Decoding).Select(_ => backend.CreateSequence()).ToArray();
        using var stop = new CancellationTokenSource();
        var clock = Stopwatch.StartNew();
        try
        {
            using var scheduler = new BatchScheduler(backend, new SchedulerOptions { PrefillTokensPerStep = chunk });
            var stamps = others.Select(_ => new List<double>()).ToArray();
            int started = 0;
            var readers = others.Select((s, i) => Task.Run(async () =>
            {
                var h = scheduler.Submit(new GenerationRequest(s, tokens(DecodeContext), greedy, 4000, [], stop.Token));
                await foreach (int _ in h.Tokens.ReadAllAsync())
                {
                    lock (stamps[i]) stamps[i].Add(clock.Elapsed.TotalMilliseconds);
                    if (stamps[i].Count == TokensBefore) Interlocked.Increment(ref started);
                }
                await h.Completion;
            })).ToArray();
            // every other request decoding (graphs captured), unless one failed: its exception ends the run
            SpinWait.SpinUntil(() => Volatile.Read(ref started) >= Decoding || readers.Any(t => t.IsCompleted), TimeSpan.FromMinutes(5));
            if (Volatile.Read(ref started) < Decoding)
            {
                stop.Cancel();
                Task.WaitAll(readers);
                throw new InvalidOperationException($"rope switch: the {Decoding} decoding requests did not start within 5 minutes");
            }

            double submitted = clock.Elapsed.TotalMilliseconds;
            var h = scheduler.Submit(new GenerationRequest(crossing, tokens(1), greedy, 1, []));
            h.Completion.GetAwaiter().GetResult();
            double ended = clock.Elapsed.TotalMilliseconds;
            Thread.Sleep(50); // a few more tokens each: the gap that spans the switch's end is counted whole
            stop.Cancel();
            Task.WaitAll(readers);

            var during = new List<double>();
            var before = new List<double>();
            foreach (var list in stamps)
                for (int k = 1; k < list.Count; k++)
                {
                    double gap = list[k] - list[k - 1];
                    if (list[k] > submitted && list[k - 1] < ended) during.Add(gap);
                    else if (list[k] <= submitted && k >= 2) before.Add(gap); // the first gap may hold an admission's prefill
                }
            return new RopeSwitchResult(at, Decoding, chunk, ended - submitted, during.Max(), Timing.Median(during), Timing.Median(before));
        }
        finally
        {
            foreach (var s in others) s.Dispose();
        }
    }
}

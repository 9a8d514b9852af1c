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
/// before it, and <see cref="AfterWaitMs"/>, after it (the crossed sequence then decodes in YaRN beside the others in
/// plain RoPE: one pass a step, each row in its own rope). <see cref="Method"/>: recompute or rerotate (<see cref="Engine.RopeSwitchMethod"/>).
/// <see cref="AloneSwitchStepMs"/>: the same sequence alone, the step that crosses (the switch and one decode row, with a
/// sample) against <see cref="AloneStepMs"/>, the step after it: their difference is what the switch itself costs.
/// </summary>
public sealed record RopeSwitchResult(int Context, int Decoding, int ChunkTokens, double SwitchMs, double LongestWaitMs,
    double MedianWaitMs, double DecodeWaitMs, string Method = "recompute", double AloneSwitchStepMs = 0, double AloneStepMs = 0,
    double AfterWaitMs = 0);

/// <summary>Measures <see cref="RopeSwitchResult"/>: the adaptive switch's recompute spread over steps, and in one step.</summary>
internal static class RopeSwitchBenchmark
{
    // 7 beside the crossing one: 8 rows, the same padded batch (and captured graph) before, during and after the switch,
    // so no graph capture falls inside the timing
    private const int Decoding = 7, DecodeContext = 1024, TokensBefore = 8;

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
            log($"rope switch: skipped, a sequence at the switch ({at}) and {Decoding} others need {positions} positions; the pool holds " +
                $"{backend.Plan.KvPoolPositions} and a sequence at most {backend.MaxContext}");
            return [];
        }
        var (aloneSwitch, aloneStep) = Alone(backend, at, tokens);
        log($"rope switch at {at}, the sequence alone: the step that crosses {aloneSwitch:F2} ms, the next {aloneStep:F2} ms " +
            $"(the switch: {aloneSwitch - aloneStep:F2} ms)");
        var results = new List<RopeSwitchResult>();
        string method = backend.RopeSwitch.ToString().ToLowerInvariant();
        // a re-rotation takes no chunks: once, at the scheduler's default budget
        int[] chunks = backend.RopeSwitch == RopeSwitchMethod.Recompute ? [new SchedulerOptions().PrefillTokensPerStep, at + 1] : [new SchedulerOptions().PrefillTokensPerStep];
        foreach (int chunk in chunks)
        {
            var r = Once(backend, at, chunk, tokens) with { Method = method, AloneSwitchStepMs = aloneSwitch, AloneStepMs = aloneStep };
            results.Add(r);
            log($"rope switch at {at} beside {Decoding} decoding, {method}{(backend.RopeSwitch == RopeSwitchMethod.Recompute ? $" in chunks of {chunk}" : "")}: switch {r.SwitchMs:F1} ms; " +
                $"the others' longest wait for a token {r.LongestWaitMs:F0} ms (median {r.MedianWaitMs:F1} ms, {r.DecodeWaitMs:F1} ms before the switch, " +
                $"{r.AfterWaitMs:F1} ms after it, the crossed sequence decoding beside them)");
        }
        return results;
    }

    /// <summary>One sequence at the switch, alone: the step that takes it past (with a greedy sample), then the next.</summary>
    private static (double Switch, double Step) Alone(CudaBackend backend, int at, Func<int, int[]> tokens)
    {
        var greedy = new SamplingOptions { Temperature = 0 };
        using var seq = backend.CreateSequence(at + 16);
        backend.Step([new SequenceChunk(seq, tokens(at), FinalLength: at)]);
        int token = seq.Sample(greedy, 0);
        var sw = Stopwatch.StartNew();
        backend.Step([new SequenceChunk(seq, new[] { token })]);
        token = seq.Sample(greedy, 1); // waits for the step
        double crossing = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        backend.Step([new SequenceChunk(seq, new[] { token })]);
        seq.Sample(greedy, 2);
        return (crossing, sw.Elapsed.TotalMilliseconds);
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
            // the crossing sequence takes 15 tokens (its capacity is the switch + 16): past the switch it decodes in YaRN beside the others
            var h = scheduler.Submit(new GenerationRequest(crossing, tokens(1), greedy, 15, []));
            double ended = 0;
            var reader = Task.Run(async () =>
            {
                await foreach (int _ in h.Tokens.ReadAllAsync())
                    if (ended == 0) ended = clock.Elapsed.TotalMilliseconds;
            });
            h.Completion.GetAwaiter().GetResult();
            reader.GetAwaiter().GetResult();
            stop.Cancel();
            Task.WaitAll(readers);

            double done = clock.Elapsed.TotalMilliseconds;
            var during = new List<double>();
            var before = new List<double>();
            var after = new List<double>();
            foreach (var list in stamps)
                for (int k = 1; k < list.Count; k++)
                {
                    double gap = list[k] - list[k - 1];
                    if (list[k] > submitted && list[k - 1] < ended) during.Add(gap);
                    else if (list[k - 1] >= ended && list[k] <= done) after.Add(gap);
                    else if (list[k] <= submitted && k >= 2) before.Add(gap); // the first gap may hold an admission's prefill
                }
            return new RopeSwitchResult(at, Decoding, chunk, ended - submitted, during.Max(), Timing.Median(during), Timing.Median(before))
            {
                AfterWaitMs = after.Count > 0 ? Timing.Median(after) : double.NaN,
            };
        }
        finally
        {
            foreach (var s in others) s.Dispose();
        }
    }
}

using System.Diagnostics;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Benchmarking;

/// <summary>What <c>qwq bench</c> measures.</summary>
public sealed record BenchSettings
{
    // The long-context issue's lengths: prefill at 16k and 32k, decode at 32k, 64k and 128k where memory allows (past the
    // sequence limit a run names each skipped length: Unmeasurable). "128k" is 131,008: a decode context needs its steps
    // on top, and the default 64 steps from 131,008 end at QwQ's last position, 131,072.
    public int[] PrefillLengths { get; init; } = [512, 2048, 16384, 32768];
    public int[] DecodeContexts { get; init; } = [1024, 16384, 32768, 65536, 131072 - 64];
    public int DecodeSteps { get; init; } = 64;
    public int TtftPromptTokens { get; init; } = 64;
    public int Repeats { get; init; } = 3;
    /// <summary>Batch sizes for the batched decode figures (each at every decode context that fits the pool); empty: none.</summary>
    public int[] Batches { get; init; } = [];
    /// <summary>
    /// Also time steps kernel by kernel (<see cref="StepProfile"/>): the longest measured prefill, a decode step of batch 1
    /// at the first decode context, and one of the largest of <see cref="Batches"/> at the first context where that batch runs.
    /// </summary>
    public bool ProfileStep { get; init; }
    /// <summary>
    /// Batches whose rows decode at different contexts, one context per row (e.g. one at 32,768 beside seven at 1,024:
    /// a long reasoning trace among short ones), each timed like <see cref="Batches"/> at its own contexts; empty: none.
    /// </summary>
    public IReadOnlyList<int[]> MixedBatches { get; init; } = [];
    /// <summary>
    /// Also time an adaptive-YaRN switch under the batch scheduler (<see cref="RopeSwitchResult"/>): the recompute in
    /// prefill-budget chunks and in one step. Needs a config with YaRN (e.g. qwq-32b-yarn).
    /// </summary>
    public bool RopeSwitch { get; init; }
}

public sealed record PrefillResult(int Tokens, double Ms, double TokensPerSecond, double FloorMs, double PercentOfFloor);
public sealed record DecodeResult(int Context, double MsPerToken, double TokensPerSecond, double BytesPerToken,
    double GBPerSecond, double FloorMs, double PercentOfFloor);
/// <param name="FloorMs">The weights read once or the prompt's FLOPs, whichever takes longer (null in results written before it).</param>
public sealed record TtftResult(int PromptTokens, double Ms, double? FloorMs = null);
public sealed record SampledDecodeResult(int Context, string Sampling, double MsPerToken, double TokensPerSecond);

/// <summary>
/// One figure with every condition it was measured under, so runs compare by script: what was measured
/// (prefill, decode, ttft), the batch, the context (decode) or tokens (prefill), weight and KV-cache kinds, tensor
/// parallelism, whether kernels overlapped their predecessors (programmatic launch), the aggregate tokens per second,
/// the time per step and its floor; prefill figures also name the GEMM the layer products ran on
/// (<see cref="CudaBackend.PrefillGemmPath"/>: e.g. "fp8 cuBLASLt" against "dequantized to bf16 cuBLAS") and the
/// attention kernel (<see cref="CudaBackend.PrefillAttentionPath"/>: "wgmma sm_90a" against "mma.sync") and the most rows
/// one step took (<see cref="PrefillChunk"/>, the memory plan's: a longer prompt ran in chunks of it). A batch whose
/// rows decode at different contexts names them in <see cref="Contexts"/> (<see cref="MixedContexts"/>, e.g.
/// "32768+7x1024") and has no single <see cref="Context"/>.
/// </summary>
public sealed record BenchFigure(string Kind, int Batch, int? Context, int? Tokens, string Weights, int TensorParallel,
    string KvCache, double TokensPerSecond, double MsPerStep, double? FloorMs, double? PercentOfFloor, bool ProgrammaticLaunch = false,
    string? PrefillGemm = null, string? PrefillAttention = null, string? Contexts = null, int? PrefillChunk = null)
{
    /// <summary>
    /// Per-row decode contexts written compactly, in the order given: runs of equal contexts as "NxC", joined by "+"
    /// ([32768, 1024 × 7] → "32768+7x1024"). <c>qwq bench --decode-mixed</c> reads the same form.
    /// </summary>
    public static string MixedContexts(IReadOnlyList<int> contexts)
    {
        var parts = new List<string>();
        for (int i = 0; i < contexts.Count;)
        {
            int j = i;
            while (j < contexts.Count && contexts[j] == contexts[i]) j++;
            parts.Add(j - i == 1 ? $"{contexts[i]}" : $"{j - i}x{contexts[i]}");
            i = j;
        }
        return string.Join('+', parts);
    }
}

/// <summary>
/// One tensor-parallel all-reduce of <see cref="Rows"/> × hidden fp32, as decode runs it (in a CUDA graph): our
/// one-shot kernel (null when off) against NCCL in the same run, and what a token's 2 per layer cost with the faster.
/// </summary>
public sealed record AllReduceResult(int Rows, double? OneShotUs, double NcclUs, double MsPerToken);

/// <summary>
/// <see cref="WeightBytes"/>: per GPU (with tensor parallel each holds its share and the whole embedding).
/// <see cref="Kernels"/>: which PTX ran (<c>PtxLibrary.KernelsIdentity</c>: embedded or a QWQ_PTX_DIR, and a hash),
/// so that <c>qwq bench compare</c> can tell a kernel A/B whose arms ran the same kernels.
/// </summary>
public sealed record BenchReport(
    string Date, string Gpu, string Commit, string Model, long WeightBytes, int MaxContext,
    DeviceCeilings Ceilings, IReadOnlyList<PrefillResult> Prefill, IReadOnlyList<DecodeResult> Decode,
    SampledDecodeResult? SampledDecode, TtftResult Ttft, IReadOnlyList<BenchFigure> Figures,
    int TensorParallel = 1, IReadOnlyList<AllReduceResult>? AllReduce = null, StepProfile? Profile = null, string? PrefillGemm = null,
    StepProfile? BatchProfile = null, StepProfile? PrefillProfile = null, IReadOnlyList<RopeSwitchResult>? RopeSwitch = null,
    string? Kernels = null);

/// <summary>
/// End-to-end timings of the engine at batch 1, each beside its floor: decode against bytes read per token over
/// the measured copy bandwidth, prefill against FLOPs over the measured GEMM rate. Times are host wall clock
/// around whole steps (sampling and the token read-back included), which is what a user sees. With tensor parallel
/// over N GPUs the floors are per GPU (each reads its share of the bytes and does 1/N of the FLOPs, at the first GPU's
/// measured rates), and the all-reduce is timed on its own, ours against NCCL's.
/// </summary>
public static class ModelBenchmark
{
    public static BenchReport Run(CudaBackend backend, BenchSettings settings, string commit, Action<string> log)
    {
        var c = backend.Config;
        var ceilings = DeviceCeilings.Measure(backend.Stream);
        log($"ceilings: copy {ceilings.CopyBytesPerSecond / 1e12:F2} TB/s, bf16 GEMM {ceilings.GemmFlopsPerSecond / 1e12:F0} TFLOP/s");
        string kernels = Native.PtxLibrary.KernelsIdentity();
        log($"kernels: {kernels}");
        string prefillGemm = backend.PrefillGemmPath;
        log($"prefill products (over 128 rows): {prefillGemm}");
        string prefillAttention = backend.PrefillAttentionPath;
        log($"prefill attention: {prefillAttention}");
        log($"prefill chunk: {backend.Plan.PrefillChunk} rows a step");
        int tp = backend.TensorParallel;
        var allReduce = new List<AllReduceResult>();
        if (tp > 1)
            foreach (int rows in new[] { 1 }.Concat(settings.Batches).Distinct().Where(r => r <= backend.Plan.PrefillChunk))
            {
                var (oneShot, nccl) = backend.MeasureAllReduce(rows);
                double perToken = 2.0 * c.NumHiddenLayers * Math.Min(oneShot ?? double.MaxValue, nccl) / 1e3;
                allReduce.Add(new AllReduceResult(rows, oneShot, nccl, perToken));
                log($"all-reduce of {rows,3} row(s) over {tp} GPUs: one-shot {(oneShot is double o ? $"{o:F1} µs" : "off")}, NCCL {nccl:F1} µs; " +
                    $"{2 * c.NumHiddenLayers} per token: {perToken:F2} ms");
            }
        int need = Math.Max(settings.PrefillLengths.DefaultIfEmpty(0).Max(), settings.DecodeContexts.DefaultIfEmpty(0).Max() + settings.DecodeSteps);
        int capacity = Math.Min(backend.MaxContext, need + 1);
        foreach (string skipped in Unmeasurable(settings, capacity, backend.MaxContext)) log(skipped);
        using var seq = backend.CreateSequence(capacity);
        var rng = new Random(42);
        int[] Tokens(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(0, Math.Min(c.VocabSize, 151643))).ToArray();
        var greedy = new SamplingOptions { Temperature = 0 };

        // warm-up: module JIT, cuBLAS heuristics, graph capture
        seq.Append(Tokens(Math.Min(256, capacity - 4)));
        for (int i = 0; i < 3; i++) seq.Append([seq.Sample(greedy, i)]);
        seq.Truncate(0);

        var prefill = new List<PrefillResult>();
        foreach (int n in settings.PrefillLengths.Where(n => n <= capacity))
        {
            var times = new List<double>();
            for (int r = 0; r < settings.Repeats; r++)
            {
                int[] prompt = Tokens(n);
                seq.Truncate(0);
                var sw = Stopwatch.StartNew();
                seq.Append(prompt);
                seq.Sample(greedy, 0); // waits for the prefill to finish
                times.Add(sw.Elapsed.TotalMilliseconds);
            }
            double ms = Timing.Median(times);
            double floor = PrefillFlops(backend, n) / tp / ceilings.GemmFlopsPerSecond * 1e3;
            prefill.Add(new PrefillResult(n, ms, n / (ms / 1e3), floor, 100 * floor / ms));
            log($"prefill {n,6} tokens: {ms,8:F1} ms  {n / (ms / 1e3),8:F0} tok/s  (floor {floor:F1} ms, {100 * floor / ms:F0}%)");
        }

        StepProfile? prefillProfile = null;
        if (settings.ProfileStep && prefill.Count > 0)
        {
            // The longest measured prompt, from position 0, kernel by kernel (cuBLAS products included): where prefill's
            // time over its GEMM floor goes. One pass per PrefillChunk rows, each ~1,100 launches.
            var longest = prefill[^1];
            seq.Truncate(0);
            int passes = (longest.Tokens + backend.Plan.PrefillChunk - 1) / backend.Plan.PrefillChunk;
            var launches = backend.ProfileStep([new SequenceChunk(seq, Tokens(longest.Tokens))], capacity: 2048 * passes + 1024);
            seq.Truncate(0);
            prefillProfile = StepProfile.Summarize(1, 0, longest.Ms, launches, longest.Tokens);
            LogProfile(prefillProfile, log);
        }

        var decode = new List<DecodeResult>();
        SampledDecodeResult? sampled = null;
        foreach (int ctx in settings.DecodeContexts.Where(x => x + settings.DecodeSteps <= capacity))
        {
            double ms = DecodeMs(backend, seq, Tokens(ctx), greedy, settings.DecodeSteps);
            double bytes = DecodeBytesPerToken(backend, ctx + settings.DecodeSteps / 2);
            double floor = bytes / ceilings.CopyBytesPerSecond * 1e3;
            decode.Add(new DecodeResult(ctx, ms, 1e3 / ms, bytes, bytes / (ms / 1e3) / 1e9, floor, 100 * floor / ms));
            log($"decode at {ctx,6}: {ms,7:F2} ms/token  {1e3 / ms,6:F1} tok/s  {bytes / (ms / 1e3) / 1e9,7:F0} GB/s  (floor {floor:F2} ms, {100 * floor / ms:F0}%)");
            if (sampled is null)
            {
                // what a user runs: QwQ's recommended sampling, the sampler on the GPU every step
                var qwq = SamplingOptions.FromGenerationConfig(0.6f, 0.95f, 40, 1.0f) with { Seed = 1 };
                double sms = DecodeMs(backend, seq, Tokens(ctx), qwq, settings.DecodeSteps, reusePrefix: true);
                sampled = new SampledDecodeResult(ctx, "T=0.6, top_p=0.95, top_k=40", sms, 1e3 / sms);
                log($"decode at {ctx,6} with QwQ sampling: {sms,7:F2} ms/token  {1e3 / sms,6:F1} tok/s");
            }
        }

        StepProfile? profile = null;
        if (settings.ProfileStep && decode.Count > 0)
        {
            seq.Truncate(0);
            backend.Step([new SequenceChunk(seq, Tokens(decode[0].Context), FinalLength: decode[0].Context + 3)]); // + 3: the rope of the profiled steps
            int token = seq.Sample(greedy, 0);
            LaunchTimer.Launch[][] launches = [];
            for (int i = 0; i < 2; i++) // the second: the first eager decode step may still load something
            {
                launches = backend.ProfileStep([new SequenceChunk(seq, new[] { token })]);
                token = seq.Sample(greedy, i + 1);
            }
            profile = StepProfile.Summarize(1, decode[0].Context, decode[0].MsPerToken, launches);
            LogProfile(profile, log);
        }

        var ttfts = new List<double>();
        for (int r = 0; r < Math.Max(3, settings.Repeats); r++)
        {
            int[] prompt = Tokens(settings.TtftPromptTokens);
            seq.Truncate(0);
            var sw = Stopwatch.StartNew();
            seq.Append(prompt);
            seq.Sample(greedy, 0);
            ttfts.Add(sw.Elapsed.TotalMilliseconds);
        }
        // Its floor: the prompt's one pass reads every weight once and does the prompt's FLOPs; the two overlap, so the
        // larger bounds it (a 64-token prompt is bound by the bytes).
        double ttftFloor = Math.Max(DecodeBytesPerToken(backend, settings.TtftPromptTokens) / ceilings.CopyBytesPerSecond,
            PrefillFlops(backend, settings.TtftPromptTokens) / tp / ceilings.GemmFlopsPerSecond) * 1e3;
        var ttft = new TtftResult(settings.TtftPromptTokens, Timing.Median(ttfts), ttftFloor);
        log($"time to first token ({settings.TtftPromptTokens}-token prompt): {ttft.Ms:F1} ms (floor {ttftFloor:F1} ms, {100 * ttftFloor / ttft.Ms:F0}%); host time enqueuing its step: " +
            string.Join(", ", backend.LastEnqueueMs.Select((ms, r) => $"{(tp > 1 ? $"GPU {r} " : "")}{ms:F1} ms")));

        var figures = new List<BenchFigure>();
        BenchFigure Figure(string kind, int batch, int? context, int? tokens, double tokPerS, double ms, double? floor) =>
            new(kind, batch, context, tokens, MemoryTable.KindName(backend.Weights.LinearKind), tp, backend.KvCache.ToString().ToLowerInvariant(), tokPerS, ms, floor,
                floor is double f ? 100 * f / ms : null, backend.ProgrammaticLaunch);
        figures.AddRange(prefill.Select(p => Figure("prefill", 1, null, p.Tokens, p.TokensPerSecond, p.Ms, p.FloorMs) with { PrefillGemm = prefillGemm, PrefillAttention = prefillAttention, PrefillChunk = backend.Plan.PrefillChunk }));
        figures.AddRange(decode.Select(d => Figure("decode", 1, d.Context, null, d.TokensPerSecond, d.MsPerToken, d.FloorMs)));
        figures.Add(Figure("ttft", 1, null, ttft.PromptTokens, ttft.PromptTokens / (ttft.Ms / 1e3), ttft.Ms, ttft.FloorMs));
        seq.Dispose(); // the batched figures need the pool
        // One batch's decode (row b at contexts[b]) timed, and its floor: the weights once and every row's KV at its mean
        // context over the timed steps, over the copy bandwidth.
        (double Ms, double FloorMs) MeasureBatch(int[] contexts, Action<SequenceChunk[]>? profileStep = null)
        {
            double ms = BatchDecodeMs(backend, contexts, settings.DecodeSteps, Tokens, profileStep);
            double bytes = DecodeBytesPerToken(backend, 0) + contexts.Sum(x => (double)(x + settings.DecodeSteps / 2)) * backend.Plan.KvBytesPerToken;
            return (ms, bytes / ceilings.CopyBytesPerSecond * 1e3);
        }
        void LogBatch(int batch, string at, double ms, double floor) =>
            log($"decode batch {batch,3} at {at}: {ms,7:F2} ms/step  {batch * 1e3 / ms,8:F1} tok/s aggregate  (floor {floor:F2} ms, {batch * 1e3 / floor:F0} tok/s; {100 * floor / ms:F0}%)");

        StepProfile? batchProfile = null;
        int profiledBatch = settings.ProfileStep && settings.Batches.Length > 0 ? settings.Batches.Max() : 0;
        foreach (int batch in settings.Batches)
            foreach (int ctx in settings.DecodeContexts)
            {
                if ((long)batch * (ctx + settings.DecodeSteps + 2 + AttentionOpsBlock) > backend.Plan.KvPoolPositions) // + 2: the profiled steps
                {
                    log($"batch {batch} at {ctx}: skipped, the pool holds {backend.Plan.KvPoolPositions} positions");
                    continue;
                }
                bool profileThis = batch == profiledBatch && batchProfile is null;
                LaunchTimer.Launch[][]? launches = null;
                var (ms, floor) = MeasureBatch(Enumerable.Repeat(ctx, batch).ToArray(), profileThis ? items => launches = backend.ProfileStep(items) : null);
                figures.Add(Figure("decode", batch, ctx, null, batch * 1e3 / ms, ms, floor));
                LogBatch(batch, $"{ctx,6}", ms, floor);
                if (launches is not null)
                {
                    batchProfile = StepProfile.Summarize(batch, ctx, ms, launches);
                    LogProfile(batchProfile, log);
                }
            }

        foreach (int[] contexts in settings.MixedBatches)
        {
            string label = BenchFigure.MixedContexts(contexts);
            long positions = contexts.Sum(x => (long)x + settings.DecodeSteps + 2 + AttentionOpsBlock);
            if (positions > backend.Plan.KvPoolPositions || contexts.Max() + settings.DecodeSteps + 8 > backend.MaxContext)
            {
                log($"batch {label}: skipped, it needs {positions} positions (one sequence up to {contexts.Max() + settings.DecodeSteps + 8}); " +
                    $"the pool holds {backend.Plan.KvPoolPositions}, a sequence at most {backend.MaxContext}");
                continue;
            }
            var (ms, floor) = MeasureBatch(contexts);
            figures.Add(Figure("decode", contexts.Length, null, null, contexts.Length * 1e3 / ms, ms, floor) with { Contexts = label });
            LogBatch(contexts.Length, label, ms, floor);
        }

        IReadOnlyList<RopeSwitchResult>? ropeSwitch = settings.RopeSwitch ? RopeSwitchBenchmark.Run(backend, Tokens, log) : null;

        return new BenchReport(DateTime.UtcNow.ToString("yyyy-MM-dd"), tp > 1 ? $"{tp}x {backend.Context.DeviceName}" : backend.Context.DeviceName, commit,
            $"{c.NumHiddenLayers}L h{c.HiddenSize} {c.NumAttentionHeads}/{c.NumKeyValueHeads} heads", backend.Weights.Bytes,
            backend.MaxContext, ceilings, prefill, decode, sampled, ttft, figures, tp, allReduce, profile, prefillGemm, batchProfile,
            prefillProfile, ropeSwitch, kernels);
    }

    private static void LogProfile(StepProfile profile, Action<string> log)
    {
        if (profile.PrefillTokens > 0)
        {
            log($"profiled prefill of {profile.PrefillTokens} tokens, GPU 0: {profile.Gpus[0].SpanUs / 1e3:F1} ms from first kernel to last, " +
                $"{profile.Gpus[0].KernelUs / 1e3:F1} ms inside kernels and products (measured prefill: {profile.GraphMsPerStep:F1} ms); by kernel: " +
                string.Join(", ", profile.ByKernel().Take(10).Select(k => $"{k.Kernel} {k.TotalUs / 1e3:F1} ms")));
            return;
        }
        foreach (var g in profile.Gpus)
            log($"profiled step, batch {profile.Batch}, GPU {g.Gpu}: {g.SpanUs / 1e3:F2} ms from first kernel to last, {g.KernelUs / 1e3:F2} ms inside kernels " +
                $"(graph replay: {profile.GraphMsPerStep:F2} ms); most: " +
                string.Join(", ", g.Kernels.Take(4).Select(k => $"{k.Kernel} {k.Launches}× {k.MeanUs:F1} µs")));
    }

    private const int AttentionOpsBlock = Kernels.AttentionOps.KvBlockSize;

    /// <summary>
    /// One sequence per entry of <paramref name="contexts"/>, prefilled to that many positions (equal for a plain batch,
    /// different for a mixed one), then
    /// <paramref name="steps"/> batched decode steps timed (one forward over all rows + a greedy sample for each):
    /// milliseconds per step, which is each sequence's ms/token. With <paramref name="profile"/>, two more steps of the
    /// same rows are handed to it after the timed ones (the second is the one kept: the first eager step may still load
    /// something).
    /// </summary>
    private static double BatchDecodeMs(CudaBackend backend, int[] contexts, int steps, Func<int, int[]> tokens,
        Action<SequenceChunk[]>? profile = null)
    {
        var greedy = new SamplingOptions { Temperature = 0 };
        int batch = contexts.Length;
        var seqs = Enumerable.Range(0, batch).Select(_ => backend.CreateSequence()).ToArray();
        try
        {
            // in the rope of the longest the rows get (adaptive rope scaling): no switch inside the timed steps
            backend.Step(seqs.Select((s, b) => new SequenceChunk(s, tokens(contexts[b]), FinalLength: contexts[b] + steps + 4)).ToArray());
            var next = new int[batch];
            var draws = new SampleRequest[batch];
            void SampleAll(int step)
            {
                for (int b = 0; b < batch; b++) draws[b] = new SampleRequest(seqs[b], greedy, step);
                backend.Sample(draws, next);
                for (int b = 0; b < batch; b++)
                    if (next[b] == SampleRequest.NoToken) seqs[b].Sample(greedy, step); // NaN logits: throws the reason
            }
            SampleAll(0);
            var items = new SequenceChunk[batch];
            void StepAll(int i)
            {
                for (int b = 0; b < batch; b++) items[b] = new SequenceChunk(seqs[b], new[] { next[b] });
                backend.Step(items);
                SampleAll(i + 1);
            }
            StepAll(0); // captures this batch size's graph
            var sw = Stopwatch.StartNew();
            for (int i = 1; i <= steps; i++) StepAll(i);
            double ms = sw.Elapsed.TotalMilliseconds / steps;
            if (profile is not null)
                for (int i = 0; i < 2; i++)
                {
                    for (int b = 0; b < batch; b++) items[b] = new SequenceChunk(seqs[b], new[] { next[b] });
                    profile(items);
                    SampleAll(steps + 1 + i);
                }
            return ms;
        }
        finally
        {
            foreach (var s in seqs) s.Dispose();
        }
    }

    /// <summary>Prefills <paramref name="prompt"/>, then times <paramref name="steps"/> decode steps (sample + forward).</summary>
    /// <summary>
    /// Milliseconds per token over <paramref name="steps"/> decode steps after <paramref name="prompt"/>. With
    /// <paramref name="reusePrefix"/>, a sequence already holding at least the prompt's length is cut back to it instead
    /// of prefilled again (the KV of those positions is what decode reads; their tokens do not change its cost), which
    /// at 128k saves a prefill of about a minute. The prompt runs in the rope of the longest length the timed steps
    /// reach, and a kept prefix only when its cache is in that rope: with adaptive rope scaling no step inside the
    /// timing switches (what a switch costs is a prefill of the sequence, not a decode step).
    /// </summary>
    private static double DecodeMs(CudaBackend backend, ISequence seq, int[] prompt, SamplingOptions sampling, int steps, bool reusePrefix = false)
    {
        int tok, longest = prompt.Length + steps;
        if (reusePrefix && seq.Length >= prompt.Length && !seq.RecomputesAt(longest))
        {
            seq.Truncate(prompt.Length);
            tok = prompt[^1];
        }
        else
        {
            seq.Truncate(0);
            backend.Step([new SequenceChunk(seq, prompt, FinalLength: longest)]);
            tok = seq.Sample(sampling, 0);
        }
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            seq.Append([tok]);
            tok = seq.Sample(sampling, i + 1);
        }
        return sw.Elapsed.TotalMilliseconds / steps;
    }

    /// <summary>
    /// One line per prefill length and decode context the run cannot measure, with why: a sequence holds at most
    /// <paramref name="maxContext"/> positions here (the KV pool the memory left, or the model's maximum), and a decode
    /// context needs its steps on top. Said rather than silently dropped, since "where memory allows" is a question.
    /// </summary>
    public static IEnumerable<string> Unmeasurable(BenchSettings settings, int capacity, int maxContext)
    {
        foreach (int n in settings.PrefillLengths.Where(n => n > capacity))
            yield return $"prefill {n}: skipped, a sequence holds at most {maxContext} positions here";
        foreach (int ctx in settings.DecodeContexts.Where(x => x + settings.DecodeSteps > capacity))
            yield return $"decode at {ctx}: skipped, it needs {ctx + settings.DecodeSteps} positions ({settings.DecodeSteps} steps on top) and a sequence holds at most {maxContext} here";
    }

    /// <summary>
    /// Bytes a decode step must read on one GPU: every weight it holds except the embedding table (one row of it is
    /// read), plus its K and V of the context (with tensor parallel, its share of both).
    /// </summary>
    public static double DecodeBytesPerToken(CudaBackend b, int context)
    {
        var c = b.Config;
        double embedding = 2.0 * c.VocabSize * c.HiddenSize;
        bool lmHeadIsEmbedding = c.TieWordEmbeddings && b.TensorParallel == 1;
        double weights = b.Weights.Bytes - (lmHeadIsEmbedding ? 0 : embedding);
        return weights + (double)context * b.Plan.KvBytesPerToken; // the plan's: one GPU's KV heads, in the cache's format
    }

    /// <summary>Matrix FLOPs of a prefill of n tokens: 2·n per weight of the layers, plus causal attention and one lm_head row.</summary>
    public static double PrefillFlops(CudaBackend b, int n)
    {
        var c = b.Config;
        double perLayerWeights = (double)c.QkvDim * c.HiddenSize + (double)c.HiddenSize * c.QDim + 3.0 * c.IntermediateSize * c.HiddenSize;
        double matmul = 2.0 * n * perLayerWeights * c.NumHiddenLayers;
        double attention = 2.0 * 2.0 * c.NumAttentionHeads * c.HeadDim * (n * (double)(n + 1) / 2) * c.NumHiddenLayers;
        return matmul + attention + 2.0 * c.VocabSize * c.HiddenSize;
    }
}

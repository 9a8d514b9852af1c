using System.Diagnostics;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>One sample to generate: the problem's prompt with sample <see cref="Sample"/>'s seed.</summary>
public sealed record EvalRequest(EvalProblem Problem, int Sample, ulong Seed);

/// <summary>What a generator returns for one request.</summary>
/// <param name="Text">Everything generated (reasoning, <c>&lt;/think&gt;</c>, answer).</param>
/// <param name="Answer">The part after <c>&lt;/think&gt;</c>; null when the model never closed its reasoning.</param>
public sealed record EvalGeneration(string Text, string? Answer, int ReasoningTokens, int AnswerTokens, int TotalTokens,
    FinishReason FinishReason, TimeSpan Elapsed);

/// <summary>
/// The one seam between the evaluation and the engine: generates all pending samples of one problem (same prompt,
/// different seeds) and reports each as soon as it finishes, in any order. A batching implementation runs them
/// together and shares the prompt's KV blocks; a session-based one runs them in turn and reuses the cached prompt.
/// </summary>
public interface IEvalGenerator
{
    Task GenerateAsync(IReadOnlyList<EvalRequest> requests, Action<EvalRequest, EvalGeneration> onFinished, CancellationToken cancellationToken);
}

/// <summary>Where a run stands, for a progress display.</summary>
public sealed record EvalProgress(int ProblemsDone, int ProblemsTotal, int SamplesDone, int SamplesTotal, long TokensThisRun, TimeSpan Elapsed)
{
    /// <summary>Generated tokens per second of wall time in this run (not counting resumed samples).</summary>
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? TokensThisRun / Elapsed.TotalSeconds : 0;
}

/// <summary>How many samples, and the seed of sample 0 (sample k uses <c>BaseSeed + k</c>).</summary>
public sealed record EvalRunOptions(int Samples, ulong BaseSeed)
{
    public void Validate()
    {
        if (Samples < 1) throw new Errors.OptionException($"--samples {Samples} must be at least 1");
    }
}

/// <summary>
/// Runs every (problem, sample) pair not already in the results file through an <see cref="IEvalGenerator"/>, appends
/// each finished sample to the file, and scores the file at the end.
/// </summary>
public sealed class EvalRunner(IEvalGenerator generator, Action<EvalProgress>? progress = null)
{
    /// <summary>Generates what is missing from <paramref name="results"/>, then scores all of it.</summary>
    /// <returns>The score of every sample in the file (resumed and new), and the wall-clock tokens/s of this run.</returns>
    public async Task<(EvalScore Score, EvalProgress Run)> RunAsync(IReadOnlyList<EvalProblem> problems, EvalRunOptions options,
        EvalResultsFile results, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var done = new HashSet<(string, int)>(results.Existing.Select(s => (s.Id, s.Sample)));
        var all = new List<EvalSample>(results.Existing);
        int samplesDone = problems.Sum(p => Enumerable.Range(0, options.Samples).Count(k => done.Contains((p.Id, k))));
        int problemsDone = problems.Count(p => Enumerable.Range(0, options.Samples).All(k => done.Contains((p.Id, k))));
        long tokens = 0;
        var clock = Stopwatch.StartNew();
        EvalProgress Now() => new(problemsDone, problems.Count, samplesDone, problems.Count * options.Samples, tokens, clock.Elapsed);
        progress?.Invoke(Now());

        foreach (var problem in problems)
        {
            var pending = Enumerable.Range(0, options.Samples).Where(k => !done.Contains((problem.Id, k)))
                .Select(k => new EvalRequest(problem, k, unchecked(options.BaseSeed + (ulong)k))).ToList();
            if (pending.Count == 0) continue;
            var gate = new object();
            await generator.GenerateAsync(pending, (request, generation) =>
            {
                // A cancelled sample is incomplete: it is not written, so --resume generates it again.
                if (generation.FinishReason == FinishReason.Cancelled) return;
                var sample = ToSample(request, generation);
                lock (gate)
                {
                    results.Append(sample);
                    all.Add(sample);
                    samplesDone++;
                    tokens += generation.TotalTokens;
                    progress?.Invoke(Now());
                }
            }, cancellationToken);
            cancellationToken.ThrowIfCancellationRequested();
            problemsDone++;
            progress?.Invoke(Now());
        }
        return (EvalScorer.Score(problems, all), Now());
    }

    /// <summary>The results line for one generation: the answer extracted and checked.</summary>
    public static EvalSample ToSample(EvalRequest request, EvalGeneration g)
    {
        var problem = request.Problem;
        // The final answer is what follows the reasoning; a sample cut off while thinking has none, but a
        // \boxed{} it wrote in its reasoning is still its best answer, so then the whole text is searched.
        string? answer = AnswerExtractor.Extract(g.Answer ?? g.Text, problem.Kind);
        return new EvalSample(problem.Id, request.Sample, request.Seed, g.Text, answer, problem.Expected,
            AnswerExtractor.IsCorrect(answer, problem.Expected, problem.Kind), g.ReasoningTokens, g.AnswerTokens, g.TotalTokens,
            EvalResultsFile.SnakeCase(g.FinishReason.ToString()), g.Elapsed.TotalSeconds);
    }
}

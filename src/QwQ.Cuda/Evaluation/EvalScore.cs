using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>Scores of one problem over its samples.</summary>
/// <param name="PassAt1">Share of samples that are correct (the unbiased pass@1 estimate from n samples).</param>
/// <param name="MajorityAnswer">The most frequent extracted answer (equal answers grouped, ties to the earliest sample); null when no sample had one.</param>
/// <param name="MajorityCorrect">Whether <paramref name="MajorityAnswer"/> is right (maj@n for this problem: 1 or 0).</param>
public sealed record EvalProblemScore(
    string Id, int Samples, int Correct, double PassAt1, string? MajorityAnswer, bool MajorityCorrect,
    double MeanReasoningTokens, double MeanAnswerTokens, double TruncatedShare);

/// <summary>Scores of a whole run.</summary>
/// <param name="Problems">Problems with at least one sample.</param>
/// <param name="SamplesPerProblem">The most samples any problem has (the n of maj@n).</param>
/// <param name="PassAt1">Mean over problems of their pass@1.</param>
/// <param name="MajorityAtN">Share of problems whose majority answer is right.</param>
/// <param name="MeanReasoningTokens">Mean over samples.</param>
/// <param name="TruncatedShare">Share of samples stopped by max_tokens or the context.</param>
/// <param name="TokensPerSecond">Generated tokens over the summed per-sample generation time.</param>
public sealed record EvalScore(
    IReadOnlyList<EvalProblemScore> PerProblem, int Problems, int Samples, int SamplesPerProblem, double PassAt1, double MajorityAtN,
    double MeanReasoningTokens, double MeanAnswerTokens, double TruncatedShare, long GeneratedTokens, double Seconds, double TokensPerSecond);

/// <summary>pass@1 and maj@n, from the samples in a results file.</summary>
public static class EvalScorer
{
    /// <summary>
    /// Scores <paramref name="samples"/> against <paramref name="problems"/> (in the problems' order). Samples of ids
    /// not in the set are ignored; problems without samples are left out. Correctness is recomputed from each
    /// sample's extracted answer, so a results file scores the same as the run that wrote it.
    /// </summary>
    public static EvalScore Score(IReadOnlyList<EvalProblem> problems, IReadOnlyList<EvalSample> samples)
    {
        var byId = samples.GroupBy(s => s.Id, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.OrderBy(s => s.Sample).ToList(), StringComparer.Ordinal);
        var perProblem = new List<EvalProblemScore>();
        var used = new List<EvalSample>();
        foreach (var problem in problems)
        {
            if (!byId.TryGetValue(problem.Id, out var mine) || mine.Count == 0) continue;
            used.AddRange(mine);
            int correct = mine.Count(s => AnswerExtractor.IsCorrect(s.Answer, problem.Expected, problem.Kind));
            string? majority = Majority(mine.Select(s => s.Answer), problem.Kind);
            perProblem.Add(new EvalProblemScore(problem.Id, mine.Count, correct, (double)correct / mine.Count,
                majority, AnswerExtractor.IsCorrect(majority, problem.Expected, problem.Kind),
                mine.Average(s => (double)s.ReasoningTokens), mine.Average(s => (double)s.AnswerTokens),
                (double)mine.Count(s => s.Truncated) / mine.Count));
        }
        long tokens = used.Sum(s => (long)s.TotalTokens);
        double seconds = used.Sum(s => s.Seconds);
        return new EvalScore(perProblem, perProblem.Count, used.Count, perProblem.Count == 0 ? 0 : perProblem.Max(p => p.Samples),
            Mean(perProblem.Select(p => p.PassAt1)), Mean(perProblem.Select(p => p.MajorityCorrect ? 1.0 : 0.0)),
            Mean(used.Select(s => (double)s.ReasoningTokens)), Mean(used.Select(s => (double)s.AnswerTokens)),
            Mean(used.Select(s => s.Truncated ? 1.0 : 0.0)), tokens, seconds, seconds > 0 ? tokens / seconds : 0);
    }

    /// <summary>
    /// The most frequent answer (nulls ignored; equal answers such as 0.5 and \frac{1}{2} grouped); a tie goes to the
    /// answer that appeared first in sample order, so the vote does not depend on hash order.
    /// </summary>
    public static string? Majority(IEnumerable<string?> answers, AnswerKind kind)
    {
        var counts = new Dictionary<string, (int Count, int First, string Answer)>(StringComparer.Ordinal);
        int i = 0;
        foreach (var a in answers)
        {
            i++;
            if (a is null) continue;
            string key = AnswerExtractor.VoteKey(a, kind);
            counts[key] = counts.TryGetValue(key, out var c) ? (c.Count + 1, c.First, c.Answer) : (1, i, a);
        }
        return counts.Count == 0 ? null : counts.Values.OrderByDescending(c => c.Count).ThenBy(c => c.First).First().Answer;
    }

    private static double Mean(IEnumerable<double> values)
    {
        double sum = 0;
        int n = 0;
        foreach (var v in values) { sum += v; n++; }
        return n == 0 ? 0 : sum / n;
    }
}

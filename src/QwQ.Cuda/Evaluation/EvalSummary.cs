using System.Text.Json;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>What a summary records about how the run was made, beside its scores.</summary>
public sealed record EvalRunInfo(string Model, string Data, AnswerKind Kind, int Samples, ulong BaseSeed, GenerationOptions Options, EvalProgress Run);

/// <summary>Writes the summary JSON beside the results (<see cref="EvalResultsFile.SummaryPath"/>).</summary>
public static class EvalSummary
{
    public static void Write(string path, EvalScore score, EvalRunInfo info)
    {
        string tmp = path + ".tmp";
        using (var stream = File.Create(tmp))
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("model", info.Model);
            w.WriteString("data", info.Data);
            w.WriteString("kind", info.Kind == AnswerKind.Math ? "math" : "choice");
            w.WriteNumber("samples", info.Samples);
            w.WriteNumber("base_seed", info.BaseSeed);
            var s = info.Options.Sampling;
            w.WriteStartObject("sampling");
            if (s is not null)
            {
                w.WriteNumber("temperature", s.Temperature);
                w.WriteNumber("top_p", s.TopP);
                w.WriteNumber("top_k", s.TopK);
                w.WriteNumber("min_p", s.MinP);
                w.WriteNumber("presence_penalty", s.PresencePenalty);
                w.WriteNumber("frequency_penalty", s.FrequencyPenalty);
                w.WriteNumber("repetition_penalty", s.RepetitionPenalty);
            }
            if (info.Options.MaxNewTokens is int max) w.WriteNumber("max_tokens", max);
            else w.WriteNull("max_tokens");
            w.WriteEndObject();

            w.WriteStartObject("overall");
            w.WriteNumber("problems", score.Problems);
            w.WriteNumber("samples", score.Samples);
            w.WriteNumber("pass_at_1", score.PassAt1);
            w.WriteNumber($"maj_at_{score.SamplesPerProblem}", score.MajorityAtN);
            w.WriteNumber("mean_reasoning_tokens", score.MeanReasoningTokens);
            w.WriteNumber("mean_answer_tokens", score.MeanAnswerTokens);
            w.WriteNumber("truncated_share", score.TruncatedShare);
            w.WriteNumber("generated_tokens", score.GeneratedTokens);
            w.WriteNumber("generation_seconds", Math.Round(score.Seconds, 3));
            w.WriteNumber("tokens_per_second", Math.Round(score.TokensPerSecond, 2));
            w.WriteEndObject();

            // This invocation only: with --resume the file's earlier samples were not generated now.
            w.WriteStartObject("this_run");
            w.WriteNumber("samples_generated", info.Run.SamplesThisRun);
            w.WriteNumber("tokens", info.Run.TokensThisRun);
            w.WriteNumber("wall_seconds", Math.Round(info.Run.Elapsed.TotalSeconds, 3));
            w.WriteNumber("tokens_per_second", Math.Round(info.Run.TokensPerSecond, 2));
            w.WriteEndObject();

            w.WriteStartArray("problems");
            foreach (var p in score.PerProblem)
            {
                w.WriteStartObject();
                w.WriteString("id", p.Id);
                w.WriteNumber("samples", p.Samples);
                w.WriteNumber("correct", p.Correct);
                w.WriteNumber("pass_at_1", p.PassAt1);
                w.WriteString("majority_answer", p.MajorityAnswer);
                w.WriteBoolean("majority_correct", p.MajorityCorrect);
                w.WriteNumber("mean_reasoning_tokens", p.MeanReasoningTokens);
                w.WriteNumber("mean_answer_tokens", p.MeanAnswerTokens);
                w.WriteNumber("truncated_share", p.TruncatedShare);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        File.Move(tmp, path, overwrite: true); // a reader never sees half a summary
    }
}

using System.Globalization;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>
/// Generates evaluation samples through the model's batch API: every pending sample is one request to the scheduler,
/// so they decode together in shared forward passes, and the samples of one problem share its prompt's KV blocks
/// (the scheduler attaches the cached prefix blocks that the first sample filled). Results arrive as each finishes.
/// </summary>
public sealed class BatchEvalGenerator(QwqModel model, GenerationOptions options) : IEvalGenerator
{
    public async Task GenerateAsync(IReadOnlyList<EvalRequest> requests, Action<EvalRequest, EvalGeneration> onFinished, CancellationToken cancellationToken)
    {
        var prompts = requests.Select((request, i) => new BatchPrompt
        {
            Id = i.ToString(CultureInfo.InvariantCulture),
            Messages = [ChatMessage.User(request.Problem.Prompt)],
            Options = options with { Sampling = (options.Sampling ?? model.GenerationDefaults) with { Seed = request.Seed } },
        });
        await foreach (var r in model.GenerateBatchAsync(prompts, cancellationToken))
        {
            var request = requests[int.Parse(r.Id, CultureInfo.InvariantCulture)];
            if (r.Result is null)
                throw new QwqException($"problem {request.Problem.Id}, sample {request.Sample}: {r.Error}");
            // The sample's own time, submission to end (samples overlap: the run's wall-clock rate is in the summary).
            onFinished(request, FromResult(r.Result, model.Tokenizer.ThinkEndId, r.Result.Usage.TotalTime));
        }
    }

    /// <summary>Splits a result's tokens at <c>&lt;/think&gt;</c> into reasoning and answer counts.</summary>
    public static EvalGeneration FromResult(GenerationResult result, int thinkEndId, TimeSpan elapsed)
    {
        int total = result.TokenIds.Count;
        int end = -1;
        for (int i = 0; i < total; i++)
            if (result.TokenIds[i] == thinkEndId) { end = i; break; }
        return end < 0
            ? new EvalGeneration(result.Text, null, total, 0, total, result.FinishReason, elapsed)
            : new EvalGeneration(result.Text, result.Answer, end, total - end - 1, total, result.FinishReason, elapsed);
    }
}

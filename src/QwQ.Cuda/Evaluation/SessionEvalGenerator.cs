using System.Diagnostics;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>
/// Generates evaluation samples with one <see cref="ChatSession"/>, one sample after another. Every sample renders
/// the same single-turn conversation, and a session keeps the longest prefix already in its KV cache, so a problem's
/// prompt is prefilled once and its later samples only decode: the prompt's KV is shared in time rather than in
/// memory. (With a batch API the samples would run together over shared prompt blocks; only this class changes.)
/// </summary>
public sealed class SessionEvalGenerator(QwqModel model, GenerationOptions options) : IEvalGenerator, IDisposable
{
    private readonly ChatSession _session = model.CreateSession();

    public async Task GenerateAsync(IReadOnlyList<EvalRequest> requests, Action<EvalRequest, EvalGeneration> onFinished, CancellationToken cancellationToken)
    {
        foreach (var request in requests)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var sampleOptions = options with { Sampling = (options.Sampling ?? model.GenerationDefaults) with { Seed = request.Seed } };
            var clock = Stopwatch.StartNew();
            var result = await _session.GenerateAsync([ChatMessage.User(request.Problem.Prompt)], sampleOptions, tools: null, cancellationToken);
            onFinished(request, FromResult(result, model.Tokenizer.ThinkEndId, clock.Elapsed));
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

    public void Dispose() => _session.Dispose();
}

using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Generation;

/// <summary>
/// One generation of text on a model's scheduler, end to end: detokenize, split reasoning / answer / tool calls as
/// they are released, and build the <see cref="GenerationResult"/>. Sessions and the batch API both run through
/// here, so they report the same text for the same tokens.
/// </summary>
internal static class ParsedGeneration
{
    /// <summary>
    /// Generates on <paramref name="sequence"/> (which holds <c>prompt[..sequence.Length]</c>) through the model's
    /// scheduler; <paramref name="onDelta"/> receives parsed text as it is released, <paramref name="onText"/> the same text unparsed
    /// (the <c>&lt;/think&gt;</c> marker and tool-call blocks included: all of it adds up to the result's Text).
    /// </summary>
    public static async Task<(GenerationOutcome Outcome, GenerationResult Result)> RunAsync(QwqModel model, ISequence sequence, int[] prompt,
        bool startInReasoning, SamplingOptions sampling, GenerationOptions options, Action<ParsedDelta>? onDelta, CancellationToken ct,
        Action<string>? onText = null)
    {
        var parser = new ReasoningParser(startInReasoning, options.ParseToolCalls);
        var text = new System.Text.StringBuilder();
        var decoder = new DetokenizerDecoder(new StreamingDetokenizer(model.Tokenizer, skipSpecialTokens: true));
        bool atFirstCall = false; // StopAfterFirstToolCall: the first call is complete, nothing more is parsed or passed on
        var generator = new Generator(sequence) { StopAfterText = options.StopAfterFirstToolCall ? () => atFirstCall : null };
        var outcome = await generator.RunAsync(model.Scheduler, prompt, sampling, options,
            options.EosTokenIds ?? model.EosTokenIds, decoder, (_, delta) =>
            {
                text.Append(delta);
                onText?.Invoke(delta); // the raw stream adds up to Text, whatever is parsed
                if (atFirstCall) return;
                var parsed = parser.Push(delta);
                if (options.StopAfterFirstToolCall && parsed.ToolCalls.Count > 0)
                {
                    atFirstCall = true;
                    if (parsed.ToolCalls.Count > 1) parsed = parsed with { ToolCalls = [parsed.ToolCalls[0]] };
                }
                if (!parsed.IsEmpty) onDelta?.Invoke(parsed);
            }, ct).ConfigureAwait(false);

        if (!atFirstCall)
        {
            var tail = parser.Flush();
            if (!tail.IsEmpty) onDelta?.Invoke(tail);
        }
        var result = new GenerationResult
        {
            FinishReason = outcome.FinishReason,
            Usage = outcome.Usage,
            Text = text.ToString(),
            Reasoning = parser.Reasoning,
            Answer = parser.Answer,
            ToolCalls = atFirstCall ? [parser.ToolCalls[0]] : [.. parser.ToolCalls],
            TokenIds = outcome.GeneratedTokens,
            StopString = outcome.StopString ?? (atFirstCall && outcome.FinishReason == FinishReason.StopString ? "</tool_call>" : null),
        };
        return (outcome, result);
    }

    /// <summary>Whether generation after <paramref name="prompt"/> starts inside a <c>&lt;think&gt;</c> block (opened and not closed).</summary>
    public static bool EndsInReasoning(ReadOnlySpan<int> prompt, QwenTokenizer tokenizer)
    {
        int think = prompt.LastIndexOf(tokenizer.ThinkId);
        return think >= 0 && prompt[think..].IndexOf(tokenizer.ThinkEndId) < 0;
    }

    private sealed class DetokenizerDecoder(StreamingDetokenizer inner) : ITokenTextDecoder
    {
        public string Push(int tokenId) => inner.Push(tokenId);
        public string Flush() => inner.Flush();
    }
}

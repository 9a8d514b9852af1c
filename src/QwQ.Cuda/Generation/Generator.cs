using System.Diagnostics;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Generation;

/// <summary>Receives text as it becomes final: the token that released it, and the text (never empty).</summary>
public delegate void TextDeltaHandler(int tokenId, string text);

/// <summary>What <see cref="Generator.Run"/> did.</summary>
public sealed class GenerationOutcome
{
    public required FinishReason FinishReason { get; init; }
    public required GenerationUsage Usage { get; init; }

    /// <summary>Every sampled token, in order (an end-of-sequence token included).</summary>
    public required IReadOnlyList<int> GeneratedTokens { get; init; }

    /// <summary>How many of <see cref="GeneratedTokens"/> were appended to the sequence (the last sampled one never is).</summary>
    public required int AppendedGeneratedTokens { get; init; }

    /// <summary>Prompt tokens appended by this run (less than the uncached prompt only when cancelled during prefill).</summary>
    public required int AppendedPromptTokens { get; init; }

    /// <summary>The stop string that ended generation, when <see cref="FinishReason"/> is StopString.</summary>
    public string? StopString { get; init; }
}

/// <summary>
/// The generation loop over one <see cref="ISequence"/>: prefill the uncached part of the prompt, then sample and
/// decode one token at a time until end of sequence, a stop string, the token limit, a full context or cancellation.
/// The sequence always ends holding exactly the tokens that were appended (its Length says how many), so it can
/// be reused. Not thread-safe: one run at a time per sequence.
/// </summary>
public sealed class Generator(ISequence sequence)
{
    public ISequence Sequence => sequence;

    /// <summary>
    /// Generates a continuation of <paramref name="prompt"/>. The sequence must already hold
    /// <c>prompt[..sequence.Length]</c> (callers truncate it to the common prefix first) and at least the last
    /// prompt token must be new, because its logits start generation.
    /// </summary>
    /// <param name="decoder">Token → text; null runs on token ids alone (no stop strings then).</param>
    /// <param name="onText">Called with released text; stop strings are never passed on.</param>
    public GenerationOutcome Run(
        ReadOnlySpan<int> prompt,
        SamplingOptions sampling,
        GenerationOptions options,
        IReadOnlyList<int> eosTokenIds,
        ITokenTextDecoder? decoder,
        TextDeltaHandler? onText,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(sampling);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        sampling.Validate();

        int cached = sequence.Length;
        if (prompt.Length == 0)
            throw new OptionException("the prompt is empty: give at least one token");
        if (prompt.Length > sequence.Capacity)
            throw new OptionException(
                $"the prompt is {prompt.Length} tokens but the context holds {sequence.Capacity}; shorten the prompt or raise --max-context");
        if (cached >= prompt.Length)
            throw new ArgumentException($"the sequence already holds {cached} tokens; truncate it below the prompt length {prompt.Length} first", nameof(prompt));

        var stops = new StopStringMatcher(options.StopStrings);
        if (stops.HasStops && decoder is null)
            throw new ArgumentException("stop strings need a decoder", nameof(decoder));

        // Eos ids are few (two for QwQ); a linear scan of an array beats hashing.
        int[] eos = eosTokenIds as int[] ?? [.. eosTokenIds];
        int maxNew = options.MaxNewTokens ?? int.MaxValue;
        var generated = new List<int>(Math.Min(maxNew, Math.Max(16, sequence.Capacity - prompt.Length + 1)));

        long start = Stopwatch.GetTimestamp();
        long prefillEnd = start, firstToken = 0;
        int appendedPrompt = 0, appendedGenerated = 0;
        FinishReason reason;
        string? stopString = null;

        sequence.ResetPenalties();
        if (options.PenalizePrompt) sequence.RecordForPenalties(prompt);

        // Prefill in chunks so cancellation is noticed between them; the backend also checks the token between its
        // own, smaller chunks. Either way the sequence keeps what completed, and its Length says how much that is.
        int chunk = options.PrefillChunk > 0 ? options.PrefillChunk : int.MaxValue;
        ReadOnlySpan<int> pending = prompt[cached..];
        bool cancelled = false;
        try
        {
            while (pending.Length > 0)
            {
                if (cancellationToken.IsCancellationRequested) { cancelled = true; break; }
                int n = Math.Min(chunk, pending.Length);
                sequence.Append(pending[..n], cancellationToken);
                pending = pending[n..];
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            cancelled = true;
        }
        appendedPrompt = sequence.Length - cached;
        prefillEnd = Stopwatch.GetTimestamp();

        if (cancelled)
        {
            reason = FinishReason.Cancelled;
        }
        else
        {
            long step = 0;
            while (true)
            {
                int token = sequence.Sample(sampling, step);
                if (step == 0) firstToken = Stopwatch.GetTimestamp();
                generated.Add(token);

                if (Array.IndexOf(eos, token) >= 0) { reason = FinishReason.EndOfSequence; break; }

                if (decoder is not null)
                {
                    string text = decoder.Push(token);
                    if (text.Length > 0)
                    {
                        bool hit = stops.Push(text, out string released);
                        if (released.Length > 0) onText?.Invoke(token, released);
                        if (hit) { stopString = stops.Matched; reason = FinishReason.StopString; break; }
                    }
                }

                if (generated.Count >= maxNew) { reason = FinishReason.MaxTokens; break; }
                if (sequence.Length >= sequence.Capacity) { reason = FinishReason.MaxContext; break; }
                if (cancellationToken.IsCancellationRequested) { reason = FinishReason.Cancelled; break; }

                sequence.Append(new ReadOnlySpan<int>(in token));
                appendedGenerated++;
                step++;
            }

            // Release what the decoder and the stop matcher still hold, unless a stop string ended the text.
            if (reason != FinishReason.StopString && decoder is not null)
            {
                string tail = decoder.Flush();
                if (tail.Length > 0)
                {
                    bool hit = stops.Push(tail, out string released);
                    if (released.Length > 0) onText?.Invoke(generated[^1], released);
                    if (hit) { stopString = stops.Matched; reason = FinishReason.StopString; }
                }
                if (reason != FinishReason.StopString)
                {
                    string held = stops.Flush();
                    if (held.Length > 0) onText?.Invoke(generated[^1], held);
                }
            }
        }

        long end = Stopwatch.GetTimestamp();
        var usage = new GenerationUsage
        {
            PromptTokens = prompt.Length,
            CachedPromptTokens = cached,
            GeneratedTokens = generated.Count,
            PrefillTime = Stopwatch.GetElapsedTime(start, prefillEnd),
            TimeToFirstToken = firstToken == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(start, firstToken),
            DecodeTime = firstToken == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(firstToken, end),
            TotalTime = Stopwatch.GetElapsedTime(start, end),
        };
        return new GenerationOutcome
        {
            FinishReason = reason,
            Usage = usage,
            GeneratedTokens = generated,
            AppendedGeneratedTokens = appendedGenerated,
            AppendedPromptTokens = appendedPrompt,
            StopString = stopString,
        };
    }
}

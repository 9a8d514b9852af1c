using System.Diagnostics;
using QwQ.Cuda.Batching;
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
/// Generation over one <see cref="ISequence"/>: prefill the uncached part of the prompt, then sample one token at a
/// time until end of sequence, a stop string, the token limit, a full context or cancellation. Two drivers share
/// one consumer (detokenizing, stop strings, timings, outcome): <see cref="RunAsync"/> submits the work to a
/// <see cref="BatchScheduler"/>, which batches it with everything else on the backend; <see cref="Run"/> is the
/// plain loop over a bare sequence (tests, custom sequences without a backend).
/// The sequence always ends holding exactly the tokens that were appended (the outcome says how many), so it can
/// be reused. One run at a time per sequence.
/// </summary>
public sealed class Generator(ISequence sequence)
{
    public ISequence Sequence => sequence;

    /// <summary>
    /// Asked after each release of text: true ends the generation there as a stop string would (the token that released
    /// the text is not appended; finish reason StopString, with no stop string of its own). ParsedGeneration's stop after
    /// the first tool call.
    /// </summary>
    internal Func<bool>? StopAfterText { get; init; }

    /// <summary>
    /// Generates a continuation of <paramref name="prompt"/> on the calling thread. The sequence must already hold
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
        var run = new Consumer(sequence, prompt.Length, sampling, options, eosTokenIds, decoder, onText, StopAfterText);
        int maxNew = options.MaxNewTokens ?? int.MaxValue;

        sequence.ResetPenalties();
        if (options.PenalizePrompt) sequence.RecordForPenalties(prompt);

        // Prefill in chunks so cancellation is noticed between them; the backend also checks the token between its
        // own, smaller chunks. Either way the sequence keeps what completed, and its Length says how much that is.
        int chunk = options.PrefillChunk > 0 ? options.PrefillChunk : int.MaxValue;
        ReadOnlySpan<int> pending = prompt[run.Cached..];
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
        run.PrefillDone();

        FinishReason reason = FinishReason.Cancelled;
        if (!cancelled)
        {
            long step = 0;
            while (true)
            {
                int token = sequence.Sample(sampling, step);
                if (run.Push(token, out bool eos)) { reason = FinishReason.StopString; break; }
                if (eos) { reason = FinishReason.EndOfSequence; break; }
                if (run.Generated.Count >= maxNew) { reason = FinishReason.MaxTokens; break; }
                if (sequence.Length >= sequence.Capacity) { reason = FinishReason.MaxContext; break; }
                if (cancellationToken.IsCancellationRequested) { reason = FinishReason.Cancelled; break; }

                sequence.Append(new ReadOnlySpan<int>(in token));
                step++;
            }
            if (reason != FinishReason.StopString && run.Flush()) reason = FinishReason.StopString;
        }
        return run.Outcome(reason);
    }

    /// <summary>
    /// Like <see cref="Run"/>, but the scheduler appends and samples, batched with every other request on its
    /// backend; this side consumes the sampled tokens. A stop string cancels the request, and tokens the scheduler
    /// appended past it are truncated away. Cancellation is noticed between the scheduler's steps (a prefill chunk in
    /// flight completes first). <see cref="GenerationOptions.PrefillChunk"/> does not apply: the scheduler's
    /// <see cref="SchedulerOptions.PrefillTokensPerStep"/> bounds a step. Usage's PrefillTime is the time to the first
    /// token (prefill and the first draw are one step here); CachedPromptTokens counts what the sequence held before
    /// plus the prefix-cache blocks the scheduler attached to an empty sequence (<see cref="GenerationHandle.CachedPromptTokens"/>).
    /// </summary>
    public async Task<GenerationOutcome> RunAsync(
        BatchScheduler scheduler,
        ReadOnlyMemory<int> prompt,
        SamplingOptions sampling,
        GenerationOptions options,
        IReadOnlyList<int> eosTokenIds,
        ITokenTextDecoder? decoder,
        TextDeltaHandler? onText,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        var run = new Consumer(sequence, prompt.Length, sampling, options, eosTokenIds, decoder, onText, StopAfterText);
        int fresh = prompt.Length - run.Cached;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var handle = scheduler.Submit(new GenerationRequest(sequence, prompt[run.Cached..].ToArray(), sampling,
            options.MaxNewTokens ?? int.MaxValue, eosTokenIds, stop.Token)
        {
            PenalizedTokens = options.PenalizePrompt ? prompt.ToArray() : null,
        });

        bool stopped = false;
        // No token here: the scheduler notices cancellation at its next step and completes the channel.
        await foreach (int token in handle.Tokens.ReadAllAsync().ConfigureAwait(false))
        {
            if (run.Generated.Count == 0) run.PrefillDone();
            if (run.Push(token, out _)) { stopped = true; break; }
        }
        if (stopped) stop.Cancel();
        var reason = await handle.Completion.ConfigureAwait(false);
        if (stopped)
        {
            // As Run does: the token that completed the stop string is not appended, nor anything sampled after it.
            int keep = run.Cached + fresh + run.Generated.Count - 1;
            if (sequence.Length > keep) sequence.Truncate(keep);
            reason = FinishReason.StopString;
        }
        else
        {
            if (run.Generated.Count == 0) run.PrefillDone();
            if (run.Flush()) reason = FinishReason.StopString;
        }
        return run.Outcome(reason, fromPrefixCache: handle.CachedPromptTokens);
    }

    /// <summary>
    /// The consumer side of one generation, shared by both drivers: validation, detokenizing, stop strings, timings
    /// and the outcome (what the sequence holds is read from its Length, so it is right whoever appended).
    /// </summary>
    private sealed class Consumer
    {
        private readonly ISequence _sequence;
        private readonly int _promptLength;
        private readonly int[] _eos; // few (two for QwQ): a linear scan beats hashing
        private readonly StopStringMatcher _stops;
        private readonly ITokenTextDecoder? _decoder;
        private readonly TextDeltaHandler? _onText;
        private readonly Func<bool>? _stopAfterText;
        private readonly long _start = Stopwatch.GetTimestamp();
        private long _prefillEnd, _firstToken;
        private string? _stopString;

        public Consumer(ISequence sequence, int promptLength, SamplingOptions sampling, GenerationOptions options,
            IReadOnlyList<int> eosTokenIds, ITokenTextDecoder? decoder, TextDeltaHandler? onText, Func<bool>? stopAfterText)
        {
            ArgumentNullException.ThrowIfNull(sampling);
            ArgumentNullException.ThrowIfNull(options);
            options.Validate();
            sampling.Validate();
            if (promptLength == 0)
                throw new OptionException("the prompt is empty: give at least one token");
            if (promptLength > sequence.Capacity)
                throw new OptionException(
                    $"the prompt is {promptLength} tokens but the context holds {sequence.Capacity}; shorten the prompt or raise --max-context");
            Cached = sequence.Length;
            if (Cached >= promptLength)
                throw new ArgumentException($"the sequence already holds {Cached} tokens; truncate it below the prompt length {promptLength} first", "prompt");
            _stops = new StopStringMatcher(options.StopStrings);
            if (_stops.HasStops && decoder is null)
                throw new ArgumentException("stop strings need a decoder", nameof(decoder));
            _sequence = sequence;
            _promptLength = promptLength;
            _eos = eosTokenIds as int[] ?? [.. eosTokenIds];
            _decoder = decoder;
            _onText = onText;
            _stopAfterText = stopAfterText;
            int maxNew = options.MaxNewTokens ?? int.MaxValue;
            Generated = new List<int>(Math.Min(maxNew, Math.Max(16, sequence.Capacity - promptLength + 1)));
        }

        /// <summary>Positions the sequence held at the start (the reused prefix).</summary>
        public int Cached { get; }

        public List<int> Generated { get; }

        public void PrefillDone()
        {
            if (_prefillEnd == 0) _prefillEnd = Stopwatch.GetTimestamp();
        }

        /// <summary>Takes a sampled token: true when its text completed a stop string (generation must end).</summary>
        public bool Push(int token, out bool eos)
        {
            if (Generated.Count == 0) _firstToken = Stopwatch.GetTimestamp();
            Generated.Add(token);
            eos = Array.IndexOf(_eos, token) >= 0;
            if (eos || _decoder is null) return false;
            string text = _decoder.Push(token);
            return text.Length > 0 && Release(text);
        }

        /// <summary>Releases what the decoder and the stop matcher still hold; true when that completed a stop string.</summary>
        public bool Flush()
        {
            if (_decoder is null || Generated.Count == 0) return false;
            string tail = _decoder.Flush();
            if (tail.Length > 0 && Release(tail)) return true;
            string held = _stops.Flush();
            if (held.Length > 0) _onText?.Invoke(Generated[^1], held);
            return false;
        }

        private bool Release(string text)
        {
            bool hit = _stops.Push(text, out string released);
            if (released.Length > 0) _onText?.Invoke(Generated[^1], released);
            if (hit) _stopString = _stops.Matched;
            return hit || (released.Length > 0 && _stopAfterText?.Invoke() == true);
        }

        /// <param name="fromPrefixCache">Prompt tokens whose KV was reused from the prefix cache on top of <see cref="Cached"/>.</param>
        public GenerationOutcome Outcome(FinishReason reason, int fromPrefixCache = 0)
        {
            long end = Stopwatch.GetTimestamp();
            long prefillEnd = _prefillEnd == 0 ? end : _prefillEnd;
            int appended = _sequence.Length - Cached;
            int appendedPrompt = Math.Min(appended, _promptLength - Cached);
            return new GenerationOutcome
            {
                FinishReason = reason,
                Usage = new GenerationUsage
                {
                    PromptTokens = _promptLength,
                    CachedPromptTokens = Cached + fromPrefixCache,
                    GeneratedTokens = Generated.Count,
                    PrefillTime = Stopwatch.GetElapsedTime(_start, prefillEnd),
                    TimeToFirstToken = _firstToken == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(_start, _firstToken),
                    DecodeTime = _firstToken == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(_firstToken, end),
                    TotalTime = Stopwatch.GetElapsedTime(_start, end),
                },
                GeneratedTokens = Generated,
                AppendedGeneratedTokens = appended - appendedPrompt,
                AppendedPromptTokens = appendedPrompt,
                StopString = reason == FinishReason.StopString ? _stopString : null,
            };
        }
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Threading.Channels;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Generation;

/// <summary>
/// A conversation with its own KV cache, kept across turns. Each call renders the whole conversation with the
/// chat template, keeps the longest prefix already in the cache, truncates the rest and prefills only what is
/// new. (QwQ's template drops earlier turns' reasoning, so after an answer the cache diverges right after that
/// turn's <c>&lt;|im_start|&gt;assistant\n</c>; the common-prefix rule handles it.)
/// <para>
/// Not thread-safe: one call at a time (a second concurrent call throws InvalidOperationException). Generation runs
/// on the model's <see cref="Batching.BatchScheduler"/>, so several sessions generating at once share each forward
/// pass on the GPU; the async stream only hands over updates.
/// </para>
/// <para>
/// Cancellation does not throw here: the stream ends with a <see cref="GenerationUpdateKind.Completed"/> update
/// whose finish reason is <see cref="FinishReason.Cancelled"/> (so usage of the partial output is reported), and
/// the session stays usable. Stopping the enumeration early cancels the same way.
/// </para>
/// <para>
/// Between turns a session keeps its KV blocks in the model's pool (<see cref="IModelBackend.KvPool"/>), so its next
/// turn prefills only what is new. When a generation cannot start for want of blocks, the least recently used idle
/// sessions give theirs back (the next turn of such a session prefills its whole conversation, reattaching the full
/// blocks the prefix cache still holds). Dispose sessions you are done with all the same: that is immediate.
/// </para>
/// </summary>
public sealed class ChatSession : IDisposable
{
    private readonly QwqModel _model;
    private readonly ISequence _sequence;
    private readonly List<int> _tokens = []; // exactly the tokens in the KV cache: _tokens.Count == _sequence.Length
    private readonly object _gate = new();   // orders Dispose against a generation starting
    private CancellationTokenSource? _running; // the running generation's stop, and its thread; null when idle
    private Task? _worker;
    private int _busy;
    private bool _disposed;
    private long _lastUsed = Environment.TickCount64;

    /// <summary>When a turn (or Reset) last ended: the model releases the least recently used idle session's KV first.</summary>
    internal long LastUsed => Volatile.Read(ref _lastUsed);

    internal ChatSession(QwqModel model, ISequence sequence)
    {
        _model = model;
        _sequence = sequence;
    }

    /// <summary>The conversation so far (user and assistant turns added by <see cref="StreamAsync(string, GenerationOptions?, CancellationToken)"/>).</summary>
    public List<ChatMessage> History { get; } = [];

    /// <summary>A system message rendered before <see cref="History"/>; null for none.</summary>
    public string? SystemPrompt { get; set; }

    /// <summary>Tool definitions (<c>{"type":"function","function":{name, description, parameters}}</c>) offered on every turn.</summary>
    public IReadOnlyList<JsonElement>? Tools { get; set; }

    /// <summary>Positions in the KV cache.</summary>
    public int CachedTokens => _sequence.Length;

    /// <summary>The most positions this session can hold (prompt and output together).</summary>
    public int Capacity => _sequence.Capacity;

    /// <summary>Forgets the conversation and empties the KV cache.</summary>
    public void Reset()
    {
        Enter();
        try
        {
            History.Clear();
            _sequence.Truncate(0);
            _tokens.Clear();
        }
        finally { Exit(); }
    }

    /// <summary>
    /// Adds <paramref name="userMessage"/> to the conversation and streams the answer. When the generation ends, the
    /// user turn and the assistant's answer (with its tool calls) join <see cref="History"/>, also when it was
    /// cancelled: then the answer is what was generated until then (possibly empty, e.g. stopped while reasoning or
    /// during the prompt), and the result's finish reason says <see cref="FinishReason.Cancelled"/>. The question is
    /// kept because a user who interrupts a long answer still expects the next turn to follow from it; remove the
    /// last two <see cref="History"/> entries to forget the turn.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> StreamAsync(string userMessage, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(userMessage);
        var user = ChatMessage.User(userMessage);
        var messages = Conversation(user);
        return StreamPromptAsync(Render(messages, Tools), options, startInReasoning: true, onDone: result =>
        {
            History.Add(user);
            History.Add(ChatMessage.Assistant(result.Answer, result.ToolCalls.Count > 0 ? result.ToolCalls : null));
        }, cancellationToken);
    }

    /// <summary>
    /// Streams the assistant's next turn for <paramref name="messages"/> (the whole conversation; <see cref="History"/>
    /// is neither used nor changed). The KV cache is reused for the prefix shared with the previous call.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> StreamAsync(IReadOnlyList<ChatMessage> messages, GenerationOptions? options = null,
        IReadOnlyList<JsonElement>? tools = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
            throw new ArgumentException("no messages: give at least one (e.g. the user's)", nameof(messages));
        return StreamPromptAsync(Render(messages, tools), options, startInReasoning: true, onDone: null, cancellationToken);
    }

    /// <summary>
    /// Streams a continuation of raw token ids (no chat template). Reasoning is recognised if the prompt ends
    /// inside a <c>&lt;think&gt;</c> block or the output starts with one.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> StreamTokensAsync(IReadOnlyList<int> promptTokens, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        StreamIdsAsync(promptTokens, options, rawText: false, cancellationToken);

    /// <summary>
    /// <see cref="StreamTokensAsync"/> as OpenAI's /v1/completions streams it: every text update is an Answer holding the
    /// output exactly as generated (reasoning, the <c>&lt;/think&gt;</c> marker and tool-call blocks included, nothing
    /// parsed out), so the updates add up to the result's <see cref="GenerationResult.Text"/>; the result is parsed as always.
    /// </summary>
    internal IAsyncEnumerable<GenerationUpdate> StreamRawTokensAsync(IReadOnlyList<int> promptTokens, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        StreamIdsAsync(promptTokens, options, rawText: true, cancellationToken);

    private IAsyncEnumerable<GenerationUpdate> StreamIdsAsync(IReadOnlyList<int> promptTokens, GenerationOptions? options, bool rawText, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        if (promptTokens.Count == 0)
            throw new ArgumentException("the prompt is empty: give at least one token id (its logits start the generation)", nameof(promptTokens));
        int[] prompt = [.. promptTokens];
        return StreamPromptAsync(prompt, options, ParsedGeneration.EndsInReasoning(prompt, _model.Tokenizer), onDone: null, cancellationToken, rawText);
    }

    /// <summary>Runs <see cref="StreamAsync(string, GenerationOptions?, CancellationToken)"/> to the end and returns the result.</summary>
    public Task<GenerationResult> GenerateAsync(string userMessage, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        CollectAsync(StreamAsync(userMessage, options, cancellationToken));

    /// <summary>Runs <see cref="StreamAsync(IReadOnlyList{ChatMessage}, GenerationOptions?, IReadOnlyList{JsonElement}?, CancellationToken)"/> to the end.</summary>
    public Task<GenerationResult> GenerateAsync(IReadOnlyList<ChatMessage> messages, GenerationOptions? options = null,
        IReadOnlyList<JsonElement>? tools = null, CancellationToken cancellationToken = default) =>
        CollectAsync(StreamAsync(messages, options, tools, cancellationToken));

    /// <summary>Runs <see cref="StreamTokensAsync"/> to the end.</summary>
    public Task<GenerationResult> GenerateTokensAsync(IReadOnlyList<int> promptTokens, GenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        CollectAsync(StreamTokensAsync(promptTokens, options, cancellationToken));

    /// <summary>The chat-template prompt for <paramref name="messages"/>, as token ids.</summary>
    public int[] Render(IReadOnlyList<ChatMessage> messages, IReadOnlyList<JsonElement>? tools = null) =>
        _model.Tokenizer.Encode(_model.Template.Apply(messages, tools, addGenerationPrompt: true));

    /// <summary>
    /// Cancels a running generation and waits (up to 10 s) for it to stop before freeing the KV cache, so the
    /// generation thread never runs on a freed cache; the stream then ends with a Cancelled update.
    /// </summary>
    public void Dispose() => Dispose(QwqModel.StopTimeout);

    /// <summary>Dispose, waiting at most <paramref name="wait"/> for the generation to stop (QwqModel shares one bound among its sessions).</summary>
    internal void Dispose(TimeSpan wait)
    {
        Task? worker;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            worker = _worker;
        }
        CancelRunning();
        // Bounded: a backend call that ignores cancellation must not hang the caller (e.g. process shutdown) forever.
        _ = worker?.Wait(wait);
        _sequence.Dispose();
        _model.Forget(this);
    }

    /// <summary>Asks a running generation to stop; it ends at its next check (between tokens or prefill chunks).</summary>
    internal void CancelRunning()
    {
        lock (_gate)
        {
            try { _running?.Cancel(); }
            catch (ObjectDisposedException) { }
        }
    }

    private List<ChatMessage> Conversation(ChatMessage next)
    {
        var list = new List<ChatMessage>(History.Count + 2);
        if (SystemPrompt is not null) list.Add(ChatMessage.System(SystemPrompt));
        list.AddRange(History);
        list.Add(next);
        return list;
    }

    private static async Task<GenerationResult> CollectAsync(IAsyncEnumerable<GenerationUpdate> stream)
    {
        GenerationResult? result = null;
        await foreach (var update in stream.ConfigureAwait(false))
            if (update.Result is not null) result = update.Result;
        return result!;
    }

    private async IAsyncEnumerable<GenerationUpdate> StreamPromptAsync(int[] prompt, GenerationOptions? options, bool startInReasoning,
        Action<GenerationResult>? onDone, [EnumeratorCancellation] CancellationToken cancellationToken, bool rawText = false)
    {
        Enter();
        try
        {
            options ??= new GenerationOptions();
            var sampling = options.Sampling ?? _model.GenerationDefaults;
            options.Validate();
            sampling.Validate(_model.Tokenizer.VocabSize);
            if (prompt.Length > _sequence.Capacity)
                throw new OptionException(
                    $"the prompt is {prompt.Length} tokens but the context holds {_sequence.Capacity}; shorten the prompt or raise --max-context");

            var channel = Channel.CreateUnbounded<GenerationUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            async Task Work()
            {
                try
                {
                    var result = await RunAsync(prompt, sampling, options, startInReasoning, rawText, channel.Writer, stop.Token).ConfigureAwait(false);
                    onDone?.Invoke(result);
                    channel.Writer.TryWrite(GenerationUpdate.Completed(result));
                    channel.Writer.TryComplete();
                }
                catch (Exception e)
                {
                    channel.Writer.TryComplete(e);
                }
            }
            Task worker;
            lock (_gate)
            {
                // Dispose either sees this generation (and stops it) or has happened, and then it never starts.
                ObjectDisposedException.ThrowIf(_disposed, this);
                _running = stop;
                _worker = worker = Task.Run(Work, CancellationToken.None);
            }

            try
            {
                // No token here: a cancelled caller still receives the Completed update, once the worker has stopped.
                while (await channel.Reader.WaitToReadAsync().ConfigureAwait(false))
                    while (channel.Reader.TryRead(out var update))
                        yield return update;
            }
            finally
            {
                // The consumer may leave early (break, dispose): stop the worker and wait, so the cache is consistent.
                stop.Cancel();
                await worker.ConfigureAwait(false);
                lock (_gate) (_running, _worker) = (null, null);
            }
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>The core: reuse the cached prefix, generate, keep <see cref="_tokens"/> in step with the cache.</summary>
    private async Task<GenerationResult> RunAsync(int[] prompt, SamplingOptions sampling, GenerationOptions options, bool startInReasoning,
        bool rawText, ChannelWriter<GenerationUpdate> sink, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        // At least the last prompt token is recomputed: its logits start the generation.
        int keep = Math.Min(CommonPrefixLength(_tokens, prompt), prompt.Length - 1);
        _sequence.Truncate(keep);
        _tokens.RemoveRange(keep, _tokens.Count - keep);

        void Emit(ParsedDelta d)
        {
            if (d.Reasoning.Length > 0) sink.TryWrite(new GenerationUpdate(GenerationUpdateKind.Reasoning, d.Reasoning));
            if (d.Answer.Length > 0) sink.TryWrite(new GenerationUpdate(GenerationUpdateKind.Answer, d.Answer));
            foreach (var call in d.ToolCalls) sink.TryWrite(new GenerationUpdate(GenerationUpdateKind.ToolCall, "", call));
        }
        void EmitRaw(string text) => sink.TryWrite(new GenerationUpdate(GenerationUpdateKind.Answer, text));

        GenerationOutcome outcome;
        GenerationResult result;
        try
        {
            (outcome, result) = await ParsedGeneration.RunAsync(_model, _sequence, prompt, startInReasoning, sampling, options,
                rawText ? null : Emit, ct, rawText ? EmitRaw : null).ConfigureAwait(false);
        }
        catch
        {
            // Whatever the failed pass left in the cache beyond the known prefix is not trusted.
            try { _sequence.Truncate(Math.Min(keep, _sequence.Length)); } catch (Exception) { }
            _tokens.RemoveRange(Math.Min(keep, _tokens.Count), _tokens.Count - Math.Min(keep, _tokens.Count));
            throw;
        }

        _tokens.AddRange(prompt.AsSpan(keep, outcome.AppendedPromptTokens));
        for (int i = 0; i < outcome.AppendedGeneratedTokens; i++) _tokens.Add(outcome.GeneratedTokens[i]);
        if (_tokens.Count != _sequence.Length)
        {
            // Defensive: never let the bookkeeping and the cache disagree.
            int n = Math.Min(_tokens.Count, _sequence.Length);
            _sequence.Truncate(n);
            _tokens.RemoveRange(n, _tokens.Count - n);
        }

        return result;
    }

    internal static int CommonPrefixLength(List<int> cached, ReadOnlySpan<int> prompt)
    {
        var span = CollectionsMarshal.AsSpan(cached);
        return span.CommonPrefixLength(prompt);
    }

    private void Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
            throw new InvalidOperationException("This ChatSession is already generating: a session serves one call at a time (create another session for concurrent conversations).");
    }

    private void Exit()
    {
        Volatile.Write(ref _lastUsed, Environment.TickCount64);
        Volatile.Write(ref _busy, 0);
    }

    /// <summary>
    /// Gives this session's KV blocks back to the pool if it is idle (not in a turn) and holds any; the next turn then
    /// prefills the whole conversation (History is kept). Called by the model's scheduler thread when a generation
    /// cannot start for want of blocks. Under <c>_gate</c>, so Dispose cannot release the sequence underneath.
    /// </summary>
    internal bool TryReleaseKv()
    {
        lock (_gate)
        {
            if (_disposed || Interlocked.CompareExchange(ref _busy, 1, 0) != 0) return false;
            try
            {
                if (_sequence.Length == 0) return false;
                _sequence.Truncate(0);
                _tokens.Clear();
                return true;
            }
            finally { Volatile.Write(ref _busy, 0); } // not a use: LastUsed stays
        }
    }
}

using System.Runtime.InteropServices;
using System.Threading.Channels;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;

namespace QwQ.Cuda.Batching;

/// <summary>
/// Continuous batching over any <see cref="IModelBackend"/>: one background thread runs steps, each batching the
/// decode row of every running request with bounded prefill chunks of newly admitted ones, then samples every
/// request whose tokens are all in. Requests may be submitted from any thread.
/// </summary>
/// <remarks>
/// <para>Admission: a waiting request starts only when its first chunk fits the pool's free blocks next to what
/// the running requests need this step; an empty sequence first reuses cached prefix blocks
/// (<see cref="ISequence.AttachCachedPrefix"/>).</para>
/// <para>Preemption: when a step finds the pool full, the most recently admitted request gives back what it
/// appended (its sequence is truncated to its length before the request) and goes to the front of the queue, to
/// recompute prompt and generated tokens later; tokens already streamed are not sampled or streamed again. A request
/// that alone needs more blocks than the whole pool fails with <see cref="KvPoolExhaustedException"/>. Blocks held by
/// sequences outside the scheduler (finished requests' included) are waited for: dispose or truncate those sequences,
/// or cancel the request to give up.</para>
/// <para>Adaptive rope scaling: a request whose sequence grows past the switch (or, truncated, back below it) has every
/// earlier position of that sequence recomputed in the new rope. It is spread over steps like a prompt: the sequence is
/// emptied and its earlier tokens are appended again in chunks of the prefill budget, each in the new rope
/// (<see cref="ISequence.RecomputesAt"/>, <see cref="SequenceChunk.FinalLength"/>). Those earlier tokens then belong to
/// the request: a preemption gives back their blocks too, and a request cancelled while it waits to resume leaves its
/// sequence empty.</para>
/// <para>Results do not depend on batch composition: each request samples from its own sequence's logits with its
/// own options, and step n of a request is the n-th token it sampled.</para>
/// <para>Ending: end of sequence, the token limit, a full sequence (<see cref="FinishReason.MaxContext"/>) or the
/// request's token being cancelled. Like <see cref="Generator"/>, the sequence then keeps what the request appended
/// (a cancelled request waiting to be resumed after a preemption keeps only its sequence's earlier length), so the
/// caller can continue, truncate or dispose it; the last sampled token is never appended.</para>
/// </remarks>
public sealed class BatchScheduler : IDisposable
{
    private readonly IModelBackend _backend;
    private readonly SchedulerOptions _options;
    private readonly Channel<Request> _submissions = Channel.CreateUnbounded<Request>(new() { SingleReader = true });
    private readonly HashSet<ISequence> _busy = new(ReferenceEqualityComparer.Instance); // sequences of unfinished requests; lock it
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _loop;
    private long _steps, _preemptions, _admissions, _ropeRecomputes;
    private int _largestBatch, _disposed;

    // Loop-thread state.
    private readonly LinkedList<Request> _waiting = new();  // not holding KV: new, or preempted (at the front)
    private readonly List<Request> _running = [];           // holding KV, in admission order

    public BatchScheduler(IModelBackend backend, SchedulerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        _backend = backend;
        _options = options ?? new SchedulerOptions();
        _options.Validate();
        _loop = new Thread(Loop) { IsBackground = true, Name = "QwQ batch scheduler" };
        _loop.Start();
    }

    public SchedulerOptions Options => _options;

    /// <summary>
    /// Asked on the loop thread when no step could run (every waiting request needs blocks that sequences outside the
    /// scheduler hold): frees some of them and says whether it did, so the loop tries again rather than waits.
    /// QwqModel's: the least recently used idle ChatSession gives its KV back (its full blocks stay in the prefix cache).
    /// Without it, idle sessions that filled the pool made every new generation wait for ever.
    /// </summary>
    internal Func<bool>? ReleaseIdle { get; set; }

    public SchedulerCounters Counters =>
        new(Interlocked.Read(ref _steps), Interlocked.Read(ref _preemptions), Volatile.Read(ref _largestBatch), Interlocked.Read(ref _ropeRecomputes));

    /// <summary>
    /// Queues a request. Throws <see cref="OptionException"/> for an empty prompt, a token outside the vocabulary, a
    /// prompt that exceeds the sequence's capacity or invalid sampling options, and <see cref="InvalidOperationException"/>
    /// when the sequence already has an unfinished request.
    /// </summary>
    public GenerationHandle Submit(GenerationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(request.Sequence);
        ArgumentNullException.ThrowIfNull(request.Sampling);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        int vocab = _backend.Config.VocabSize;
        request.Sampling.Validate(vocab);
        if (request.Prompt is null || request.Prompt.Count == 0) throw new OptionException("the prompt is empty: give at least one token");
        if (request.MaxNewTokens < 1) throw new OptionException($"max new tokens must be at least 1, got {request.MaxNewTokens}");
        foreach (int t in request.Prompt)
            if ((uint)t >= (uint)vocab) throw new OptionException($"token id {t} is outside the model's vocabulary of {vocab}");
        var seq = request.Sequence;
        if (seq.Length + request.Prompt.Count > seq.Capacity)
            throw new OptionException(
                $"the sequence holds {seq.Length} of {seq.Capacity} positions and the prompt adds {request.Prompt.Count}; shorten the prompt or raise --max-context");

        var r = new Request(request);
        lock (_busy)
        {
            if (!_busy.Add(seq))
                throw new InvalidOperationException("the sequence already has an unfinished request; await its Completion first, or use another sequence (Fork)");
        }
        if (!_submissions.Writer.TryWrite(r))
        {
            lock (_busy) _busy.Remove(seq);
            throw new ObjectDisposedException(nameof(BatchScheduler));
        }
        return r.Handle;
    }

    /// <summary>Stops the loop (waiting up to <see cref="SchedulerOptions.DisposeTimeout"/> for its step) and fails unfinished requests.</summary>
    public void Dispose() => Dispose(_options.DisposeTimeout);

    /// <summary>Dispose waiting at most <paramref name="wait"/> (a model shares one bound among everything it stops).</summary>
    internal void Dispose(TimeSpan wait)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _submissions.Writer.TryComplete();
        _stop.Cancel();
        // Past the timeout the loop still fails its requests, when the step in flight returns.
        _loop.Join(wait);
    }

    private void Loop()
    {
        while (!_stop.IsCancellationRequested)
        {
            while (_submissions.Reader.TryRead(out var r)) _waiting.AddLast(r);
            if (_running.Count == 0 && _waiting.Count == 0)
            {
                WaitForWork(blocked: false);
                continue;
            }
            bool ran;
            try
            {
                ran = StepOnce();
            }
            catch (Exception e)
            {
                foreach (var r in _running.Concat(_waiting).ToList()) Fail(r, e); // a bug in the loop: fail what is in flight rather than hang it
                continue;
            }
            if (!ran && ReleaseIdle?.Invoke() != true) WaitForWork(blocked: true);
        }
        var gone = new ObjectDisposedException(nameof(BatchScheduler), "the scheduler was disposed before this request finished");
        while (_submissions.Reader.TryRead(out var r)) _waiting.AddLast(r);
        foreach (var r in _running.Concat(_waiting).ToList()) Fail(r, gone);
    }

    /// <summary>
    /// Sleeps until a submission or the stop signal; when <paramref name="blocked"/> (requests wait for KV blocks that
    /// sequences outside the scheduler hold), also until a block is freed or a short poll notices cancellations.
    /// </summary>
    private void WaitForWork(bool blocked)
    {
        var submitted = _submissions.Reader.WaitToReadAsync(_stop.Token).AsTask();
        try
        {
            if (blocked) Task.WaitAny([submitted, _backend.KvPool.WhenBlockFreed()], BlockedPoll);
            else submitted.GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) { } // stopping: the loop sees _stop
    }

    private static readonly TimeSpan BlockedPoll = TimeSpan.FromMilliseconds(50);

    /// <summary>Builds and runs one step, then samples; false when nothing could run (waiting for blocks held elsewhere).</summary>
    private bool StepOnce()
    {
        foreach (var r in _running.Concat(_waiting).Where(r => r.Source.CancellationToken.IsCancellationRequested).ToList())
            Finish(r, FinishReason.Cancelled);

        var batch = new List<(Request Request, int Count)>();
        int budget = _options.PrefillTokensPerStep, blocksNeeded = 0;
        foreach (var r in _running)
        {
            RecomputeInChunks(r);
            int n = r.Pending == 1 ? 1 : Math.Min(r.Pending, budget); // decode rows ride free of the prefill budget
            if (n == 0) continue;
            if (r.Pending > 1) budget -= n;
            batch.Add((r, n));
            blocksNeeded += BlocksToGrow(r.Sequence.Length, n);
        }
        for (var node = _waiting.First; node is not null && _running.Count < _options.MaxSequences && batch.Count < _options.MaxBatch && budget > 0;)
        {
            var (r, next) = (node.Value, node.Next); // Fail and Retire unlink the node; the walk goes on from next
            // It attaches those blocks next step instead of computing them again; requests behind it may start now
            // (a large eval queues every sample of every problem, and would otherwise start one problem per step).
            if (SharesAPrefixStillBeingFilled(r)) { node = next; continue; }
            int n;
            try
            {
                n = Admit(r, budget, _backend.KvPool.FreeBlocks - blocksNeeded);
            }
            catch (Exception e)
            {
                Fail(r, e); // e.g. its sequence was disposed while it waited
                node = next;
                continue;
            }
            if (n < 0) { node = next; continue; } // failed and retired
            if (n == 0) break;   // waits for blocks to be given back
            _waiting.Remove(node);
            node = next;
            _running.Add(r);
            if (r.Pending > 1) budget -= n;
            batch.Add((r, n));
            blocksNeeded += BlocksToGrow(r.Sequence.Length, n);
        }
        if (batch.Count == 0) return false; // nothing runs: the waiting requests wait for blocks held elsewhere

        if (RunStep(batch))
        {
            Interlocked.Increment(ref _steps);
            if (batch.Count > _largestBatch) Volatile.Write(ref _largestBatch, batch.Count);
            var ready = new List<Request>(batch.Count);
            foreach (var (r, n) in batch)
            {
                r.Appended += n;
                r.CountCachedPrompt();
                if (r.Pending == 0) ready.Add(r);
            }
            SampleAll(ready);
        }
        return true;
    }

    /// <summary>
    /// Whether <paramref name="r"/>, not yet started on an empty sequence, begins with the same full KV block of
    /// tokens as a running request that is still prefilling: its blocks are published when that prefill's step ends,
    /// so waiting one step lets the samples of one prompt share the prompt's KV instead of each computing it.
    /// </summary>
    private bool SharesAPrefixStillBeingFilled(Request r)
    {
        int block = _backend.KvPool.BlockSize;
        if (r.Started || r.Sequence.Length != 0 || r.Tokens.Count <= block) return false;
        var head = CollectionsMarshal.AsSpan(r.Tokens)[..block];
        foreach (var q in _running)
            if (q.Pending > 1 && q.BaseLength == 0 && q.Tokens.Count > block && head.SequenceEqual(CollectionsMarshal.AsSpan(q.Tokens)[..block]))
                return true;
        return false;
    }

    /// <summary>
    /// Starts (or resumes) <paramref name="r"/> with a first chunk that fits <paramref name="freeBlocks"/>: returns
    /// its length, 0 when it must wait for blocks, -1 when it failed because it alone exceeds the whole pool.
    /// </summary>
    private int Admit(Request r, int budget, int freeBlocks)
    {
        var seq = r.Sequence;
        var pool = _backend.KvPool;
        if (!r.Started)
        {
            r.BaseLength = seq.Length;
            seq.ResetPenalties();
            if (r.Source.PenalizedTokens is { } penalized) seq.RecordForPenalties([.. penalized]);
            r.Started = true;
        }
        if (FailIfAloneTooBig(r, neededBlocks: pool.BlocksFor((long)r.BaseLength + r.Tokens.Count))) return -1;
        RecomputeInChunks(r);
        r.Attached = 0;
        if (seq.Length == 0) r.Appended = r.Attached = seq.AttachCachedPrefix(CollectionsMarshal.AsSpan(r.Tokens)); // BaseLength is 0 then

        int length = seq.Length;
        long fitting = ((long)pool.BlocksFor(length) + Math.Max(0, freeBlocks)) * pool.BlockSize - length; // positions the free blocks let it grow by
        int n = (int)Math.Min(Math.Min(r.Pending, budget), Math.Max(0, fitting));
        if (n > 0)
        {
            r.Admission = ++_admissions;
            return n;
        }
        if (r.Appended > 0) seq.Truncate(r.BaseLength); // give the revived prefix blocks back while waiting
        r.Appended = 0;
        return 0;
    }

    /// <summary>Fails <paramref name="r"/> when <paramref name="neededBlocks"/> exceed the whole pool: no waiting or preempting can make it fit.</summary>
    private bool FailIfAloneTooBig(Request r, int neededBlocks)
    {
        var pool = _backend.KvPool;
        if (neededBlocks <= pool.TotalBlocks) return false;
        Fail(r, new KvPoolExhaustedException(neededBlocks, pool.FreeBlocks, pool.TotalBlocks, pool.BlockSize));
        return true;
    }

    /// <summary>Runs the step, preempting on a full pool; false when nothing ran (every item left the batch, or the loop stops).</summary>
    private bool RunStep(List<(Request Request, int Count)> batch)
    {
        while (batch.Count > 0)
        {
            var items = new SequenceChunk[batch.Count];
            for (int i = 0; i < items.Length; i++)
            {
                var (r, n) = batch[i];
                items[i] = new SequenceChunk(r.Sequence, CollectionsMarshal.AsSpan(r.Tokens).Slice(r.Appended, n).ToArray(), r.FinalLength);
            }
            // A step of one request also stops for that request's cancellation (a long prefill of a lone user ends
            // at the backend's next chunk); a shared step runs on, since cancelling it would stall the others.
            var own = batch.Count == 1 ? batch[0].Request.Source.CancellationToken : default;
            using var linked = own.CanBeCanceled ? CancellationTokenSource.CreateLinkedTokenSource(_stop.Token, own) : null;
            try
            {
                _backend.Step(items, linked?.Token ?? _stop.Token);
                return true;
            }
            catch (KvPoolExhaustedException e)
            {
                var victim = _running.MaxBy(r => r.Admission)!;
                batch.RemoveAll(b => b.Request == victim);
                // Alone, it fails only if the whole pool is too small; else blocks held elsewhere may yet be freed.
                if (_running.Count > 1 || !FailIfAloneTooBig(victim, e.NeededBlocks + _backend.KvPool.BlocksFor(victim.Sequence.Length)))
                    Preempt(victim);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested || own.IsCancellationRequested)
            {
                return false; // nothing changed (Step is all or nothing); a cancelled request is finished at the next step
            }
            catch (Exception e)
            {
                foreach (var (r, _) in batch) Fail(r, e); // the step changed nothing; its requests cannot go on
                return false;
            }
        }
        return false;
    }

    /// <summary>
    /// When the tokens <paramref name="r"/> knows take its sequence to the other rope than its cache holds (adaptive rope
    /// scaling: a decode step past the switch, or a prompt that carries a short history past it), the backend's step
    /// would first run every cached position again, a prefill of the whole sequence inside one step that every other
    /// request of the batch waits for (about 4.5 s at 32k on an H200). Instead the sequence is emptied, and what it held
    /// joins the front of the request's tokens: they are appended again in chunks within the prefill budget, each in the
    /// new rope (<see cref="SequenceChunk.FinalLength"/>), while the others keep decoding. Sampling and penalty counts
    /// are untouched: appending samples nothing, and the request samples again only once all its tokens are back.
    /// </summary>
    private void RecomputeInChunks(Request r)
    {
        var seq = r.Sequence;
        if (seq.Length == 0 || !seq.RecomputesAt(r.FinalLength)) return;
        int[] earlier = [.. seq.Tokens.Take(r.BaseLength)]; // the sequence's positions before this request
        seq.Truncate(0);
        r.Tokens.InsertRange(0, earlier);
        (r.BaseLength, r.Appended) = (0, 0);
        Interlocked.Increment(ref _ropeRecomputes);
    }

    private void Preempt(Request r)
    {
        r.Sequence.Truncate(r.BaseLength);
        r.Appended = 0;
        _running.Remove(r);
        _waiting.AddFirst(r);
        Interlocked.Increment(ref _preemptions);
    }

    /// <summary>
    /// The next token of every request whose rows all ran: one batched sample (one synchronisation on the GPU), each
    /// with its own options and step. If the batch fails, each request is sampled alone so only the bad one fails; a
    /// request whose logits leave no token (NaN weights) fails with the reason its sequence's own sample gives.
    /// </summary>
    private void SampleAll(List<Request> ready)
    {
        if (ready.Count == 0) return;
        var draws = new SampleRequest[ready.Count];
        for (int i = 0; i < draws.Length; i++) draws[i] = new SampleRequest(ready[i].Sequence, ready[i].Source.Sampling, ready[i].Sampled);
        var tokens = new int[ready.Count];
        try
        {
            _backend.Sample(draws, tokens);
        }
        catch (Exception) when (ready.Count > 1)
        {
            foreach (var r in ready) SampleAlone(r);
            return;
        }
        catch (Exception e)
        {
            Fail(ready[0], e);
            return;
        }
        for (int i = 0; i < ready.Count; i++)
        {
            if (tokens[i] == SampleRequest.NoToken) SampleAlone(ready[i]); // nothing was counted: it throws the reason
            else Accept(ready[i], tokens[i]);
        }
    }

    private void SampleAlone(Request r)
    {
        try { Accept(r, r.Sequence.Sample(r.Source.Sampling, r.Sampled)); }
        catch (Exception e) { Fail(r, e); }
    }

    private void Accept(Request r, int token)
    {
        var source = r.Source;
        r.Sampled++;
        r.Output.Writer.TryWrite(token);
        if (source.EosTokenIds.Contains(token)) Finish(r, FinishReason.EndOfSequence);
        else if (r.Sampled >= source.MaxNewTokens) Finish(r, FinishReason.MaxTokens);
        else if (r.Sequence.Length >= r.Sequence.Capacity) Finish(r, FinishReason.MaxContext);
        else if (source.CancellationToken.IsCancellationRequested) Finish(r, FinishReason.Cancelled);
        else r.Tokens.Add(token);
    }

    private void Finish(Request r, FinishReason reason)
    {
        Retire(r);
        r.Output.Writer.TryComplete();
        r.Done.TrySetResult(reason);
    }

    private void Fail(Request r, Exception e)
    {
        Retire(r);
        r.Output.Writer.TryComplete(e);
        r.Done.TrySetException(e);
    }

    private void Retire(Request r)
    {
        _running.Remove(r);
        _waiting.Remove(r);
        lock (_busy) _busy.Remove(r.Sequence);
    }

    /// <summary>
    /// New blocks appending <paramref name="n"/> positions to a sequence of <paramref name="length"/> takes. A copy of
    /// a shared partial last block (after a fork) is not counted: the step then finds the pool full and preempts.
    /// </summary>
    private int BlocksToGrow(int length, int n) =>
        _backend.KvPool.BlocksFor((long)length + n) - _backend.KvPool.BlocksFor(length);

    private sealed class Request
    {
        public Request(GenerationRequest source)
        {
            Source = source;
            Tokens = [.. source.Prompt];
            Handle = new GenerationHandle(Output.Reader, Done.Task);
        }

        public GenerationRequest Source { get; }
        public ISequence Sequence => Source.Sequence;

        /// <summary>The prompt, then each sampled token that is to be appended: what this request puts in its sequence.</summary>
        public List<int> Tokens { get; }

        /// <summary>Of <see cref="Tokens"/>, how many the sequence holds now.</summary>
        public int Appended { get; set; }

        public int Pending => Tokens.Count - Appended;

        /// <summary>The sequence's length before this request; 0 once it recomputes them (<see cref="RecomputeInChunks"/>).</summary>
        public int BaseLength { get; set; }

        /// <summary>The length the sequence reaches when every known token is in.</summary>
        public int FinalLength => BaseLength + Tokens.Count;

        /// <summary>Positions the current admission took from the prefix cache.</summary>
        public int Attached { get; set; }

        /// <summary>Of the prompt, the fewest positions any admission that ran took from the prefix cache; null before the first step.</summary>
        private int? _cachedPrompt;

        public bool Started { get; set; }
        public long Sampled { get; set; }
        public long Admission { get; set; }
        public Channel<int> Output { get; } = Channel.CreateUnbounded<int>(new() { SingleWriter = true });
        public TaskCompletionSource<FinishReason> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>What <see cref="Submit"/> returns for this request.</summary>
        public GenerationHandle Handle { get; }

        /// <summary>
        /// After a step this request ran in: its prompt positions the current admission took from the prefix cache
        /// count as cached unless an earlier run of the request reused fewer (and so computed the rest itself).
        /// </summary>
        public void CountCachedPrompt()
        {
            int cached = Math.Min(Attached, Source.Prompt.Count);
            if (_cachedPrompt is int before && before <= cached) return;
            _cachedPrompt = cached;
            Handle.SetCachedPromptTokens(cached);
        }
    }
}

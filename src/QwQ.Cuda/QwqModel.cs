using System.Runtime.CompilerServices;
using System.Threading.Channels;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;

namespace QwQ.Cuda;

/// <summary>
/// A loaded model: configuration, tokenizer, chat template, sampling defaults and a backend (GPU or CPU).
/// <para>
/// Thread safety: a QwqModel may be shared; <see cref="CreateSession"/> may be called from any thread. Each
/// <see cref="ChatSession"/> serves one caller at a time. Every generation (sessions, <see cref="Chat.QwqChatClient"/>,
/// <see cref="GenerateBatchAsync"/>) runs on the model's one <see cref="Scheduler"/>, so concurrent work is batched
/// into shared forward passes on the GPU.
/// </para>
/// <para>Dispose frees everything the backend holds (all GPU memory), and ends every session created from it.</para>
/// </summary>
public sealed class QwqModel : IDisposable
{
    private readonly object _gate = new();
    private readonly List<ChatSession> _sessions = [];
    private bool _disposed;

    private QwqModel(IModelBackend backend, QwenTokenizer tokenizer, ChatTemplate template, GenerationConfig generationConfig,
        string? directory, IReadOnlyList<string> warnings, bool hasGenerationConfig, SchedulerOptions? scheduler)
    {
        Backend = backend;
        Scheduler = new BatchScheduler(backend, scheduler) { ReleaseIdle = ReleaseIdleSession };
        Tokenizer = tokenizer;
        Template = template;
        GenerationConfig = generationConfig;
        ModelDirectory = directory;
        Warnings = warnings;
        GenerationDefaults = DefaultsFrom(generationConfig, hasGenerationConfig);
        // <|im_end|> ends a chat turn even if a generation_config.json forgets it.
        EosTokenIds = [.. generationConfig.EosTokenIds.Concat([tokenizer.ImEndId, tokenizer.EndOfTextId]).Distinct()];
    }

    public ModelConfig Config => Backend.Config;
    public QwenTokenizer Tokenizer { get; }
    public ChatTemplate Template { get; }
    public IModelBackend Backend { get; }

    /// <summary>Continuous batching over <see cref="Backend"/>: every generation of this model is a request here.</summary>
    public BatchScheduler Scheduler { get; }
    public GenerationConfig GenerationConfig { get; }

    /// <summary>Sampling from generation_config.json (QwQ: temperature 0.6, top_p 0.95, top_k 40).</summary>
    public SamplingOptions GenerationDefaults { get; }

    /// <summary>Tokens that end generation: generation_config.json's, plus <c>&lt;|im_end|&gt;</c> and <c>&lt;|endoftext|&gt;</c>.</summary>
    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>The resolved model directory; null for synthetic weights without one.</summary>
    public string? ModelDirectory { get; }

    /// <summary>Things the user may want to know about (e.g. a chat template that differs from QwQ's).</summary>
    public IReadOnlyList<string> Warnings { get; }

    /// <summary>
    /// Loads a model on a background thread: a local directory or a Hugging Face id in the local HF cache
    /// (see <see cref="ModelLocator"/>), or synthetic weights when <see cref="QwqModelOptions.Synthetic"/> names a preset.
    /// Config, tokenizer and template are checked before any weights are read.
    /// </summary>
    /// <exception cref="QwqException">The model cannot be found or loaded; the message says what and how to fix it.</exception>
    public static Task<QwqModel> LoadAsync(string? modelPathOrHfId, QwqModelOptions? options = null,
        IProgress<LoadProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options ??= new QwqModelOptions();
        return Task.Factory.StartNew(() => Load(modelPathOrHfId, options, progress, cancellationToken),
            cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>Synthetic weights for <see cref="QwqModelOptions.Synthetic"/> (tokenizer from <see cref="QwqModelOptions.TokenizerPath"/>).</summary>
    public static Task<QwqModel> LoadAsync(QwqModelOptions options, IProgress<LoadProgress>? progress = null, CancellationToken cancellationToken = default) =>
        LoadAsync(null, options, progress, cancellationToken);

    /// <summary>
    /// Wraps an already created backend (tests, custom backends). The model takes ownership of <paramref name="backend"/>.
    /// </summary>
    public static QwqModel Create(IModelBackend backend, QwenTokenizer tokenizer, GenerationConfig? generationConfig = null, ChatTemplate? template = null,
        SchedulerOptions? scheduler = null)
    {
        CheckTokenizerFits(tokenizer, backend.Config, "the tokenizer");
        return new QwqModel(backend, tokenizer, template ?? ChatTemplate.Qwq, generationConfig ?? GenerationConfig.Default, null, [], generationConfig is not null, scheduler);
    }

    /// <summary>Opens a conversation with its own KV cache of <paramref name="maxContext"/> positions (null: the backend's maximum).</summary>
    public ChatSession CreateSession(int? maxContext = null)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var session = new ChatSession(this, Backend.CreateSequence(maxContext));
            _sessions.Add(session);
            return session;
        }
    }

    /// <summary>Whether <see cref="Dispose()"/> has begun (clients over the model name it, not their sessions, when it is gone).</summary>
    internal bool IsDisposed
    {
        get { lock (_gate) return _disposed; }
    }

    /// <summary>
    /// The scheduler's <see cref="BatchScheduler.ReleaseIdle"/>: the least recently used session that is not generating
    /// and holds KV gives it back. Sessions keep their KV between turns so a conversation prefills only its new turn;
    /// when they fill the pool a new generation could never start. The released session prefills its whole conversation
    /// on its next turn, reattaching the full blocks the prefix cache still holds.
    /// </summary>
    private bool ReleaseIdleSession()
    {
        ChatSession[] sessions;
        lock (_gate)
        {
            if (_disposed) return false;
            sessions = [.. _sessions];
        }
        foreach (var s in sessions.OrderBy(s => s.LastUsed))
            if (s.TryReleaseKv()) return true;
        return false;
    }

    internal void Forget(ChatSession session)
    {
        lock (_gate) _sessions.Remove(session);
    }

    /// <summary>
    /// Generates an answer to every prompt with one model, all through <see cref="Scheduler"/>: up to its
    /// <see cref="SchedulerOptions.MaxSequences"/> prompts share each forward pass, and prompts that start alike
    /// (e.g. several samples of one question) reuse the KV blocks of their common prefix once it is computed. Results
    /// are yielded as each prompt finishes, not in input order; <paramref name="prompts"/> is read as the batch goes,
    /// so a long input need not be in memory. A prompt that is invalid on its own (empty, longer than the context,
    /// bad options) gives a result with <see cref="BatchResult.Error"/>; other failures end the enumeration.
    /// Cancelling <paramref name="cancellationToken"/> throws <see cref="OperationCanceledException"/> from the
    /// enumeration once the prompts in flight have stopped; every result yielded before was complete. Disposing the
    /// model ends it with <see cref="ObjectDisposedException"/>.
    /// </summary>
    public async IAsyncEnumerable<BatchResult> GenerateBatchAsync(IEnumerable<BatchPrompt> prompts,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        lock (_gate) ObjectDisposedException.ThrowIf(_disposed, this);
        var results = Channel.CreateUnbounded<BatchResult>(new UnboundedChannelOptions { SingleReader = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // Twice what the scheduler runs at once: every step stays full while finished prompts are replaced.
        using var slots = new SemaphoreSlim(2 * Scheduler.Options.MaxSequences);

        async Task RunOne(BatchPrompt prompt)
        {
            try
            {
                var result = await GenerateOneAsync(prompt, stop.Token).ConfigureAwait(false);
                // A prompt cut short by the caller's cancellation is not a result.
                if (!(stop.IsCancellationRequested && result.Result?.FinishReason == FinishReason.Cancelled))
                    results.Writer.TryWrite(result);
            }
            catch (Exception e)
            {
                // Disposing the model fails the prompts in flight with the scheduler's ObjectDisposedException: name the model,
                // which is what the caller disposed.
                results.Writer.TryComplete(e is ObjectDisposedException && IsDisposed
                    ? new ObjectDisposedException(GetType().FullName, "the model was disposed while the batch ran")
                    : e);
                stop.Cancel();
            }
            finally
            {
                slots.Release();
            }
        }

        var producer = Task.Run(async () =>
        {
            var running = new List<Task>();
            Exception? failed = null;
            try
            {
                foreach (var prompt in prompts)
                {
                    await slots.WaitAsync(stop.Token).ConfigureAwait(false);
                    running.Add(RunOne(prompt));
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
            catch (Exception e) // the caller's enumeration of prompts failed
            {
                failed = e;
                stop.Cancel();
            }
            await Task.WhenAll(running).ConfigureAwait(false);
            results.Writer.TryComplete(failed);
        }, CancellationToken.None);

        try
        {
            await foreach (var result in results.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return result;
        }
        finally
        {
            // Also when the caller stops enumerating early: stop what runs, and free its sequences, before returning.
            stop.Cancel();
            await producer.ConfigureAwait(false);
        }
        cancellationToken.ThrowIfCancellationRequested();
    }

    private async Task<BatchResult> GenerateOneAsync(BatchPrompt prompt, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        int[] tokens;
        GenerationOptions options;
        SamplingOptions sampling;
        try
        {
            if ((prompt.Messages is null) == (prompt.RawText is null))
                throw new OptionException($"prompt '{prompt.Id}': give either Messages or RawText");
            tokens = prompt.Messages is { } messages
                ? Tokenizer.Encode(Template.Apply(messages, null, addGenerationPrompt: true))
                : Tokenizer.Encode(prompt.RawText!);
            options = prompt.Options ?? new GenerationOptions();
            sampling = options.Sampling ?? GenerationDefaults;
            options.Validate();
            sampling.Validate(Tokenizer.VocabSize);
        }
        catch (QwqException e)
        {
            return new BatchResult(prompt.Id, null, e.Message);
        }
        // Templated prompts end in "<think>\n"; raw ones are in reasoning only if they leave a <think> open.
        bool reasoning = prompt.Messages is not null || ParsedGeneration.EndsInReasoning(tokens, Tokenizer);
        using var sequence = Backend.CreateSequence();
        try
        {
            var (_, result) = await ParsedGeneration.RunAsync(this, sequence, tokens, reasoning, sampling, options, null, ct).ConfigureAwait(false);
            return new BatchResult(prompt.Id, result);
        }
        catch (OptionException e)
        {
            return new BatchResult(prompt.Id, null, e.Message);
        }
    }

    /// <summary>
    /// How long Dispose waits for running generations to stop after cancelling them. They stop at the next token or
    /// prefill chunk, well within this; the bound only keeps a stuck backend call from hanging the caller.
    /// </summary>
    internal static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Cancels every running generation, waits for them to stop (up to 10 s in all), then ends the sessions and frees
    /// the backend. Streams in progress end with a Cancelled update.
    /// </summary>
    public void Dispose() => Dispose(StopTimeout);

    internal void Dispose(TimeSpan wait)
    {
        ChatSession[] sessions;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            sessions = [.. _sessions];
            _sessions.Clear();
        }
        // All cancelled first so they stop together, then one deadline for all of them.
        foreach (var s in sessions) s.CancelRunning();
        long deadline = Environment.TickCount64 + (long)wait.TotalMilliseconds;
        TimeSpan Left() => TimeSpan.FromMilliseconds(Math.Max(0, deadline - Environment.TickCount64));
        foreach (var s in sessions) s.Dispose(Left());
        // Before the backend: no step may run on freed memory (a step stuck past the deadline is the backend's to survive).
        Scheduler.Dispose(Left());
        Backend.Dispose();
    }

    internal static QwqModel Load(string? modelPathOrHfId, QwqModelOptions options, IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (modelPathOrHfId is null && options.Synthetic is null)
            throw new OptionException("no model given: pass a model directory or Hugging Face id, or set Synthetic to a preset such as \"qwq-32b\"");

        progress?.Report(new LoadProgress("reading config", 0, 0));
        string? dir = modelPathOrHfId is null ? null : ModelLocator.Resolve(modelPathOrHfId);
        ModelConfig config;
        if (options.Synthetic is not null)
        {
            config = ModelPresets.Get(options.Synthetic);
        }
        else
        {
            string configPath = Path.Combine(dir!, "config.json");
            if (!File.Exists(configPath))
                throw new ConfigException($"{configPath} does not exist: '{dir}' is not a Hugging Face model directory (it needs config.json, the tokenizer files and *.safetensors)");
            config = ModelConfig.Load(configPath);
        }
        if (options.Engine.MaxContext is int asked && asked > MemoryPlan.ModelMaxPositions(config))
            throw new OptionException($"--max-context {asked} exceeds the model's {MemoryPlan.ModelMaxPositions(config)} positions");

        // synthetic presets carry the release's tokenizer files inside the library
        string? tokenizerDir = options.TokenizerPath ?? dir ?? Presets.PresetFiles.Extract(options.Synthetic!);
        if (tokenizerDir is null)
            throw new OptionException($"synthetic '{options.Synthetic}' weights need a tokenizer: pass --tokenizer DIR (a directory with tokenizer.json and tokenizer_config.json)");
        if (!Directory.Exists(tokenizerDir))
            throw new QwqException($"Tokenizer directory '{tokenizerDir}' does not exist.");
        progress?.Report(new LoadProgress("loading tokenizer", 0, 0));
        var tokenizer = QwenTokenizer.Load(tokenizerDir);
        CheckTokenizerFits(tokenizer, config, $"the tokenizer in '{tokenizerDir}'");

        var warnings = new List<string>();
        var template = ChatTemplate.Load(tokenizerDir, out string? templateWarning);
        if (templateWarning is not null) warnings.Add(templateWarning);
        string genPath = Path.Combine(dir ?? tokenizerDir, "generation_config.json");
        var generation = GenerationConfig.Load(genPath);

        if (dir is not null && options.Synthetic is null && Directory.GetFiles(dir, "*.safetensors").Length == 0)
            throw new WeightsException($"{dir}: no *.safetensors weights found. Download the checkpoint's weights into it, or run without weights with --synthetic qwq-32b.");

        ct.ThrowIfCancellationRequested();
        string? checkpoint = options.Synthetic is null ? dir : null;
        var backend = BackendFactory.Create(options.Backend, config, checkpoint, options.Engine, tokenizer.VocabSize, progress, ct);
        try
        {
            ct.ThrowIfCancellationRequested();
            return new QwqModel(backend, tokenizer, template, generation, dir, warnings, File.Exists(genPath), options.Scheduler);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    internal static void CheckTokenizerFits(QwenTokenizer tokenizer, ModelConfig config, string what)
    {
        if (tokenizer.VocabSize > config.VocabSize)
            throw new ConfigException(
                $"{what} has token ids up to {tokenizer.VocabSize - 1}, but the model's vocab_size is {config.VocabSize}: " +
                "the tokenizer does not belong to this model. Use the tokenizer files that came with the checkpoint.");
    }

    private static SamplingOptions DefaultsFrom(GenerationConfig g, bool hasFile)
    {
        // Without a generation_config.json, QwQ's published defaults apply (transformers' would be temperature 1, top_k 50).
        if (!hasFile) return SamplingOptions.FromGenerationConfig();
        var s = SamplingOptions.FromGenerationConfig((float)g.Temperature, (float)g.TopP, g.TopK, (float)g.RepetitionPenalty);
        return g.DoSample ? s : s with { Temperature = 0f };
    }
}

using QwQ.Cuda.Native;

namespace QwQ.Cuda.Sampling;

/// <summary>
/// Samples the next token on the GPU from the last position's fp32 logits, without copying them to the host
/// (kernels/sampling.cu). <c>SampleAsync</c> only enqueues work (4 bytes come back, into pinned memory);
/// <see cref="ReadResult"/> is the one synchronisation per token. The token also stays on the device at
/// <see cref="ResultDevicePtr"/> for the next step's embedding. Semantics, integer weights and RNG are those of
/// <see cref="CpuSampler"/>, which is the reference: same inputs, seed and step ⇒ same token.
/// The sampler keeps device token counts for the penalties: every sampled token is counted by the kernel itself.
/// Where every logit is −∞ or NaN after bias and penalties the kernels write <see cref="NoTokenLeft.Token"/> and count
/// nothing; <c>Sample</c> then throws the reason, the asynchronous forms leave that token for the caller to check.
/// Not thread-safe; use it on one stream at a time.
/// </summary>
internal sealed class GpuSampler : IDisposable
{
    [KernelEntry] internal const string PrepareKernel = "sampling_prepare_f32";
    [KernelEntry] internal const string ArgmaxKernel = "sampling_argmax_f32";
    [KernelEntry] internal const string CompactKernel = "sampling_compact_f32";
    [KernelEntry] internal const string RadixPassKernel = "sampling_radix_pass_f32";
    [KernelEntry] internal const string DrawKernel = "sampling_draw_f32";
    [KernelEntry] internal const string RecordKernel = "sampling_record_i32";
    [KernelEntry] internal const string ZeroKernel = "sampling_zero_u32";
    [KernelEntry] internal const string GreedyRowsKernel = "sampling_greedy_rows_f32";

    // Must match SAMPLING_* in kernels/sampling.cu.
    private const int Tile = 1024;
    private const int PrepThreads = 256;
    private const int SelectThreads = 1024; // sampling_argmax_f32
    private const int RadixBins = 2048;
    private const int MaxTiles = 4 * PrepThreads; // sampling_draw_f32's last block scans <= 4 tiles per thread
    private const int StateBytes = 64;            // sizeof(SamplingState) = 40, rounded up
    private const int FlagBias = 1, FlagRepetition = 2, FlagPresenceFrequency = 4, FlagTemperature = 8;

    private readonly int vocabRows;
    private readonly int validVocab;
    private readonly int numTiles;
    private readonly CudaKernel prepare, argmax, compact, radixPass, draw, record, zero, greedyRows;

    private readonly DeviceBuffer counts;     // [vocabRows] int32 occurrences since Reset
    private readonly DeviceBuffer processed;  // [validVocab] fp32 logits after bias/penalties/temperature
    private readonly DeviceBuffer blockMax;   // [numTiles] fp32 per-tile max
    private readonly DeviceBuffer blockArg;   // [numTiles] int32 per-tile argmax (lowest id)
    private readonly DeviceBuffer segId;      // [numTiles * Tile] int32 per-tile candidates, id order
    private readonly DeviceBuffer segKey;     // [numTiles * Tile] uint32 their keys
    private readonly DeviceBuffer segW;       // [numTiles * Tile] fp32 their exp(d)
    private readonly DeviceBuffer segCount;   // [numTiles] int32 candidates per tile
    private readonly DeviceBuffer state;      // [1] SamplingState (kernels/sampling.cu): thresholds, select progress
    private readonly DeviceBuffer hist;       // [RadixBins] u64 global radix histogram, all 0 between launches
    private readonly DeviceBuffer tileMass;   // [numTiles] u64 kept integer mass per tile
    private readonly DeviceBuffer result;     // [1] int32 the sampled token
    private readonly PinnedHostBuffer resultHost; // [1] int32
    private DeviceBuffer? bias;               // [validVocab] fp32 dense logit bias, allocated on first use
    private float[]? biasHost;                // [validVocab] staging for bias uploads
    private DeviceBuffer? tokens;             // [capacity] int32 staging for Record
    private IReadOnlyDictionary<int, float>? uploadedBias;
    private SamplingOptions? validated;
    private bool disposed;

    /// <param name="lib">Loaded kernels (needs sampling.ptx).</param>
    /// <param name="vocabRows">Rows of the logits (152064 for QwQ).</param>
    /// <param name="validVocab">The tokenizer's size (151669 for QwQ): ids at or above it are never sampled.</param>
    /// <param name="defaultSeed">Seed used when <see cref="SamplingOptions.Seed"/> is null; null draws one.</param>
    public GpuSampler(PtxLibrary lib, int vocabRows, int validVocab, ulong? defaultSeed = null)
    {
        ArgumentNullException.ThrowIfNull(lib);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(validVocab);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabRows, validVocab);
        numTiles = (validVocab + Tile - 1) / Tile;
        if (numTiles > MaxTiles)
            throw new ArgumentOutOfRangeException(nameof(validVocab), $"GpuSampler supports up to {MaxTiles * Tile} tokens.");
        this.vocabRows = vocabRows;
        this.validVocab = validVocab;
        DefaultSeed = defaultSeed ?? (ulong)Random.Shared.NextInt64();

        prepare = lib.GetKernel(PrepareKernel);
        argmax = lib.GetKernel(ArgmaxKernel);
        compact = lib.GetKernel(CompactKernel);
        radixPass = lib.GetKernel(RadixPassKernel);
        draw = lib.GetKernel(DrawKernel);
        record = lib.GetKernel(RecordKernel);
        zero = lib.GetKernel(ZeroKernel);
        greedyRows = lib.GetKernel(GreedyRowsKernel);

        var owned = new List<IDisposable>();
        try
        {
            DeviceBuffer Alloc(long bytes)
            {
                var b = DeviceBuffer.Allocate(bytes);
                owned.Add(b);
                return b;
            }
            counts = Alloc(4L * vocabRows);
            processed = Alloc(4L * validVocab);
            blockMax = Alloc(4L * numTiles);
            blockArg = Alloc(4L * numTiles);
            segId = Alloc(4L * numTiles * Tile);
            segKey = Alloc(4L * numTiles * Tile);
            segW = Alloc(4L * numTiles * Tile);
            segCount = Alloc(4L * numTiles);
            state = Alloc(StateBytes);
            hist = Alloc(8L * RadixBins);
            tileMass = Alloc(8L * numTiles);
            result = Alloc(4);
            resultHost = PinnedHostBuffer.Allocate(4);
            owned.Add(resultHost);
            counts.Memset32(0);
            result.Memset32(0);
            state.Memset32(0); // the kernels keep hist and the block counter at 0 between launches
            hist.Memset32(0);
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
    }

    public int VocabRows => vocabRows;

    public int ValidVocab => validVocab;

    public ulong DefaultSeed { get; }

    /// <summary>Device int32 holding the last sampled token (valid once the stream reaches it).</summary>
    public ulong ResultDevicePtr => result.Ptr;

    /// <summary>Device int32 [vocabRows]: occurrences of each id since <c>Reset</c>.</summary>
    public ulong CountsDevicePtr => counts.Ptr;

    /// <summary>Enqueues zeroing of the token counts (start of a generation).</summary>
    public void Reset(CudaStream s) => Reset(s, counts.Ptr);

    /// <summary>Enqueues zeroing of the token counts at <paramref name="countsPtr"/> (int32 [vocabRows], a sequence's own).</summary>
    public unsafe void Reset(CudaStream s, ulong countsPtr)
    {
        ThrowIfDisposed();
        ulong p = countsPtr;
        int n = vocabRows;
        void** args = stackalloc void*[] { &p, &n };
        zero.Launch(new Dim3((uint)((n + 255) / 256)), new Dim3(256), 0, s, args);
    }

    /// <summary>
    /// Counts <paramref name="tokens"/> as seen (e.g. the prompt, for HF-style repetition penalty). Ids outside
    /// [0, vocabRows) are ignored. Uses a synchronous upload (ordered with the blocking stream): not for graph capture.
    /// </summary>
    public void Record(CudaStream s, ReadOnlySpan<int> tokens) => Record(s, tokens, counts.Ptr);

    /// <summary>As <see cref="Record(CudaStream, ReadOnlySpan{int})"/>, into the counts at <paramref name="countsPtr"/>.</summary>
    public unsafe void Record(CudaStream s, ReadOnlySpan<int> tokens, ulong countsPtr)
    {
        ThrowIfDisposed();
        if (tokens.IsEmpty) return;
        if (this.tokens is null || this.tokens.Bytes < 4L * tokens.Length)
        {
            this.tokens?.Dispose();
            this.tokens = null;
            this.tokens = DeviceBuffer.Allocate(4L * Math.Max(tokens.Length, 1024));
        }
        this.tokens.CopyFromHost(tokens);
        ulong t = this.tokens.Ptr, c = countsPtr;
        int n = tokens.Length, rows = vocabRows;
        void** args = stackalloc void*[] { &t, &n, &c, &rows };
        record.Launch(new Dim3((uint)((n + 255) / 256)), new Dim3(256), 0, s, args);
    }

    /// <summary>
    /// Enqueues the sampling of <paramref name="logits"/> (device fp32 [vocabRows]) at <paramref name="step"/>
    /// (the RNG counter: use a different step per token). No host synchronisation; the token is counted on the
    /// device, written to <see cref="ResultDevicePtr"/> and copied to pinned memory for <see cref="ReadResult"/>.
    /// A new logit-bias dictionary is uploaded synchronously (once per change).
    /// </summary>
    public void SampleAsync(CudaStream s, ulong logits, SamplingOptions o, long step) => SampleAsync(s, logits, counts.Ptr, o, step);

    /// <summary>As <see cref="SampleAsync(CudaStream, ulong, SamplingOptions, long)"/>, with a sequence's own penalty counts.</summary>
    public void SampleAsync(CudaStream s, ulong logits, ulong countsPtr, SamplingOptions o, long step)
    {
        Enqueue(s, logits, countsPtr, o, step, 0);
        result.CopyToHostAsync(resultHost.Ptr, 4, 0, s);
    }

    /// <summary>
    /// Enqueues the sampling of <paramref name="logits"/> like <see cref="SampleAsync(CudaStream, ulong, ulong, SamplingOptions, long)"/>,
    /// with the token copied to <paramref name="tokenHost"/> (pinned memory), so a batch of sequences is sampled
    /// with one synchronisation at the end instead of one each.
    /// </summary>
    public void SampleAsync(CudaStream s, ulong logits, ulong countsPtr, SamplingOptions o, long step, IntPtr tokenHost)
    {
        Enqueue(s, logits, countsPtr, o, step, 0);
        result.CopyToHostAsync(tokenHost, 4, 0, s);
    }

    /// <summary>Whether <paramref name="o"/> can go through <see cref="GreedyRowsAsync"/>: greedy, with nothing that changes the logits.</summary>
    public static bool IsPlainGreedy(SamplingOptions o) =>
        o.IsGreedy && o.LogitBias is not { Count: > 0 } && !o.HasRepetitionPenalty && !o.HasPresenceOrFrequencyPenalty;

    /// <summary>
    /// Greedy tokens of <paramref name="rows"/> sequences in one launch (options that <see cref="IsPlainGreedy"/>):
    /// row r's argmax of the logits at <paramref name="logitsRows"/>[r] is counted in <paramref name="countsRows"/>[r]
    /// and written to <paramref name="tokens"/>[r] (device int32 [rows]). The pointer arrays are device arrays.
    /// Same token as <see cref="Sample(CudaStream, ulong, ulong, SamplingOptions, long)"/> would pick.
    /// </summary>
    public unsafe void GreedyRowsAsync(CudaStream s, ulong logitsRows, ulong countsRows, ulong tokens, int rows)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        int vv = validVocab;
        void** args = stackalloc void*[] { &logitsRows, &countsRows, &tokens, &vv };
        greedyRows.Launch(new Dim3((uint)rows), new Dim3(SelectThreads), 0, s, args);
    }

    /// <summary>Waits for the stream and returns the token of the last <c>SampleAsync</c> (<see cref="NoTokenLeft.Token"/>: none left).</summary>
    public int ReadResult(CudaStream s)
    {
        ThrowIfDisposed();
        s.Synchronize();
        return resultHost.AsSpan<int>()[0];
    }

    /// <summary><c>SampleAsync</c> then <see cref="ReadResult"/>.</summary>
    public int Sample(CudaStream s, ulong logits, SamplingOptions o, long step) => Sample(s, logits, counts.Ptr, o, step);

    /// <summary><see cref="SampleAsync(CudaStream, ulong, ulong, SamplingOptions, long)"/> then <see cref="ReadResult"/>.</summary>
    public int Sample(CudaStream s, ulong logits, ulong countsPtr, SamplingOptions o, long step)
    {
        SampleAsync(s, logits, countsPtr, o, step);
        int token = ReadResult(s);
        return token != NoTokenLeft.Token ? token : throw NoTokenReason(s, logits);
    }

    /// <summary>
    /// Why the kernels found no token in <paramref name="logits"/> (device fp32 [vocabRows]): reads them back, which
    /// allocates, on this error path only.
    /// </summary>
    internal QwQ.Cuda.Errors.QwqException NoTokenReason(CudaStream s, ulong logits)
    {
        ThrowIfDisposed();
        var host = new float[validVocab];
        using var copy = DeviceBuffer.Allocate(4L * validVocab);
        copy.CopyFromDevice(logits, 4L * validVocab, 0, s);
        s.Synchronize();
        copy.CopyToHost<float>(host);
        return NoTokenLeft.Reason(host, validVocab);
    }

    /// <summary>
    /// Test hook: samples like <c>Sample</c> (counting the token) and also returns the exact filtered
    /// distribution, each kept token's integer weight ([validVocab] u64; greedy: 1 on the argmax), to be compared
    /// with <see cref="CpuSampler.FilteredWeights"/>. Allocates; synchronises.
    /// </summary>
    internal ulong[] SampleWithWeights(CudaStream s, ulong logits, SamplingOptions o, long step, out int token)
    {
        using var debug = DeviceBuffer.Allocate(8L * validVocab);
        debug.Memset32(0, s);
        Enqueue(s, logits, counts.Ptr, o, step, debug.Ptr);
        result.CopyToHostAsync(resultHost.Ptr, 4, 0, s);
        token = ReadResult(s);
        if (token == NoTokenLeft.Token) throw NoTokenReason(s, logits);
        var w = debug.ToArray<ulong>();
        if (o.IsGreedy) w[token] = 1;
        return w;
    }

    private unsafe void Enqueue(CudaStream s, ulong logits, ulong countsPtr, SamplingOptions o, long step, ulong debugWeights)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(s);
        ArgumentNullException.ThrowIfNull(o);
        if (logits == 0) throw new ArgumentException("logits is a null device pointer.", nameof(logits));
        if (!ReferenceEquals(o, validated))
        {
            o.Validate(validVocab);
            validated = o;
        }
        SyncBias(o.LogitBias);

        int flags = 0;
        if (o.LogitBias is { Count: > 0 }) flags |= FlagBias;
        if (o.HasRepetitionPenalty) flags |= FlagRepetition;
        if (o.HasPresenceOrFrequencyPenalty) flags |= FlagPresenceFrequency;
        if (!o.IsGreedy) flags |= FlagTemperature;

        ulong lg = logits, bs = bias?.Ptr ?? 0, cn = countsPtr, pr = processed.Ptr, bm = blockMax.Ptr, ba = blockArg.Ptr;
        int vv = validVocab, tiles = numTiles;
        float rp = o.RepetitionPenalty, pres = o.PresencePenalty, freq = o.FrequencyPenalty, temp = o.Temperature;
        void** prepArgs = stackalloc void*[] { &lg, &bs, &cn, &pr, &bm, &ba, &vv, &flags, &rp, &pres, &freq, &temp };
        prepare.Launch(new Dim3((uint)tiles), new Dim3(PrepThreads), 0, s, prepArgs);

        ulong res = result.Ptr;
        if (o.IsGreedy)
        {
            void** amArgs = stackalloc void*[] { &bm, &ba, &tiles, &cn, &res };
            argmax.Launch(new Dim3(1), new Dim3(SelectThreads), 0, s, amArgs);
            return;
        }

        // Candidates per tile; also resets the device thresholds to "keep all".
        ulong si = segId.Ptr, sk = segKey.Ptr, sw = segW.Ptr, sc = segCount.Ptr, st = state.Ptr;
        void** compArgs = stackalloc void*[] { &pr, &bm, &vv, &si, &sk, &sw, &sc, &st };
        compact.Launch(new Dim3((uint)tiles), new Dim3(PrepThreads), 0, s, compArgs);

        // Thresholds by multi-block radix select, 3 launches each; the options decide which run (no host sync).
        int topK = o.TopK;
        float topP = o.TopP;
        if (topK > 0) RadixSelect(s, 0, topK, 1f);
        if (topP < 1f) RadixSelect(s, 1, 0, topP);

        ulong tm = tileMass.Ptr, dbg = debugWeights;
        float minP = o.MinP;
        ulong seed = o.Seed ?? DefaultSeed, stp = (ulong)step;
        void** drawArgs = stackalloc void*[] { &si, &sk, &sw, &sc, &minP, &seed, &stp, &st, &tm, &cn, &res, &dbg };
        draw.Launch(new Dim3((uint)tiles), new Dim3(PrepThreads), 0, s, drawArgs);
    }

    /// <summary>The 3 digit passes (11, 11, 10 bits) of one threshold: top-k (byMass 0) or top-p (byMass 1).</summary>
    private unsafe void RadixSelect(CudaStream s, int byMass, int topK, float topP)
    {
        ulong sk = segKey.Ptr, sw = segW.Ptr, sc = segCount.Ptr, hs = hist.Ptr, st = state.Ptr;
        int pass = 0;
        void** args = stackalloc void*[] { &sk, &sw, &sc, &pass, &byMass, &topK, &topP, &hs, &st }; // read at each launch
        for (; pass < 3; pass++) radixPass.Launch(new Dim3((uint)numTiles), new Dim3(PrepThreads), 0, s, args);
    }

    /// <summary>Uploads the dense bias when a different dictionary instance is passed (synchronous, rare).</summary>
    private void SyncBias(IReadOnlyDictionary<int, float>? logitBias)
    {
        if (ReferenceEquals(logitBias, uploadedBias)) return;
        if (logitBias is { Count: > 0 })
        {
            bias ??= DeviceBuffer.Allocate(4L * validVocab);
            biasHost ??= new float[validVocab];
            Array.Clear(biasHost);
            foreach (var (id, b) in logitBias) biasHost[id] = b;
            bias.CopyFromHost<float>(biasHost); // legacy stream: waits for queued kernels that may read the old bias
        }
        uploadedBias = logitBias;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(disposed, this);

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        counts.Dispose();
        processed.Dispose();
        blockMax.Dispose();
        blockArg.Dispose();
        segId.Dispose();
        segKey.Dispose();
        segW.Dispose();
        segCount.Dispose();
        state.Dispose();
        hist.Dispose();
        tileMass.Dispose();
        result.Dispose();
        resultHost.Dispose();
        bias?.Dispose();
        tokens?.Dispose();
    }
}

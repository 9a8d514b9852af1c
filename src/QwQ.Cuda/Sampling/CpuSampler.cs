namespace QwQ.Cuda.Sampling;

/// <summary>
/// The reference sampler, in plain C#: used by the CPU backend and as the oracle for <see cref="GpuSampler"/>.
/// Same semantics (see <see cref="SamplingOptions"/>), same integer weights and same counter-based RNG
/// (<see cref="SamplingMath"/>), so for identical logits, options, counts, seed and step both pick the same token.
/// Owns its token counts. Allocates only in the constructor (and when a new logit-bias dictionary is seen).
/// Not thread-safe.
/// </summary>
public sealed class CpuSampler
{
    private readonly int vocabRows;
    private readonly int validVocab;
    private readonly int[] counts;        // [vocabRows] occurrences since Reset
    private readonly float[] processed;   // [validVocab] logits after bias/penalties/temperature
    private readonly float[] bias;        // [validVocab] dense logit bias
    private readonly int[] candId;        // [validVocab] candidates (d >= -28) in id order
    private readonly uint[] candKey;      // [validVocab] their order-preserving keys
    private readonly float[] candW;       // [validVocab] their exp(d)
    private readonly ulong[] candQ;       // [validVocab] their integer weights floor(exp(d) * 2^40)
    private readonly ulong[] hist = new ulong[RadixBins]; // radix-select digit histogram
    private IReadOnlyDictionary<int, float>? uploadedBias;
    private SamplingOptions? validated;

    /// <param name="vocabRows">Rows of the logits (the LM head's output size, 152064 for QwQ).</param>
    /// <param name="validVocab">The tokenizer's size (151669 for QwQ): ids at or above it are never sampled.</param>
    /// <param name="defaultSeed">Seed used when <see cref="SamplingOptions.Seed"/> is null; null draws one.</param>
    public CpuSampler(int vocabRows, int validVocab, ulong? defaultSeed = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(validVocab);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabRows, validVocab);
        this.vocabRows = vocabRows;
        this.validVocab = validVocab;
        DefaultSeed = defaultSeed ?? (ulong)Random.Shared.NextInt64();
        counts = new int[vocabRows];
        processed = new float[validVocab];
        bias = new float[validVocab];
        candId = new int[validVocab];
        candKey = new uint[validVocab];
        candW = new float[validVocab];
        candQ = new ulong[validVocab];
    }

    public int VocabRows => vocabRows;

    public int ValidVocab => validVocab;

    public ulong DefaultSeed { get; }

    /// <summary>Occurrences of each id since <see cref="Reset"/> ([vocabRows]).</summary>
    public ReadOnlySpan<int> Counts => counts;

    /// <summary>The logits after bias, penalties and temperature of the last call, [validVocab] (for tests).</summary>
    internal ReadOnlySpan<float> LastProcessed => processed;

    /// <summary>Forgets all counted tokens (start of a generation).</summary>
    public void Reset() => Array.Clear(counts);

    /// <summary>Counts <paramref name="tokens"/> as seen (e.g. the prompt). Ids outside [0, vocabRows) are ignored.</summary>
    public void Record(ReadOnlySpan<int> tokens)
    {
        foreach (int t in tokens)
            if ((uint)t < (uint)vocabRows) counts[t]++;
    }

    /// <summary>
    /// Picks the next token from <paramref name="logits"/> ([vocabRows] or at least [validVocab]) and counts it.
    /// Throws when every logit is −∞ or NaN after bias and penalties (<see cref="NoTokenLeft.Reason"/> says whose).
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, SamplingOptions options, long step)
    {
        return OrReason(TrySample(logits, options, step), logits);
    }

    /// <summary>
    /// As <see cref="Sample"/>, but where no token is left returns <see cref="NoTokenLeft.Token"/> and counts nothing
    /// (what the GPU kernels report), so a batch samples its other rows as usual.
    /// </summary>
    internal int TrySample(ReadOnlySpan<float> logits, SamplingOptions options, long step)
    {
        int token = Select(logits, options, step, default);
        if (token != NoTokenLeft.Token) counts[token]++;
        return token;
    }

    /// <summary>
    /// The exact distribution <see cref="Sample"/> draws from: <paramref name="weights"/> ([validVocab]) receives
    /// each kept token's integer weight (0 for filtered-out ones); greedy puts 1 on the argmax. Counts unchanged.
    /// Returns the token <see cref="Sample"/> would pick at <paramref name="step"/>.
    /// </summary>
    public int FilteredWeights(ReadOnlySpan<float> logits, SamplingOptions options, long step, Span<ulong> weights)
    {
        if (weights.Length < validVocab) throw new ArgumentException($"weights must hold {validVocab} entries.", nameof(weights));
        weights[..validVocab].Clear();
        return OrReason(Select(logits, options, step, weights), logits);
    }

    /// <summary><paramref name="token"/>, or where none was left the reason, worded from the model's own logits.</summary>
    private int OrReason(int token, ReadOnlySpan<float> logits) =>
        token != NoTokenLeft.Token ? token : throw NoTokenLeft.Reason(logits, validVocab);

    // Hot loops index arrays and a pinned pointer rather than spans: the test suite runs Debug builds, where span
    // indexers are calls.
    private unsafe int Select(ReadOnlySpan<float> logits, SamplingOptions o, long step, Span<ulong> weights)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (logits.Length < validVocab)
            throw new ArgumentException($"logits has {logits.Length} entries; at least {validVocab} are needed.", nameof(logits));
        if (!ReferenceEquals(o, validated))
        {
            o.Validate(validVocab);
            validated = o;
        }
        SyncBias(o.LogitBias);

        // 1. bias -> repetition -> presence/frequency -> temperature (same float ops as sampling_prepare_f32).
        bool hasBias = o.LogitBias is { Count: > 0 };
        bool rep = o.HasRepetitionPenalty, pf = o.HasPresenceOrFrequencyPenalty, greedy = o.IsGreedy;
        float rp = o.RepetitionPenalty, pres = o.PresencePenalty, freq = o.FrequencyPenalty, temp = o.Temperature;
        float best = float.NegativeInfinity;
        int bestId = 0;
        fixed (float* lp = logits)
        for (int v = 0; v < validVocab; v++)
        {
            float x = lp[v];
            if (hasBias) x += bias[v];
            if (rep || pf)
            {
                int c = counts[v];
                if (c > 0)
                {
                    if (rep) x = x < 0f ? x * rp : x / rp;
                    if (pf) x -= pres + freq * c;
                }
            }
            if (!greedy) x /= temp;
            if (float.IsNaN(x)) x = float.NegativeInfinity;
            if (x == 0f) x = 0f;
            processed[v] = x;
            if (x > best) { best = x; bestId = v; } // ascending ids: the lowest id wins ties
        }
        // Every logit -inf (or NaN): any pick would be arbitrary (it was id 0), and the caller would not know.
        if (float.IsNegativeInfinity(best))
            return NoTokenLeft.Token;
        if (greedy)
        {
            if (!weights.IsEmpty) weights[bestId] = 1;
            return bestId;
        }

        // 2. Candidates in id order (everything else has integer weight 0).
        int n = 0;
        for (int v = 0; v < validVocab; v++)
        {
            float d = SamplingMath.Delta(processed[v], best);
            if (d >= SamplingMath.CandidateDelta)
            {
                float w = SamplingMath.Exp(d);
                candId[n] = v;
                candKey[n] = SamplingMath.Key(processed[v]);
                candW[n] = w;
                candQ[n] = SamplingMath.Weight(w);
                n++;
            }
        }
        uint[] keys = candKey;
        ulong[] qs = candQ;

        // 3. top-k: threshold = the k-th largest key (all ties kept).
        uint threshold = 0;
        if (o.TopK > 0 && o.TopK < n)
            threshold = RadixSelect(n, null, 0, (ulong)o.TopK);

        // 4. top-p: the largest key threshold whose kept mass reaches ceil(top_p * mass of the top-k survivors).
        if (o.TopP < 1f)
        {
            ulong mass = 0;
            for (int i = 0; i < n; i++)
                if (keys[i] >= threshold) mass += qs[i];
            ulong target = Math.Clamp(SamplingMath.CeilMul(o.TopP, mass), 1ul, mass);
            threshold = RadixSelect(n, qs, threshold, target);
        }

        // 5. min-p and the draw, in id order.
        float minP = o.MinP;
        ulong z = 0;
        for (int i = 0; i < n; i++)
            if (keys[i] >= threshold && candW[i] >= minP) z += qs[i];
        ulong r = SamplingMath.Draw(SamplingMath.Rand64(o.Seed ?? DefaultSeed, step), z);
        int token = -1;
        ulong acc = 0;
        for (int i = 0; i < n; i++)
        {
            if (keys[i] < threshold || !(candW[i] >= minP)) continue;
            ulong q = qs[i];
            if (!weights.IsEmpty) weights[candId[i]] = q;
            acc += q;
            if (token < 0 && acc > r)
            {
                token = candId[i];
                if (weights.IsEmpty) break;
            }
        }
        return token >= 0 ? token : candId[0]; // unreachable: z >= 2^40 (the top token)
    }

    private const int RadixBins = 2048;

    /// <summary>
    /// The largest key t present among the candidates with key &gt;= <paramref name="minKey"/> such that the
    /// weight of {key &gt;= t} reaches <paramref name="need"/> (1 &lt;= need &lt;= total weight). Weight: 1 per
    /// candidate when <paramref name="mass"/> is null (top-k: the need-th largest key), else its integer mass
    /// (top-p). O(n) per digit: the 11/11/10-bit radix select of sampling_radix_pass_f32, which gives the same
    /// result as sorting (RadixSelectModelTests) without sorting or allocating.
    /// </summary>
    private uint RadixSelect(int n, ulong[]? mass, uint minKey, ulong need)
    {
        uint[] keys = candKey;
        ulong[] h = hist;
        uint prefix = 0, mask = 0;
        for (int pass = 0; pass < 3; pass++)
        {
            int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
            uint digitMask = pass == 2 ? 1023u : 2047u;
            Array.Clear(h);
            for (int i = 0; i < n; i++)
            {
                uint k = keys[i];
                if (k >= minKey && (k & mask) == prefix)
                    h[(k >> shift) & digitMask] += mass is null ? 1ul : mass[i];
            }
            ulong above = 0;
            int digit = 0;
            for (int b = RadixBins - 1; b >= 0; b--)
            {
                ulong hb = h[b];
                if (hb > 0 && above < need && need <= above + hb) { digit = b; break; }
                above += hb;
            }
            need -= above;
            prefix |= (uint)digit << shift;
            mask |= digitMask << shift;
        }
        return prefix;
    }

    private void SyncBias(IReadOnlyDictionary<int, float>? logitBias)
    {
        if (ReferenceEquals(logitBias, uploadedBias)) return;
        Array.Clear(bias);
        if (logitBias is not null)
            foreach (var (id, b) in logitBias) bias[id] = b;
        uploadedBias = logitBias;
    }
}

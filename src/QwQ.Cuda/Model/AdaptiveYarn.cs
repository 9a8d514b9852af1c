using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Model;

/// <summary>
/// Turning keys cached under one rotary embedding into the keys another would have written, for length-adaptive YaRN
/// (<see cref="RopeScalingMode.Adaptive"/>) with <see cref="RopeSwitchMethod.Rerotate"/>: the keys of a sequence that
/// outgrows the switch position turn in place from plain RoPE's angles to YaRN's angles and scale. For a key computed
/// from the same input this is exactly the key static YaRN writes; for a whole cache that holds in the first layer only,
/// which is why the backend recomputes instead by default (<see cref="RopeSwitchMethod"/>).
/// <para>
/// A cached key at position p is <c>f_from · R(a_from) · k</c>, R rotating each pair (i, i + D/2) by its angle a_i =
/// <see cref="Rope.Angle"/>(p, inv_freq_i) and f the attention factor. The key the target rope writes is
/// <c>f_to · R(a_to) · k = (f_to / f_from) · R(a_to − a_from) · cached</c>: per pair, one rotation by the angle
/// difference δ_i and one scale. Values (V) carry no rotation and stay as they are.
/// </para>
/// <para>
/// Precision: δ_i is the difference of the two fp32 angles the forward used, taken in double. The angles themselves
/// reach p · inv_freq ≈ 1.3·10⁵ rad at p = 131072 (inv_freq up to 1), where one fp32 ulp is 0.016 rad; in YaRN's ramp
/// pairs (QwQ: pairs 23–40) they are ~10³ rad with ulps of ~6·10⁻⁵. A difference rounded to fp32 would carry that much
/// angle error into the key, which is relative error of the same size. In double the difference is exact (two fp32
/// values within YaRN's factor of each other), and so is the composition: rotating by a_from then by (a_to − a_from) is, before the final
/// rounding of each component, exactly the rotation by a_to that a static run applies. Using the fp32 angles rather
/// than p · (inv_to − inv_from) in exact arithmetic matters for the same reason: the cached key was turned by the
/// rounded angle, and only its rounded complement lands on the rounded target.
/// </para>
/// </summary>
internal static class AdaptiveYarn
{
    /// <summary>
    /// Re-rotates <paramref name="rows"/> <c>[n, D]</c>, each a key (any head, any layer) cached at
    /// <paramref name="position"/> under <paramref name="from"/>, into the key <paramref name="to"/> would have written.
    /// </summary>
    public static void Rerotate(Span<float> rows, int position, RopeParameters from, RopeParameters to)
    {
        int half = from.InverseFrequencies.Length;
        Span<double> cos = half <= 512 ? stackalloc double[half] : new double[half];
        Span<double> sin = half <= 512 ? stackalloc double[half] : new double[half];
        Coefficients(position, from, to, cos, sin);
        Apply(rows, cos, sin);
    }

    /// <summary>
    /// The rotation of one position, cos and sin of δ_i already scaled by f_to / f_from, <c>[D/2]</c> each. Positions share
    /// it across heads and layers, so a cache is re-rotated with one set of trigonometry per position.
    /// </summary>
    public static void Coefficients(int position, RopeParameters from, RopeParameters to, Span<double> cos, Span<double> sin)
    {
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        ArgumentOutOfRangeException.ThrowIfNegative(position);
        int half = from.InverseFrequencies.Length;
        if (to.InverseFrequencies.Length != half)
            throw new ArgumentException($"the ropes rotate {half} and {to.InverseFrequencies.Length} pairs; both must have the head's D/2", nameof(to));
        if (cos.Length != half || sin.Length != half) throw new ArgumentException($"cos and sin need {half} elements each");
        double scale = (double)to.AttentionFactor / from.AttentionFactor;
        for (int i = 0; i < half; i++)
        {
            double delta = (double)Rope.Angle(position, to.InverseFrequencies[i]) - Rope.Angle(position, from.InverseFrequencies[i]);
            cos[i] = Math.Cos(delta) * scale;
            sin[i] = Math.Sin(delta) * scale;
        }
    }

    /// <summary>Applies <see cref="Coefficients"/> to <paramref name="rows"/> <c>[n, D]</c> (HF rotate_half pairs (i, i + D/2)), in double.</summary>
    public static void Apply(Span<float> rows, ReadOnlySpan<double> cos, ReadOnlySpan<double> sin)
    {
        int half = cos.Length, dim = 2 * half;
        if (half == 0 || rows.Length % dim != 0) throw new ArgumentException($"rows must be whole keys of {dim} elements", nameof(rows));
        for (int r = 0; r < rows.Length; r += dim)
        {
            var v = rows.Slice(r, dim);
            for (int i = 0; i < half; i++)
            {
                double x1 = v[i], x2 = v[i + half];
                v[i] = (float)(x1 * cos[i] - x2 * sin[i]);
                v[i + half] = (float)(x2 * cos[i] + x1 * sin[i]);
            }
        }
    }
}

/// <summary>
/// The rotary embedding a backend runs, resolved once from the config and <see cref="EngineOptions.RopeScaling"/> /
/// <see cref="EngineOptions.RopeSwitchPosition"/> and validated (errors name the CLI flags).
/// </summary>
internal sealed record RopePlan
{
    /// <summary>What runs: <see cref="RopeScalingMode.Off"/> whenever the config has no YaRN (everything is plain RoPE then).</summary>
    public required RopeScalingMode Mode { get; init; }

    /// <summary>Adaptive: a sequence longer than this runs YaRN. Unused by the other modes.</summary>
    public required int SwitchPosition { get; init; }

    /// <summary>Adaptive: how a sequence's cache turns at the switch (<see cref="RopeSwitchMethod"/>).</summary>
    public RopeSwitchMethod Method { get; init; } = RopeSwitchMethod.Recompute;

    /// <summary>Plain RoPE: the model without rope_scaling.</summary>
    public required RopeParameters Plain { get; init; }

    /// <summary>The config's YaRN (the same as <see cref="Plain"/> for a config without it).</summary>
    public required RopeParameters Yarn { get; init; }

    /// <summary>The rope of a sequence that is <paramref name="length"/> positions long after the step that runs it.</summary>
    public RopeParameters ForLength(int length) => Mode switch
    {
        RopeScalingMode.Static => Yarn,
        RopeScalingMode.Adaptive => length > SwitchPosition ? Yarn : Plain,
        _ => Plain,
    };

    /// <summary>
    /// Whether blocks whose keys <paramref name="rope"/> wrote may go into the prefix cache. The cache matches blocks by
    /// tokens alone, so with Adaptive only plain blocks do: a short sequence that attached re-rotated YaRN keys would run
    /// plain queries against them. (A sequence whose tokens end past the switch attaches none: it runs YaRN from position 0.)
    /// In the other modes every sequence runs the same rope.
    /// </summary>
    public bool MayPublish(RopeParameters? rope) => Mode != RopeScalingMode.Adaptive || ReferenceEquals(rope, Plain);

    /// <summary>
    /// Whether a sequence holding <paramref name="held"/> positions whose keys are in <paramref name="cacheRope"/> runs them
    /// all again at the step that takes it to <paramref name="length"/> (<see cref="Inference.ISequence.RecomputesAt"/>):
    /// that length asks for the other rope, and the switch recomputes (re-rotation turns the keys in place, unless a failed
    /// step left them in no rope, null).
    /// </summary>
    public bool Recomputes(int held, RopeParameters? cacheRope, int length) =>
        held > 0 && !ReferenceEquals(cacheRope, ForLength(length)) && (Method == RopeSwitchMethod.Recompute || cacheRope is null);

    /// <summary>
    /// Whether cached prefix blocks (<see cref="MayPublish"/>: short-rope keys) serve a sequence whose tokens end at
    /// <paramref name="length"/>: not when its first step would run them all again in the other rope.
    /// </summary>
    public bool PrefixCacheServes(int length) => Method == RopeSwitchMethod.Rerotate || MayPublish(ForLength(length));

    /// <summary>
    /// The plan for <paramref name="config"/>. Null mode: <see cref="RopeScalingMode.Adaptive"/> when the config has YaRN
    /// rope_scaling (on the GPU engine and the CPU reference alike), plain RoPE when it has none.
    /// </summary>
    public static RopePlan Resolve(ModelConfig config, RopeScalingMode? mode, int? switchPosition,
        RopeSwitchMethod method = RopeSwitchMethod.Recompute)
    {
        ArgumentNullException.ThrowIfNull(config);
        // The default is adaptive wherever there is YaRN to switch to (README, "Rope scaling": short texts run the model
        // exactly as trained, long ones exactly static YaRN); without it every mode is plain RoPE.
        var asked = mode ?? (config.RopeScaling is null ? RopeScalingMode.Static : RopeScalingMode.Adaptive);
        if (!Enum.IsDefined(asked)) throw new OptionException($"--rope-scaling {(int)asked} is not a mode: use adaptive, static or off");
        string name = asked.ToString().ToLowerInvariant();
        if (switchPosition is int none && mode is null && config.RopeScaling is null)
            throw new OptionException($"--rope-switch {none} moves where a sequence turns to YaRN, but this model's config.json has no YaRN " +
                                      "rope_scaling, so every sequence runs plain RoPE: drop --rope-switch (QwQ-32B's model card adds " +
                                      "\"rope_scaling\": {\"factor\": 4.0, \"original_max_position_embeddings\": 32768, \"type\": \"yarn\"}; " +
                                      "or run --synthetic qwq-32b-yarn)");
        if (switchPosition is int given && asked != RopeScalingMode.Adaptive)
            throw new OptionException($"--rope-switch {given} applies only to --rope-scaling adaptive (it is the length at which a sequence " +
                                      $"turns to YaRN), and the mode is {name}{(mode is null ? " (the default)" : "")}: pass --rope-scaling adaptive, or drop --rope-switch");
        var plain = Rope.PlainParameters(config);
        if (config.RopeScaling is not { } yarn)
        {
            // Static and Off are well defined without YaRN (the config's rope at every position: plain). Adaptive is not:
            // whoever asks for it expects YaRN past the switch, and QwQ-32B's own config.json ships without rope_scaling
            // (its card says to add it), so running plain RoPE in silence would hide exactly that.
            if (asked == RopeScalingMode.Adaptive)
                throw new OptionException(
                    "--rope-scaling adaptive switches long sequences to YaRN, but this model's config.json has no YaRN rope_scaling. " +
                    "QwQ-32B's model card adds \"rope_scaling\": {\"factor\": 4.0, \"original_max_position_embeddings\": 32768, \"type\": \"yarn\"} " +
                    "for inputs over 32,768 tokens (or run --synthetic qwq-32b-yarn); without it, drop --rope-scaling.");
            if (method == RopeSwitchMethod.Rerotate)
                throw new OptionException("--rope-switch-method rerotate turns a sequence's keys when it crosses to YaRN, but this model's config.json " +
                                          "has no YaRN rope_scaling, so no sequence ever switches: drop --rope-switch-method");
            return new RopePlan { Mode = RopeScalingMode.Off, SwitchPosition = int.MaxValue, Plain = plain, Yarn = plain };
        }
        int original = yarn.OriginalMaxPositionEmbeddings;
        int at = switchPosition ?? original;
        if (at < 1)
            throw new OptionException($"--rope-switch {at} must be at least 1 (the length a sequence may reach on plain RoPE)");
        if (at > original)
            throw new OptionException($"--rope-switch {at} must be at most the model's original_max_position_embeddings, {original}: " +
                                      "past it the model without YaRN runs outside the positions it was trained on");
        if (method == RopeSwitchMethod.Rerotate && asked != RopeScalingMode.Adaptive)
            throw new OptionException($"--rope-switch-method rerotate turns a sequence's keys when it crosses the adaptive switch, and the mode is {name}: " +
                                      "pass --rope-scaling adaptive (the default), or drop --rope-switch-method");
        return new RopePlan { Mode = asked, SwitchPosition = at, Plain = plain, Yarn = Rope.Parameters(config), Method = method };
    }
}

using QwQ.Cuda.Config;

namespace QwQ.Cuda.Model;

/// <summary>
/// Rotary-embedding parameters computed on the host, exactly as transformers'
/// <c>_compute_default_rope_parameters</c> / <c>_compute_yarn_parameters</c> do.
/// <para>
/// Precision: transformers builds inv_freq with float32 torch tensors, so every tensor step here is a
/// float32 operation in the same order (C# float arithmetic is IEEE single precision), while the steps
/// transformers does on Python floats (correction range, attention factor) are done in double.
/// The one step not bit-exact is <c>base ** x</c>: torch's float32 pow may differ from the correctly
/// rounded <c>(float)Math.Pow</c> used here by one ulp.
/// </para>
/// </summary>
public static class Rope
{
    /// <summary>The rotary embedding <paramref name="c"/> describes: YaRN's when it has rope_scaling, else plain.</summary>
    public static RopeParameters Parameters(ModelConfig c) => new(InverseFrequencies(c), AttentionFactor(c));

    /// <summary>Plain RoPE of <paramref name="c"/>'s theta and head_dim: the model without its rope_scaling.</summary>
    public static RopeParameters PlainParameters(ModelConfig c) => Parameters(c with { RopeScaling = null });

    /// <summary>
    /// The angle every rotation here uses for pair <c>i</c> at <paramref name="position"/>: <c>(float)position · inv_freq[i]</c>,
    /// rounded to fp32 as transformers (a float32 matmul of inv_freq by the positions) and our GPU kernel
    /// (<c>kernels/rope.cu</c>) compute it. One definition, so that re-rotating a cached key
    /// (<see cref="AdaptiveYarn"/>) undoes exactly the angle the forward applied.
    /// </summary>
    public static float Angle(int position, float inverseFrequency) => (float)position * inverseFrequency;

    /// <summary>inv_freq <c>[head_dim / 2]</c> fp32: angle of pair i at position p is p · inv_freq[i].</summary>
    public static float[] InverseFrequencies(ModelConfig c)
    {
        int dim = c.HeadDim;
        int half = dim / 2;

        // pos_freqs = base ** (arange(0, dim, 2).float() / dim): the exponent and the power are float32.
        float baseF = (float)c.RopeTheta;
        var posFreqs = new float[half];
        for (int i = 0; i < half; i++)
        {
            float exponent = (float)(2 * i) / dim;
            posFreqs[i] = (float)Math.Pow(baseF, exponent);
        }

        var inv = new float[half];
        if (c.RopeScaling is not { } s)
        {
            for (int i = 0; i < half; i++) inv[i] = 1.0f / posFreqs[i];
            return inv;
        }

        // YaRN: blend "extrapolated" (unchanged) and "interpolated" (divided by factor) frequencies.
        // High-frequency pairs (many rotations within the original context) keep their frequency,
        // low-frequency pairs are interpolated, with a linear ramp between the two correction bounds.
        float factor = (float)s.Factor;
        var (low, high) = CorrectionRange(s.BetaFast, s.BetaSlow, dim, c.RopeTheta, s.OriginalMaxPositionEmbeddings, s.Truncate);
        if (low == high) high += 0.001; // transformers: "prevent singularity"
        float lowF = (float)low;
        float range = (float)(high - low);

        for (int i = 0; i < half; i++)
        {
            float extrapolation = 1.0f / posFreqs[i];
            float interpolation = 1.0f / (factor * posFreqs[i]);
            float ramp = Math.Clamp(((float)i - lowF) / range, 0f, 1f);
            float extrapolationFactor = 1f - ramp;
            inv[i] = interpolation * (1f - extrapolationFactor) + extrapolation * extrapolationFactor;
        }
        return inv;
    }

    /// <summary>
    /// Scale applied to cos and sin (so to q·k twice): 1 without YaRN; otherwise the configured
    /// attention_factor, else mscale ratio (DeepSeek style), else 0.1·ln(factor) + 1.
    /// Returned as float because transformers multiplies a float32 tensor by it.
    /// </summary>
    public static float AttentionFactor(ModelConfig c)
    {
        if (c.RopeScaling is not { } s) return 1.0f;
        double factor;
        if (s.AttentionFactor is double given) factor = given;
        else if (s.Mscale is double m && m != 0 && s.MscaleAllDim is double mAll && mAll != 0)
            factor = GetMscale(s.Factor, m) / GetMscale(s.Factor, mAll);
        else factor = GetMscale(s.Factor, 1.0);
        return (float)factor;
    }

    private static double GetMscale(double scale, double mscale) =>
        scale <= 1 ? 1.0 : 0.1 * mscale * Math.Log(scale) + 1.0;

    /// <summary>Dimension (of <paramref name="dim"/>) whose wavelength makes <paramref name="rotations"/> turns in the context.</summary>
    private static double CorrectionDim(double rotations, int dim, double theta, int maxPositions) =>
        dim * Math.Log(maxPositions / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));

    /// <summary>The ramp bounds; note transformers clamps the upper bound to dim − 1, not dim/2 − 1.</summary>
    internal static (double Low, double High) CorrectionRange(
        double betaFast, double betaSlow, int dim, double theta, int maxPositions, bool truncate)
    {
        double low = CorrectionDim(betaFast, dim, theta, maxPositions);
        double high = CorrectionDim(betaSlow, dim, theta, maxPositions);
        if (truncate)
        {
            low = Math.Floor(low);
            high = Math.Ceiling(high);
        }
        return (Math.Max(low, 0), Math.Min(high, dim - 1));
    }
}

/// <summary>
/// One rotary embedding as a forward applies it: pair <c>i</c> of a head at position <c>p</c> turns by
/// <see cref="Rope.Angle"/>(p, <see cref="InverseFrequencies"/>[i]), and cos and sin are scaled by <see cref="AttentionFactor"/>
/// (so q and k are each scaled by it). Built by <see cref="Rope.Parameters"/> / <see cref="Rope.PlainParameters"/>.
/// </summary>
/// <param name="InverseFrequencies">inv_freq <c>[head_dim / 2]</c> fp32.</param>
/// <param name="AttentionFactor">YaRN's cos/sin scale; 1 for plain RoPE.</param>
public sealed record RopeParameters(float[] InverseFrequencies, float AttentionFactor);

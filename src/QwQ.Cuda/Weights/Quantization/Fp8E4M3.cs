namespace QwQ.Cuda.Weights.Quantization;

/// <summary>
/// fp8 e4m3 "fn" (torch.float8_e4m3fn, safetensors F8_E4M3) on the host: 1 sign bit, 4 exponent bits (bias 7),
/// 3 mantissa bits. There are no infinities: exponent 15 with mantissa 7 (0x7F, 0xFF) is NaN, so the largest
/// finite value is 0x7E = 1.75 · 2^8 = 448. Exponent 0 holds the subnormals m/8 · 2^-6 (smallest 2^-9).
/// </summary>
public static class Fp8E4M3
{
    /// <summary>The largest finite magnitude, 448 (0x7E).</summary>
    public const float MaxValue = 448f;

    /// <summary>The code of +NaN (0xFF is −NaN).</summary>
    public const byte NaN = 0x7F;

    /// <summary>The code of +MaxValue (0xFE is −448).</summary>
    public const byte MaxCode = 0x7E;

    // Every fp8 value is an fp32 value exactly, so decoding is a lookup.
    private static readonly float[] Table = BuildTable();

    private static float[] BuildTable()
    {
        var t = new float[256];
        for (int code = 0; code < 256; code++)
        {
            uint sign = (uint)(code >> 7) << 31;
            int exponent = (code >> 3) & 0xF, mantissa = code & 7;
            if (exponent == 15 && mantissa == 7)
                t[code] = BitConverter.UInt32BitsToSingle(sign | 0x7FC0_0000u); // quiet NaN, sign kept
            else if (exponent == 0)
                t[code] = (sign != 0 ? -1 : 1) * MathF.ScaleB(mantissa, -9); // m/8 · 2^-6, exact
            else // same value with an fp32 exponent field (bias 127) and the 3 mantissa bits at the top of fp32's 23
                t[code] = BitConverter.UInt32BitsToSingle(sign | (uint)(exponent - 7 + 127) << 23 | (uint)mantissa << 20);
        }
        return t;
    }

    /// <summary>The exact value of an fp8 code (NaN for 0x7F and 0xFF).</summary>
    public static float ToFloat(byte code) => Table[code];

    /// <summary>Decodes <paramref name="src"/> into <paramref name="dst"/> (same length).</summary>
    public static void ToFloat(ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"destination has {dst.Length} elements, source {src.Length}", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = Table[src[i]];
    }

    /// <summary>
    /// Decodes <paramref name="src"/> times <paramref name="scale"/> into <paramref name="dst"/>: one fp32 product per
    /// element, so the result is what a float32 <c>fp8.float() * scale</c> computes.
    /// </summary>
    public static void ToFloat(ReadOnlySpan<byte> src, float scale, Span<float> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"destination has {dst.Length} elements, source {src.Length}", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = Table[src[i]] * scale;
    }

    /// <summary>
    /// The nearest fp8 value, ties to the even code (as a hardware or torch cast rounds). Magnitudes beyond 448,
    /// infinities included, saturate to ±448 (code 0x7E/0xFE) where a plain cast would give NaN: quantizers clamp to
    /// ±448 before they cast, and this is used to quantize. NaN stays NaN (0x7F, or 0xFF with the sign bit). −0 is 0x80.
    /// </summary>
    public static byte FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        byte sign = (byte)((bits >> 24) & 0x80);
        if (float.IsNaN(value)) return (byte)(sign | NaN);
        float magnitude = MathF.Abs(value);
        if (magnitude >= MaxValue) return (byte)(sign | MaxCode);

        int exponent = (int)((bits >> 23) & 0xFF) - 127;
        if (exponent < -6)
        {
            // Subnormal in fp8 (below 2^-6): a multiple of 2^-9. Scaling by 2^9 is exact in double, so the rounding
            // below is the only one. A result of 8 is code 0x08, the smallest normal 2^-6, as it should be.
            int steps = (int)Math.Round(magnitude * 512.0, MidpointRounding.ToEven);
            return (byte)(sign | steps);
        }
        // Normal: magnitude / 2^exponent · 8 lies in [8, 16); rounding it gives 8 + the 3 mantissa bits, and a
        // round up to 16 carries into the exponent field by itself.
        int rounded = (int)Math.Round(Math.ScaleB((double)magnitude, 3 - exponent), MidpointRounding.ToEven);
        int code = ((exponent + 7) << 3) + (rounded - 8);
        return (byte)(sign | Math.Min(code, MaxCode));
    }

    /// <summary>Encodes <paramref name="src"/> into <paramref name="dst"/> (same length) with <see cref="FromFloat(float)"/>.</summary>
    public static void FromFloat(ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"destination has {dst.Length} elements, source {src.Length}", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = FromFloat(src[i]);
    }

    /// <summary>
    /// Quantizes a weight matrix per output channel, as compressed-tensors' "channel" strategy stores it: row o gets
    /// scale amax(|row|) / 448 (1 for an all-zero row) and codes FromFloat(w / scale), so the largest magnitude of
    /// each row maps to ±448. The dequantized weight is ToFloat(q) · scale.
    /// </summary>
    public static void QuantizePerChannel(ReadOnlySpan<float> weight, int outFeatures, int inFeatures,
                                          Span<byte> codes /* [out, in] */, Span<float> scales /* [out] */) =>
        QuantizeRows(weight, outFeatures, inFeatures, codes, scales, "weight", byInverse: false);

    /// <summary>
    /// Quantizes activations per token (per row of [rows, cols]) for the FP8 GEMM, as <c>quantize_fp8_act_rows</c> and
    /// <c>quantize_fp8_silu_mul_rows</c> do on the GPU: scale = amax(|row|) / 448 (1 for an all-zero row), as
    /// <see cref="QuantizePerChannel"/> stores it, but codes FromFloat(x · inv) with one inverse scale a row,
    /// inv = 448 / amax (fp32 IEEE division, capped at float.MaxValue so subnormal-sized rows never give inf · 0 = NaN):
    /// a multiplication per element instead of a division, which bound the GPU kernels (session 25). About 4 in 100,000
    /// codes land one step from x / scale's, where that quotient lies within an fp32 rounding of an e4m3 midpoint.
    /// <paramref name="x"/> holds bf16 values (exact in fp32), as the GPU reads them. The dequantized activation is
    /// ToFloat(q) · scale.
    /// </summary>
    public static void QuantizePerToken(ReadOnlySpan<float> x, int rows, int cols, Span<byte> codes /* [rows, cols] */, Span<float> scales /* [rows] */) =>
        QuantizeRows(x, rows, cols, codes, scales, "activations", byInverse: true);

    // Both quantizers, row by row: scale amax / 448 (1 for an all-zero row), codes FromFloat(v / scale) for weights and
    // the KV cache, or FromFloat(v · min(448 / amax, float.MaxValue)) for activations (QuantizePerToken says why).
    private static void QuantizeRows(ReadOnlySpan<float> m, int rows, int cols, Span<byte> codes, Span<float> scales, string what, bool byInverse)
    {
        long count = (long)rows * cols;
        if (rows <= 0 || cols <= 0 || m.Length != count || codes.Length != count || scales.Length != rows)
            throw new ArgumentException($"{what} [{rows}, {cols}] needs {count} values and codes, and {rows} scales; " +
                                        $"got {m.Length}, {codes.Length} and {scales.Length}");
        for (int r = 0; r < rows; r++)
        {
            var row = m.Slice(r * cols, cols);
            float amax = 0;
            foreach (float v in row) amax = MathF.Max(amax, MathF.Abs(v));
            float scale = amax > 0 ? amax / MaxValue : 1f;
            scales[r] = scale;
            var q = codes.Slice(r * cols, cols);
            if (byInverse)
            {
                float inv = amax > 0 ? MathF.Min(MaxValue / amax, float.MaxValue) : 1f;
                for (int i = 0; i < cols; i++) q[i] = FromFloat(row[i] * inv);
            }
            else
            {
                for (int i = 0; i < cols; i++) q[i] = FromFloat(row[i] / scale);
            }
        }
    }
}

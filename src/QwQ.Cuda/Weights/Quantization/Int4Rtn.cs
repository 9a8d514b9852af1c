namespace QwQ.Cuda.Weights.Quantization;

/// <summary>
/// INT4 round-to-nearest, asymmetric, one scale and zero point per group of <c>G</c> consecutive inputs of a row:
/// what <c>--quantize int4</c> does to a bf16 checkpoint's layer weights. This is the definition: the GPU quantizer
/// computes the same fp32 operations in the same order, so both produce identical codes, scales and zeros.
/// </summary>
/// <remarks>
/// For each row r of a [rows, cols] matrix and each group g (inputs g·G .. g·G + G − 1), all in fp32:
/// <code>
/// mn = min of the group, mx = max of the group
/// s  = (float)(half) min(max(mx − mn, 1e-5) / 15, 65504)     // the scale, stored as fp16
/// z  = (int) clamp(−round(mn / s), 0, 15)                     // round: half to even
/// q  = (int) clamp(round(w / s) + (float) z, 0, 15)           // per element
/// w' = (float)(q − z) · s                                      // dequantized
/// </code>
/// This is AutoAWQ's <c>pseudo_quantize_tensor</c> with <c>zero_point=True</c> (no calibration, no clipping search),
/// except that the scale is rounded to fp16 first and that fp16 scale gives z and q: the stored values then describe
/// exactly the weights that were rounded. Rounding the scale never makes it 0 (the smallest, 1e-5 / 15, is an fp16
/// subnormal) or infinite (65504 is fp16's largest). There is no multiply followed by an add, so no FMA contraction
/// can make two implementations differ; divisions must be IEEE (no fast-math reciprocals).
/// <para>
/// Scales and zeros are group-major, [cols / G, rows], as AWQ stores them (transposed there: its rows are inputs).
/// Codes stay [rows, cols], one per byte: packing is the loader's business.
/// </para>
/// </remarks>
public static class Int4Rtn
{
    /// <summary>Inputs per scale and zero point: 128, as AutoAWQ's default and the QwQ-32B-AWQ checkpoint.</summary>
    public const int DefaultGroupSize = 128;

    /// <summary>
    /// Refuses <c>--quantize int4</c> for a model whose layer input sizes the default group does not divide, with the
    /// advice both backends give.
    /// </summary>
    internal static void EnsureGroupsDivide(Config.ModelConfig c)
    {
        if (c.LayerInputSizeNotMultipleOf(DefaultGroupSize) is int k)
            throw new Errors.OptionException($"--quantize int4 needs every layer's input size to be a multiple of its group size, {DefaultGroupSize}, " +
                                             $"and this model has one of {k}; run it in bf16 or with --quantize fp8");
    }

    /// <summary>The largest code and zero point (4 bits).</summary>
    public const int MaxCode = 15;

    /// <summary>The smallest range a group is given (an all-equal group would otherwise have a zero scale).</summary>
    public const float MinRange = 1e-5f;

    /// <summary>
    /// Quantizes <paramref name="m"/> [rows, cols] into <paramref name="codes"/> [rows, cols] (0..15),
    /// <paramref name="scales"/> and <paramref name="zeros"/> [cols / groupSize, rows] (zeros 0..15).
    /// </summary>
    /// <exception cref="ArgumentException">A size or span length that does not fit, or a NaN or infinite weight (whose
    /// codes nothing defines: a checkpoint holding one is broken).</exception>
    public static void Quantize(ReadOnlySpan<float> m /* [rows, cols] */, int rows, int cols, int groupSize,
                                Span<byte> codes /* [rows, cols] */, Span<Half> scales /* [cols/G, rows] */, Span<byte> zeros /* [cols/G, rows] */)
    {
        int groups = CheckShapes(rows, cols, groupSize, m.Length, nameof(m), codes.Length, nameof(codes), scales.Length, zeros.Length);
        for (int r = 0; r < rows; r++)
        {
            for (int g = 0; g < groups; g++)
            {
                var w = m.Slice(r * cols + g * groupSize, groupSize);
                var q = codes.Slice(r * cols + g * groupSize, groupSize);
                float mn = w[0], mx = w[0];
                for (int i = 0; i < groupSize; i++)
                {
                    if (!float.IsFinite(w[i]))
                        throw new ArgumentException($"weight [{r}, {g * groupSize + i}] is {w[i]}: only finite weights can be quantized", nameof(m));
                    mn = MathF.Min(mn, w[i]);
                    mx = MathF.Max(mx, w[i]);
                }
                Half scale = (Half)MathF.Min(MathF.Max(mx - mn, MinRange) / MaxCode, (float)Half.MaxValue);
                float s = (float)scale;
                int z = (int)Math.Clamp(-MathF.Round(mn / s), 0f, MaxCode); // MathF.Round: half to even
                for (int i = 0; i < groupSize; i++)
                    q[i] = (byte)(int)Math.Clamp(MathF.Round(w[i] / s) + z, 0f, MaxCode);
                scales[g * rows + r] = scale;
                zeros[g * rows + r] = (byte)z;
            }
        }
    }

    /// <summary>
    /// The weights <see cref="Quantize"/>'s output stands for: dst[r, c] = (float)(codes[r, c] − z) · s, with s and z
    /// those of row r and group c / groupSize. One fp32 product per element; (q − z) has at most 5 bits and s 11, so
    /// the product is exact.
    /// </summary>
    /// <exception cref="ArgumentException">A size or span length that does not fit, or a code or zero above 15.</exception>
    public static void Dequantize(ReadOnlySpan<byte> codes /* [rows, cols] */, ReadOnlySpan<Half> scales /* [cols/G, rows] */,
                                  ReadOnlySpan<byte> zeros /* [cols/G, rows] */, int rows, int cols, int groupSize,
                                  Span<float> dst /* [rows, cols] */)
    {
        int groups = CheckShapes(rows, cols, groupSize, dst.Length, nameof(dst), codes.Length, nameof(codes), scales.Length, zeros.Length);
        for (int r = 0; r < rows; r++)
        {
            for (int g = 0; g < groups; g++)
            {
                float s = (float)scales[g * rows + r];
                int z = zeros[g * rows + r];
                if (z > MaxCode) throw new ArgumentException($"zero point {z} of row {r}, group {g} does not fit in 4 bits", nameof(zeros));
                var q = codes.Slice(r * cols + g * groupSize, groupSize);
                var d = dst.Slice(r * cols + g * groupSize, groupSize);
                for (int i = 0; i < groupSize; i++)
                {
                    if (q[i] > MaxCode) throw new ArgumentException($"code {q[i]} at [{r}, {g * groupSize + i}] does not fit in 4 bits", nameof(codes));
                    d[i] = (float)(q[i] - z) * s;
                }
            }
        }
    }

    /// <summary>Quantizes and dequantizes <paramref name="m"/> [rows, cols]: the weights an int4 model computes with.</summary>
    public static float[] RoundTrip(ReadOnlySpan<float> m /* [rows, cols] */, int rows, int cols, int groupSize = DefaultGroupSize)
    {
        var codes = new byte[m.Length];
        var scales = new Half[m.Length / Math.Max(groupSize, 1)];
        var zeros = new byte[scales.Length];
        Quantize(m, rows, cols, groupSize, codes, scales, zeros);
        var result = new float[m.Length];
        Dequantize(codes, scales, zeros, rows, cols, groupSize, result);
        return result;
    }

    // The number of groups per row, after checking every size; the messages name the shapes they expected.
    private static int CheckShapes(int rows, int cols, int groupSize, int weights, string weightsName, int codes, string codesName, int scales, int zeros)
    {
        if (groupSize <= 0 || (groupSize & (groupSize - 1)) != 0)
            throw new ArgumentException($"group size {groupSize} must be a positive power of two", nameof(groupSize));
        if (rows <= 0 || cols <= 0)
            throw new ArgumentException($"a [{rows}, {cols}] matrix: both sizes must be positive");
        if (cols % groupSize != 0)
            throw new ArgumentException($"group size {groupSize} does not divide the {cols} columns (inputs) of each row", nameof(groupSize));
        long count = (long)rows * cols, groups = (long)rows * (cols / groupSize);
        if (weights != count)
            throw new ArgumentException($"[{rows}, {cols}] weights are {count} values, got {weights}", weightsName);
        if (codes != count)
            throw new ArgumentException($"[{rows}, {cols}] codes are {count} values, got {codes}", codesName);
        if (scales != groups)
            throw new ArgumentException($"scales [{cols / groupSize}, {rows}] are {groups} values, got {scales}", "scales");
        if (zeros != groups)
            throw new ArgumentException($"zero points [{cols / groupSize}, {rows}] are {groups} values, got {zeros}", "zeros");
        return cols / groupSize;
    }
}

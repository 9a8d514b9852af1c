namespace QwQ.Cuda.Weights.Quantization;

/// <summary>
/// AutoAWQ's "gemm" packing of 4-bit values, as the AWQ checkpoints on the Hugging Face Hub store them (and as vLLM
/// and transformers read them). A linear layer's quantized weight is kept transposed, [in, out], and each int32
/// holds 8 neighbouring output columns; its zero points are [in / group, out] packed the same way; its scales,
/// [in / group, out], are not packed. Dequantized: w[o, i] = (q[i, o] − z[i / group, o]) · s[i / group, o].
/// </summary>
/// <remarks>
/// Within an int32 the 8 columns are interleaved, not in order: nibble n (bits 4n..4n+3) holds column
/// [0, 2, 4, 6, 1, 3, 5, 7][n] of its block of 8 (AutoAWQ packs with that order_map). Read the other way, column k
/// is in nibble [0, 4, 1, 5, 2, 6, 3, 7][k] (vLLM's and AutoAWQ's AWQ_REVERSE_ORDER), which is
/// <see cref="NibbleOfColumn"/>. Bits 28..31 hold a value like any other: read the word as unsigned.
/// </remarks>
public static class AwqPacking
{
    /// <summary>Bits per value.</summary>
    public const int Bits = 4;

    /// <summary>Values per int32, all in one row and neighbouring columns.</summary>
    public const int ValuesPerInt = 32 / Bits;

    /// <summary>The nibble (0..7, from the least significant) that holds column k of a block of 8.</summary>
    public static ReadOnlySpan<byte> NibbleOfColumn => [0, 4, 1, 5, 2, 6, 3, 7];

    /// <summary>
    /// Packed [rows, columns / 8] int32 → [rows, columns] values 0..15 (one per byte), in column order.
    /// </summary>
    public static void Unpack(ReadOnlySpan<int> packed, int rows, int columns, Span<byte> values)
    {
        CheckShapes(rows, columns, packed.Length, values.Length, "values");
        int words = columns / ValuesPerInt;
        var nibble = NibbleOfColumn;
        for (int r = 0; r < rows; r++)
        {
            var src = packed.Slice(r * words, words);
            var dst = values.Slice(r * columns, columns);
            for (int b = 0; b < words; b++)
            {
                uint word = (uint)src[b];
                for (int k = 0; k < ValuesPerInt; k++)
                    dst[b * ValuesPerInt + k] = (byte)((word >> (Bits * nibble[k])) & 0xF);
            }
        }
    }

    /// <summary>The inverse of <see cref="Unpack"/>: [rows, columns] values 0..15 → packed [rows, columns / 8] int32.</summary>
    public static void Pack(ReadOnlySpan<byte> values, int rows, int columns, Span<int> packed)
    {
        CheckShapes(rows, columns, packed.Length, values.Length, "values");
        int words = columns / ValuesPerInt;
        var nibble = NibbleOfColumn;
        for (int r = 0; r < rows; r++)
        {
            var src = values.Slice(r * columns, columns);
            var dst = packed.Slice(r * words, words);
            for (int b = 0; b < words; b++)
            {
                uint word = 0;
                for (int k = 0; k < ValuesPerInt; k++)
                {
                    byte v = src[b * ValuesPerInt + k];
                    if (v > 0xF) throw new ArgumentException($"value {v} at [{r}, {b * ValuesPerInt + k}] does not fit in {Bits} bits", nameof(values));
                    word |= (uint)v << (Bits * nibble[k]);
                }
                dst[b] = (int)word;
            }
        }
    }

    /// <summary>qweight [in, out / 8] → q [in, out], 0..15 (still transposed: row i is input feature i).</summary>
    public static void UnpackQWeight(ReadOnlySpan<int> qweight, int inFeatures, int outFeatures, Span<byte> q) =>
        Unpack(qweight, inFeatures, outFeatures, q);

    /// <summary>qzeros [in / group, out / 8] → zero points [in / group, out], 0..15.</summary>
    public static void UnpackQZeros(ReadOnlySpan<int> qzeros, int groups, int outFeatures, Span<byte> zeros) =>
        Unpack(qzeros, groups, outFeatures, zeros);

    /// <summary>q [in, out], 0..15 → qweight [in, out / 8].</summary>
    public static void PackQWeight(ReadOnlySpan<byte> q, int inFeatures, int outFeatures, Span<int> qweight) =>
        Pack(q, inFeatures, outFeatures, qweight);

    /// <summary>Zero points [in / group, out], 0..15 → qzeros [in / group, out / 8].</summary>
    public static void PackQZeros(ReadOnlySpan<byte> zeros, int groups, int outFeatures, Span<int> qzeros) =>
        Pack(zeros, groups, outFeatures, qzeros);

    /// <summary>
    /// The fp32 weight in the Hugging Face Linear layout, [out, in] (note the transpose: AWQ stores [in, out]):
    /// w[o, i] = (q[i, o] − z[i / group, o]) · s[i / group, o], one fp32 product per element. (q − z) is an integer of
    /// at most 4 bits, so with fp16 or bf16 scales the product is exact.
    /// </summary>
    public static void Dequantize(ReadOnlySpan<int> qweight /* [in, out/8] */, ReadOnlySpan<int> qzeros /* [in/group, out/8] */,
                                  ReadOnlySpan<float> scales /* [in/group, out] */, int inFeatures, int outFeatures, int groupSize,
                                  Span<float> weight /* [out, in] */)
    {
        if (groupSize <= 0 || inFeatures <= 0 || inFeatures % groupSize != 0)
            throw new ArgumentException($"group size {groupSize} must be positive and divide in_features {inFeatures}", nameof(groupSize));
        int groups = inFeatures / groupSize;
        CheckShapes(inFeatures, outFeatures, qweight.Length, (long)inFeatures * outFeatures, "weights");
        CheckShapes(groups, outFeatures, qzeros.Length, (long)groups * outFeatures, "zero points");
        if (scales.Length != (long)groups * outFeatures)
            throw new ArgumentException($"scales [{groups}, {outFeatures}] need {(long)groups * outFeatures} values, got {scales.Length}", nameof(scales));
        if (weight.Length != (long)inFeatures * outFeatures)
            throw new ArgumentException($"weight [{outFeatures}, {inFeatures}] needs {(long)inFeatures * outFeatures} values, got {weight.Length}", nameof(weight));

        var zeros = new byte[groups * outFeatures];
        UnpackQZeros(qzeros, groups, outFeatures, zeros);
        var row = new byte[outFeatures]; // q[i, :]
        for (int i = 0; i < inFeatures; i++)
        {
            Unpack(qweight.Slice(i * (outFeatures / ValuesPerInt), outFeatures / ValuesPerInt), 1, outFeatures, row);
            int g = i / groupSize;
            var z = zeros.AsSpan(g * outFeatures, outFeatures);
            var s = scales.Slice(g * outFeatures, outFeatures);
            for (int o = 0; o < outFeatures; o++)
                weight[o * inFeatures + i] = (row[o] - z[o]) * s[o];
        }
    }

    private static void CheckShapes(int rows, int columns, long packedLength, long valuesLength, string what)
    {
        if (rows <= 0 || columns <= 0 || columns % ValuesPerInt != 0)
            throw new ArgumentException($"{what} [{rows}, {columns}]: both sizes must be positive and columns a multiple of {ValuesPerInt}");
        long count = (long)rows * columns;
        if (packedLength != count / ValuesPerInt || valuesLength != count)
            throw new ArgumentException($"{what} [{rows}, {columns}] pack into {count / ValuesPerInt} int32 and unpack into {count} values; " +
                                        $"got {packedLength} and {valuesLength}");
    }
}

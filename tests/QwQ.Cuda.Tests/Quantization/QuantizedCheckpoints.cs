using System.Runtime.InteropServices;
using QwQ.Cuda.Config;
using QwQ.Cuda.Weights;
using QwQ.Cuda.Weights.Quantization;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Quantized;

/// <summary>
/// Quantized checkpoints written by the tests, and dequantization written here independently of the code under test:
/// fp8 values from their formula, AWQ nibbles found through AutoAWQ's packing map (the inverse of the reverse order
/// the reader uses).
/// </summary>
internal static class QuantizedCheckpoints
{
    /// <summary>AutoAWQ's pack order: nibble n of an int32 holds column OrderMap[n] of its block of 8.</summary>
    private static readonly int[] OrderMap = [0, 2, 4, 6, 1, 3, 5, 7];

    public static float Fp8Value(byte code)
    {
        int s = code >> 7, e = (code >> 3) & 0xF, m = code & 7;
        if (e == 15 && m == 7) return float.NaN;
        double v = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return (float)(s == 1 ? -v : v);
    }

    /// <summary>Column <paramref name="column"/> of packed row <paramref name="row"/> ([rows, columns/8] int32).</summary>
    public static int Nibble(int[] packed, int columns, int row, int column)
    {
        uint word = (uint)packed[row * (columns / 8) + column / 8];
        int n = Array.IndexOf(OrderMap, column % 8);
        return (int)((word >> (4 * n)) & 0xF);
    }

    /// <summary>An FP8 layer's weight [out, in]: fp8 · scale per row (or the one scale), one float product each.</summary>
    public static float[] DequantizeFp8(byte[] codes, float[] scales, int outF, int inF)
    {
        var w = new float[outF * inF];
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++)
                w[o * inF + i] = Fp8Value(codes[o * inF + i]) * scales[scales.Length == 1 ? 0 : o];
        return w;
    }

    /// <summary>An AWQ layer's weight [out, in] from qweight [in, out/8], qzeros [in/g, out/8], scales [in/g, out].</summary>
    public static float[] DequantizeAwq(int[] qweight, int[] qzeros, float[] scales, int outF, int inF, int group)
    {
        var w = new float[outF * inF];
        for (int o = 0; o < outF; o++)
            for (int i = 0; i < inF; i++)
            {
                int g = i / group;
                w[o * inF + i] = (Nibble(qweight, outF, i, o) - Nibble(qzeros, outF, g, o)) * scales[g * outF + o];
            }
        return w;
    }

    /// <summary>An independent dequantization of one layer straight from the checkpoint's bytes.</summary>
    public static float[] Dequantize(SafetensorsCheckpoint ck, LinearTensors linear) => linear switch
    {
        PlainLinearTensors p => ck.ReadFloat32(p.Weight),
        Fp8LinearTensors f => DequantizeFp8(Raw<byte>(ck, f.Weight), ck.ReadFloat32(f.Scale), f.OutFeatures, f.InFeatures),
        AwqLinearTensors a => DequantizeAwq(Raw<int>(ck, a.QWeight), Raw<int>(ck, a.QZeros), ck.ReadFloat32(a.Scales),
                                            a.OutFeatures, a.InFeatures, a.GroupSize),
        _ => throw new NotSupportedException(linear.GetType().Name),
    };

    public static T[] Raw<T>(SafetensorsCheckpoint ck, string name) where T : unmanaged
    {
        var t = ck.Get(name);
        var values = new T[t.ByteLength / Marshal.SizeOf<T>()];
        ck.Read(t, 0, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    /// <summary>
    /// Every tensor <see cref="TensorNames.Expected"/> lists for <paramref name="c"/>, with deterministic contents:
    /// plain tensors as <paramref name="plainDType"/> (values about ±0.05; scales positive, 0.001 to 0.01), fp8 codes
    /// (never NaN) and random int32 words. <paramref name="edit"/> may drop (null) or change an entry.
    /// </summary>
    public static List<Entry> Entries(ModelConfig c, int seed = 1, string plainDType = "F32", Func<Entry, Entry?>? edit = null)
    {
        var rng = new Random(seed);
        var scales = QuantizedTensorNames.Linears(c).SelectMany(l => l switch
        {
            Fp8LinearTensors f => new[] { f.Scale },
            AwqLinearTensors a => [a.Scales],
            _ => [],
        }).ToHashSet();
        var entries = new List<Entry>();
        foreach (var e in TensorNames.Expected(c))
        {
            long n = e.Shape.Aggregate(1L, (a, b) => a * b);
            Entry entry;
            if (e.DTypes.Contains(DType.F8_E4M3))
            {
                var codes = new byte[n];
                rng.NextBytes(codes);
                for (int i = 0; i < codes.Length; i++) if ((codes[i] & 0x7F) == 0x7F) codes[i] ^= 1; // no NaN
                entry = new Entry(e.Name, "F8_E4M3", e.Shape, codes);
            }
            else if (e.DTypes.Contains(DType.I32))
            {
                var words = new byte[n * 4];
                rng.NextBytes(words);
                entry = new Entry(e.Name, "I32", e.Shape, words);
            }
            else
            {
                var values = new float[n];
                for (int i = 0; i < n; i++)
                    values[i] = scales.Contains(e.Name) ? (float)(0.001 + 0.009 * rng.NextDouble()) : (float)(rng.NextDouble() - 0.5) / 10;
                entry = plainDType switch
                {
                    "F32" => F32(e.Name, e.Shape, values),
                    "BF16" => Bf16(e.Name, e.Shape, values.Select(v => QwQ.Cuda.Native.Bf16.FromFloat(v)).ToArray()),
                    "F16" => F16(e.Name, e.Shape, values.Select(v => (Half)v).ToArray()),
                    _ => throw new ArgumentException(plainDType),
                };
            }
            if ((edit is null ? entry : edit(entry)) is { } kept) entries.Add(kept);
        }
        return entries;
    }

    /// <summary>Writes <paramref name="entries"/> as <c>dir/model.safetensors</c>.</summary>
    public static void Write(string dir, IEnumerable<Entry> entries) =>
        QwQ.Cuda.Tests.Weights.SafetensorsTestFiles.Write(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), entries);
}

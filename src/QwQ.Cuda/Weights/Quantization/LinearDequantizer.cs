using System.Runtime.InteropServices;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights.Quantization;

/// <summary>
/// Reads a linear layer's weight as fp32 [out, in] from whatever layout <see cref="LinearTensors"/> describes: the CPU
/// reference's loader, and a check for the GPU path. Every tensor's dtype and shape is checked first, so this is safe
/// on a checkpoint the validator has not seen.
/// </summary>
internal static class LinearDequantizer
{
    public static float[] Read(SafetensorsCheckpoint checkpoint, LinearTensors linear)
    {
        long count = (long)linear.OutFeatures * linear.InFeatures;
        if (count > Array.MaxLength)
            throw new WeightsException($"{checkpoint.Directory}: linear layer '{linear.Module}' has {count} weights, too many for one fp32 array " +
                                       "(the CPU reference is meant for small models)");
        foreach (var e in linear.Expected())
        {
            var t = checkpoint.Get(e.Name);
            if (!e.Fits(t.Shape) || !e.DTypes.Contains(t.DType))
                throw new WeightsException($"{t.FilePath}: tensor '{t.Name}' is {t.DType}{t.ShapeText}; layer '{linear.Module}' needs {e.DTypeText} {e.ShapeText}");
        }

        var weight = new float[count]; // [out, in]
        switch (linear)
        {
            case PlainLinearTensors p:
                checkpoint.ReadFloat32(checkpoint.Get(p.Weight), weight, 0);
                break;

            case Fp8LinearTensors f:
            {
                var codes = new byte[count]; // [out, in] F8_E4M3
                checkpoint.Read(checkpoint.Get(f.Weight), 0, codes);
                var scales = checkpoint.ReadFloat32(f.Scale); // [out] or [1]
                int n = f.InFeatures;
                for (int o = 0; o < f.OutFeatures; o++)
                    Fp8E4M3.ToFloat(codes.AsSpan(o * n, n), scales[f.Strategy == Config.Fp8ScaleStrategy.Channel ? o : 0], weight.AsSpan(o * n, n));
                break;
            }

            case AwqLinearTensors a:
            {
                var qweight = ReadInt32(checkpoint, a.QWeight); // [in, out/8]
                var qzeros = ReadInt32(checkpoint, a.QZeros);   // [in/group, out/8]
                var scales = checkpoint.ReadFloat32(a.Scales);  // [in/group, out]
                AwqPacking.Dequantize(qweight, qzeros, scales, a.InFeatures, a.OutFeatures, a.GroupSize, weight);
                break;
            }

            default:
                throw new NotSupportedException(linear.GetType().Name);
        }
        return weight;
    }

    /// <summary>A whole I32 tensor (little-endian in the file, as on every platform .NET runs this on).</summary>
    private static int[] ReadInt32(SafetensorsCheckpoint checkpoint, string name)
    {
        var t = checkpoint.Get(name);
        var values = new int[t.ElementCount];
        checkpoint.Read(t, 0, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Weights;

/// <summary>
/// Element conversions used while streaming weights. bf16 is the upper half of an fp32 bit pattern;
/// fp32 → bf16 rounds to nearest even and keeps NaNs quiet (<see cref="Bf16"/>).
/// </summary>
internal static class ElementConversion
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Bf16ToFloat(ushort b) => Bf16.ToFloat(b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FloatToBf16(float f) => Bf16.FromFloat(f);

    /// <summary>Converts the elements of <paramref name="src"/> (raw bytes of <paramref name="type"/>) to fp32.</summary>
    public static void ToFloat32(DType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        switch (type)
        {
            case DType.F32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
                break;
            case DType.BF16:
            {
                var s = MemoryMarshal.Cast<byte, ushort>(src);
                for (int i = 0; i < dst.Length; i++) dst[i] = Bf16ToFloat(s[i]);
                break;
            }
            case DType.F16:
            {
                var s = MemoryMarshal.Cast<byte, Half>(src);
                for (int i = 0; i < dst.Length; i++) dst[i] = (float)s[i];
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }

    /// <summary>Converts raw elements of <paramref name="type"/> to bf16 (a plain copy when already bf16).</summary>
    public static void ToBf16(DType type, ReadOnlySpan<byte> src, Span<ushort> dst)
    {
        switch (type)
        {
            case DType.BF16:
                MemoryMarshal.Cast<byte, ushort>(src).CopyTo(dst);
                break;
            case DType.F32:
            {
                var s = MemoryMarshal.Cast<byte, float>(src);
                for (int i = 0; i < dst.Length; i++) dst[i] = FloatToBf16(s[i]);
                break;
            }
            case DType.F16:
            {
                var s = MemoryMarshal.Cast<byte, Half>(src);
                for (int i = 0; i < dst.Length; i++) dst[i] = FloatToBf16((float)s[i]);
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }
}

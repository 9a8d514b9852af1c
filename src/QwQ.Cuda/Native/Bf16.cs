namespace QwQ.Cuda.Native;

/// <summary>
/// bfloat16 ⇄ float on the host, as raw <c>ushort</c> bits (the top half of an IEEE fp32).
/// Float → bf16 rounds to nearest, ties to even (what PyTorch and the CUDA intrinsics do); NaN stays NaN
/// (quiet, sign kept) instead of possibly rounding to infinity; overflow rounds to ±infinity.
/// </summary>
internal static class Bf16
{
    public static ushort FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u) // NaN: truncate and force the quiet bit so it can't become Inf
            return (ushort)((bits >> 16) | 0x0040u);
        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + roundingBias) >> 16);
    }

    public static float ToFloat(ushort value) => BitConverter.UInt32BitsToSingle((uint)value << 16);

    /// <summary>Rounds <paramref name="value"/> through bf16 (what the GPU will see).</summary>
    public static float Round(float value) => ToFloat(FromFloat(value));

    public static void FromFloat(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("Destination is shorter than source.", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = FromFloat(src[i]);
    }

    public static void ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("Destination is shorter than source.", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = ToFloat(src[i]);
    }

    public static ushort[] FromFloat(ReadOnlySpan<float> src)
    {
        var r = new ushort[src.Length];
        FromFloat(src, r);
        return r;
    }

    public static float[] ToFloat(ReadOnlySpan<ushort> src)
    {
        var r = new float[src.Length];
        ToFloat(src, r);
        return r;
    }
}

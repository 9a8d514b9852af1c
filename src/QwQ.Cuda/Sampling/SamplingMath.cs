using System.Runtime.CompilerServices;

namespace QwQ.Cuda.Sampling;

/// <summary>
/// The deterministic arithmetic shared, bit for bit, by <see cref="CpuSampler"/> and kernels/sampling.cu.
/// Every float operation here has exactly one rounding (RyuJIT never contracts a*b+c into an FMA; the FMAs are
/// explicit) and the kernel spells the same operations with <c>__fmul_rn/__fmaf_rn/...</c>, so both sides compute
/// the same bits. Probability mass is integer (<see cref="Weight"/>), which makes every sum order independent.
/// Change nothing here without changing the kernel the same way.
/// </summary>
public static class SamplingMath
{
    /// <summary>Tokens with processed logit more than this below the max get weight 0 (exp(-28) &lt; 2^-40).</summary>
    public const float CandidateDelta = -28.0f;

    /// <summary>Integer weights are floor(exp(d) * 2^40): the max token weighs exactly 2^40.</summary>
    public const float WeightScale = 1099511627776.0f;

    /// <summary>Order-preserving float → uint32 key (larger float ⇒ larger key). Callers normalise -0 to +0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Key(float x)
    {
        uint b = BitConverter.SingleToUInt32Bits(x);
        return (b & 0x80000000u) != 0 ? ~b : b | 0x80000000u;
    }

    /// <summary>d = x - max, with x == max (also ±inf ties) meaning 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Delta(float x, float max) => x == max ? 0.0f : x - max;

    /// <summary>exp(d) for d in [-28, 0]: Cody-Waite reduction and a degree-7 Taylor polynomial; Exp(0) == 1 exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float d)
    {
        float log2e = BitConverter.UInt32BitsToSingle(0x3fb8aa3bu);
        float ln2hi = BitConverter.UInt32BitsToSingle(0x3f317200u);
        float ln2lo = BitConverter.UInt32BitsToSingle(0x35bfbe8eu);
        float n = MathF.Round(d * log2e); // ties to even, as rintf
        float r = MathF.FusedMultiplyAdd(-n, ln2hi, d);
        r = MathF.FusedMultiplyAdd(-n, ln2lo, r);
        float p = BitConverter.UInt32BitsToSingle(0x39500d01u);                   // 1/5040
        p = MathF.FusedMultiplyAdd(p, r, BitConverter.UInt32BitsToSingle(0x3ab60b61u)); // 1/720
        p = MathF.FusedMultiplyAdd(p, r, BitConverter.UInt32BitsToSingle(0x3c088889u)); // 1/120
        p = MathF.FusedMultiplyAdd(p, r, BitConverter.UInt32BitsToSingle(0x3d2aaaabu)); // 1/24
        p = MathF.FusedMultiplyAdd(p, r, BitConverter.UInt32BitsToSingle(0x3e2aaaabu)); // 1/6
        p = MathF.FusedMultiplyAdd(p, r, 0.5f);
        p = MathF.FusedMultiplyAdd(p, r, 1.0f);
        p = MathF.FusedMultiplyAdd(p, r, 1.0f);
        int e = (int)n; // [-41, 0]: 2^e is a normal float
        return p * BitConverter.Int32BitsToSingle((e + 127) << 23);
    }

    /// <summary>Integer probability weight of relative probability w = exp(d): floor(w * 2^40).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Weight(float w) => (ulong)(w * WeightScale);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Mix64(ulong z)
    {
        z += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    /// <summary>Counter-based RNG: the uniform 64-bit word of (seed, step). No state, so GPU and CPU agree.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Rand64(ulong seed, long step) => Mix64(Mix64(seed) ^ (ulong)step);

    /// <summary>A uniform integer in [0, total): floor(rand64 * total / 2^64).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Draw(ulong rand64, ulong total) => Math.BigMul(rand64, total, out _);

    /// <summary>ceil(p * total) computed exactly (p is m·2^-s, the product is done in 128 bits).</summary>
    public static ulong CeilMul(float p, ulong total)
    {
        uint bits = BitConverter.SingleToUInt32Bits(p);
        uint ex = (bits >> 23) & 0xFF;
        ulong m = bits & 0x7FFFFFu;
        int s;
        if (ex == 0) s = 149;
        else { m |= 0x800000u; s = 150 - (int)ex; }
        if (m == 0 || total == 0) return 0;
        if (s >= 128) return 1;
        UInt128 prod = (UInt128)m * total;
        if (s <= 0) return (ulong)(prod << -s);
        return (ulong)((prod + ((UInt128.One << s) - 1)) >> s);
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Model;

/// <summary>
/// The FP8 (E4M3) KV-cache format of <c>--kv-cache fp8</c> (<see cref="KvCacheKind.Fp8"/>; docs/KV_CACHE.md). Per cached
/// position, layer and KV head, the K vector (after bias and RoPE, as the bf16 cache stores it) and the V vector are each
/// stored as head_dim e4m3 codes and ONE fp32 scale: scale = amax(|vector|) / 448 (1 for an all-zero vector), code =
/// round-to-nearest-even(value / scale) saturated to ±448. That is <see cref="Fp8E4M3.QuantizePerChannel"/> with one row,
/// the FP8 weights' quantizer. Attention reads code × scale (one fp32 product per value, <see cref="Fp8E4M3.ToFloat(ReadOnlySpan{byte}, float, Span{float})"/>),
/// for every position it attends to, those written in the same step included.
/// <para>
/// Why per (token, head): the scale is decided when the vector is appended, from that vector alone, so nothing already
/// cached is ever rescaled when later tokens arrive (a per-block scale would have to grow, or be guessed up front), forks
/// and shared prefixes copy codes and scales as they are, and the scale follows QwQ's large, head-dependent key biases:
/// a key whose components sit around a large bias gets the scale its own amax needs, and the largest of them maps to ±448.
/// </para>
/// </summary>
public static class KvCacheFp8
{
    /// <summary>Bytes of one scale (fp32).</summary>
    public const int ScaleBytes = sizeof(float);

    /// <summary>
    /// Bytes one position takes in one layer's cache: 2 (K, V) × kv_heads × (head_dim + 4) for fp8, 2 × kv_heads × head_dim × 2
    /// for bf16. QwQ-32B: 2,112 against 4,096.
    /// </summary>
    public static long BytesPerPositionPerLayer(ModelConfig config, KvCacheKind kind)
    {
        ArgumentNullException.ThrowIfNull(config);
        return kind switch
        {
            KvCacheKind.Bf16 => config.KvBytesPerToken / config.NumHiddenLayers,
            KvCacheKind.Fp8 => 2L * config.NumKeyValueHeads * (config.HeadDim + ScaleBytes),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "bf16 or fp8"),
        };
    }

    /// <summary>Quantizes one head's K or V vector into <paramref name="codes"/> (same length) and returns its scale.</summary>
    public static float Quantize(ReadOnlySpan<float> vector, Span<byte> codes)
    {
        Span<float> scale = stackalloc float[1];
        Fp8E4M3.QuantizePerChannel(vector, 1, vector.Length, codes, scale);
        return scale[0];
    }

    /// <summary>What attention reads: <c>vector[i] = ToFloat(codes[i]) × scale</c> in fp32.</summary>
    public static void Dequantize(ReadOnlySpan<byte> codes, float scale, Span<float> vector) => Fp8E4M3.ToFloat(codes, scale, vector);

    /// <summary>
    /// <paramref name="vector"/> replaced, in place, by what an fp8 cache gives back for it: <see cref="Dequantize"/> of
    /// <see cref="Quantize"/>. The CPU reference stores these floats (the arithmetic is the format's; the bytes are not).
    /// </summary>
    public static void RoundTrip(Span<float> vector)
    {
        Span<byte> codes = vector.Length <= 1024 ? stackalloc byte[vector.Length] : new byte[vector.Length];
        float scale = Quantize(vector, codes);
        Dequantize(codes, scale, vector);
    }
}

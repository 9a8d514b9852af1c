using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>How a linear layer's weight is stored. Quantized kinds (fp8, int4-awq) slot in here, each with its kernels.</summary>
public enum WeightKind { Bf16 }

/// <summary>
/// A linear layer's weight on the device: y[rows, Out] (+)= x[rows, In] · Wᵀ, W in HF's [out, in] layout. It knows
/// its kind and shape, so the forward pass never repeats a size (candle's typed linear; gpt-fast swaps the layer).
/// </summary>
internal readonly record struct LinearWeight(ulong Weight, int Out, int In, WeightKind Kind = WeightKind.Bf16)
{
    public long Bytes => Kind switch { WeightKind.Bf16 => 2L * Out * In, _ => throw new NotSupportedException(Kind.ToString()) };
}

/// <summary>
/// The one place that picks a kernel for a linear layer, by weight kind and row count (llama.cpp's dispatch):
/// up to <c>EngineOptions.GemvMaxRows</c> rows our bandwidth-bound GEMVs read the weight once for all rows; above,
/// cuBLAS (or cuBLASLt) tensor-core GEMMs. Output is fp32; <c>accumulate</c> adds into it (the residual stream),
/// which is also where a tensor-parallel all-reduce would complete a partial sum.
/// </summary>
internal sealed class LinearOps(GemvOps gemv, Cublas blas, CublasLt? lt, int gemvMaxRows)
{
    public void Apply(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate = false)
    {
        if (w.Kind != WeightKind.Bf16) throw new NotSupportedException($"{w.Kind} weights have no kernel yet");
        if (rows <= Math.Min(gemvMaxRows, GemvOps.MaxBatch))
            gemv.GemvBatched(s, w.Weight, x, y, rows, w.Out, w.In, accumulate);
        else if (lt is null)
            blas.GemmBf16NT(x, w.Weight, y, rows, w.Out, w.In, beta: accumulate ? 1f : 0f);
        else
            lt.MatmulBf16NT(s, x, w.Weight, y, rows, w.Out, w.In, accumulate ? 1f : 0f);
    }
}

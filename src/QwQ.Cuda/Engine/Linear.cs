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
/// up to <c>EngineOptions.GemvMaxRows</c> rows our CUDA-core GEMVs, up to <c>TensorCoreGemvMaxRows</c> our tensor-core GEMV, read the weight once for all rows; above,
/// cuBLAS (or cuBLASLt) tensor-core GEMMs. Output is fp32; <c>accumulate</c> adds into it (the residual stream),
/// which is also where a tensor-parallel all-reduce would complete a partial sum.
/// </summary>
internal sealed class LinearOps : IDisposable
{
    private readonly GemvOps _gemv;
    private readonly Cublas _blas;
    private readonly CublasLt? _lt;
    private readonly CublasLt? _decodeLt; // tuned per shape for decode batches (rows up to Workspace.MaxSequences)
    private readonly int _gemvMaxRows, _mmaMaxRows, _multiprocessors;
    private readonly DeviceBuffer _mmaWorkspace; // split-k tickets and partials of the tensor-core GEMV

    public LinearOps(GemvOps gemv, Cublas blas, CublasLt? lt, CublasLt? decodeLt, int gemvMaxRows, int mmaMaxRows, int multiprocessors)
    {
        (_gemv, _blas, _lt, _decodeLt, _gemvMaxRows, _mmaMaxRows, _multiprocessors) = (gemv, blas, lt, decodeLt, gemvMaxRows, mmaMaxRows, multiprocessors);
        _mmaWorkspace = DeviceBuffer.Allocate(GemvOps.MmaWorkspaceBytes(multiprocessors));
        _mmaWorkspace.Memset32(0);
    }

    public void Apply(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate = false)
    {
        if (w.Kind != WeightKind.Bf16) throw new NotSupportedException($"{w.Kind} weights have no kernel yet");
        if (rows <= Math.Min(_gemvMaxRows, GemvOps.MaxBatch))
            _gemv.GemvBatched(s, w.Weight, x, y, rows, w.Out, w.In, accumulate);
        else if (rows <= Math.Min(_mmaMaxRows, GemvOps.MaxMmaBatch) && w.In % GemvOps.MmaChunk == 0)
            _gemv.GemvMma(s, w.Weight, x, y, rows, w.Out, w.In, accumulate, _mmaWorkspace.Ptr, _multiprocessors);
        else if (_decodeLt is not null && rows <= Workspace.MaxSequences)
            _decodeLt.MatmulBf16NT(s, x, w.Weight, y, rows, w.Out, w.In, accumulate ? 1f : 0f);
        else if (_lt is null)
            _blas.GemmBf16NT(x, w.Weight, y, rows, w.Out, w.In, beta: accumulate ? 1f : 0f);
        else
            _lt.MatmulBf16NT(s, x, w.Weight, y, rows, w.Out, w.In, accumulate ? 1f : 0f);
    }

    /// <summary>
    /// Picks, by timing, cuBLASLt's fastest algorithm for every decode batch size that a graph is captured for, on
    /// each of <paramref name="products"/> (a layer's products and lm_head). <paramref name="x"/> and <paramref name="y"/> are
    /// scratch big enough for 128 rows of any input and output (their contents are overwritten).
    /// </summary>
    public void TuneDecodeBatches(CudaStream s, IEnumerable<(LinearWeight Weight, bool Accumulate)> products, ulong x, ulong y, IEnumerable<int> batches)
    {
        if (_decodeLt is null) return;
        foreach (int rows in batches.Where(b => b > Math.Max(_gemvMaxRows, _mmaMaxRows) && b <= Workspace.MaxSequences))
            foreach (var (w, accumulate) in products)
                _decodeLt.Tune(s, x, w.Weight, y, rows, w.Out, w.In, accumulate ? 1f : 0f);
    }

    public void Dispose() => _mmaWorkspace.Dispose();
}

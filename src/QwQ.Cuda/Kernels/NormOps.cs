using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>RMSNorm with the residual add fused in front (kernels/rmsnorm.cu).</summary>
internal sealed class NormOps
{
    [KernelEntry] public const string ResidualAddRmsNormEntry = "residual_add_rmsnorm_f32_bf16";

    /// <summary>Most threads a row gets: 640 take a 5120-wide row at two float4 each (kernels/allreduce.cu's kNormThreads).</summary>
    public const int MaxRowThreads = 640;

    private readonly CudaKernel _residualAddRmsNorm;

    public NormOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _residualAddRmsNorm = lib.GetKernel(ResidualAddRmsNormEntry);
    }

    /// <summary>
    /// residual += delta (skipped when <paramref name="delta"/> is 0); out = bf16(residual / rms(residual) * weight).
    /// <paramref name="residual"/> fp32 [tokens, hidden] (in/out), <paramref name="delta"/> fp32 [tokens, hidden]
    /// or 0, <paramref name="weight"/> bf16 [hidden], <paramref name="outBf16"/> bf16 [tokens, hidden].
    /// With delta = 0 the residual is only read (the final norm).
    /// </summary>
    public unsafe void ResidualAddRmsNorm(CudaStream s, ulong residual, ulong delta, ulong weight, ulong outBf16,
        int tokens, int hidden, float eps)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(residual, 4, nameof(residual));
        if (delta != 0) LaunchChecks.Aligned(delta, 4, nameof(delta));
        LaunchChecks.Aligned(weight, 2, nameof(weight));
        LaunchChecks.Aligned(outBf16, 2, nameof(outBf16));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(hidden, nameof(hidden));
        LaunchChecks.PositiveFinite(eps, nameof(eps));
        uint threads = RowThreads(hidden);
        void** args = stackalloc void*[] { &residual, &delta, &weight, &outBf16, &hidden, &eps };
        _residualAddRmsNorm.Launch(new Dim3((uint)tokens), new Dim3(threads), 0, s, args);
    }

    /// <summary>
    /// Threads of the block that norms one row: about two float4 each, so a 5120-wide row's loads are all in flight at
    /// once. The fused all-reduce + norm (<see cref="AllReduceOps.AllReduceAddRmsNorm"/>) splits rows the same way, so
    /// both sum a row's squares in the same order and write the same bits.
    /// </summary>
    public static uint RowThreads(int hidden) => LaunchChecks.WarpMultiple((hidden + 7) / 8, MaxRowThreads);
}

using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>SwiGLU activation on the fused gate_up projection output (kernels/activation.cu).</summary>
internal sealed class ActivationOps
{
    [KernelEntry] public const string SiluMulEntry = "silu_mul_f32_bf16";
    [KernelEntry] public const string SiluMulBf16Entry = "silu_mul_bf16_bf16";

    private const int Threads = 256;
    private readonly CudaKernel _siluMul, _siluMulBf16;

    public ActivationOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _siluMul = lib.GetKernel(SiluMulEntry);
        _siluMulBf16 = lib.GetKernel(SiluMulBf16Entry);
    }

    /// <summary>
    /// out[t, i] = bf16(silu(gateUp[t, i]) * gateUp[t, I + i]). <paramref name="gateUp"/> fp32 [tokens, 2*I]
    /// (gate columns, then up columns), <paramref name="outBf16"/> bf16 [tokens, I].
    /// </summary>
    public unsafe void SiluMul(CudaStream s, ulong gateUp, ulong outBf16, int tokens, int intermediate)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(intermediate, nameof(intermediate));
        bool vec = intermediate % 4 == 0;
        // The vector path reads float4 / writes 4 x bf16 per row offset.
        LaunchChecks.Aligned(gateUp, vec ? 16 : 4, nameof(gateUp));
        LaunchChecks.Aligned(outBf16, vec ? 8 : 2, nameof(outBf16));
        long work = (long)tokens * intermediate / (vec ? 4 : 1);
        void** args = stackalloc void*[] { &gateUp, &outBf16, &tokens, &intermediate };
        _siluMul.Launch(new Dim3(LaunchChecks.GridStrideBlocks(work, Threads)), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// The same from a bf16 <paramref name="gateUpBf16"/> [tokens, 2*I] (what prefill-sized products write: half the
    /// bytes to read), into bf16 <paramref name="outBf16"/> [tokens, I].
    /// </summary>
    public unsafe void SiluMulBf16(CudaStream s, ulong gateUpBf16, ulong outBf16, int tokens, int intermediate)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(intermediate, nameof(intermediate));
        bool vec = intermediate % 8 == 0;
        // The vector path reads and writes 8 x bf16 (16 bytes) per row offset.
        LaunchChecks.Aligned(gateUpBf16, vec ? 16 : 2, nameof(gateUpBf16));
        LaunchChecks.Aligned(outBf16, vec ? 16 : 2, nameof(outBf16));
        long work = (long)tokens * intermediate / (vec ? 8 : 1);
        void** args = stackalloc void*[] { &gateUpBf16, &outBf16, &tokens, &intermediate };
        _siluMulBf16.Launch(new Dim3(LaunchChecks.GridStrideBlocks(work, Threads)), new Dim3(Threads), 0, s, args);
    }
}

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
    public void SiluMul(CudaStream s, ulong gateUp, ulong outBf16, int tokens, int intermediate) =>
        Launch(_siluMul, s, gateUp, nameof(gateUp), sizeof(float), outBf16, tokens, intermediate, vector: 4);

    /// <summary>
    /// The same from a bf16 <paramref name="gateUpBf16"/> [tokens, 2*I] (what prefill-sized products write: half the
    /// bytes to read), into bf16 <paramref name="outBf16"/> [tokens, I].
    /// </summary>
    public void SiluMulBf16(CudaStream s, ulong gateUpBf16, ulong outBf16, int tokens, int intermediate) =>
        Launch(_siluMulBf16, s, gateUpBf16, nameof(gateUpBf16), sizeof(ushort), outBf16, tokens, intermediate, vector: 8);

    /// <summary>
    /// Either entry: where I is a multiple of <paramref name="vector"/>, a thread reads and writes that many elements per
    /// row offset (fp32: float4 in, 4 × bf16 out; bf16: 16 bytes in and out), so both buffers must be aligned to it.
    /// </summary>
    private unsafe void Launch(CudaKernel kernel, CudaStream s, ulong gateUp, string gateUpName, int inBytes, ulong outBf16, int tokens, int intermediate, int vector)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(intermediate, nameof(intermediate));
        bool vec = intermediate % vector == 0;
        LaunchChecks.Aligned(gateUp, vec ? vector * inBytes : inBytes, gateUpName);
        LaunchChecks.Aligned(outBf16, vec ? vector * sizeof(ushort) : sizeof(ushort), nameof(outBf16));
        long work = (long)tokens * intermediate / (vec ? vector : 1);
        void** args = stackalloc void*[] { &gateUp, &outBf16, &tokens, &intermediate };
        kernel.Launch(new Dim3(LaunchChecks.GridStrideBlocks(work, Threads)), new Dim3(Threads), 0, s, args);
    }
}

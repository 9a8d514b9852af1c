namespace QwQ.Cuda.Native;

/// <summary>
/// A cuBLAS handle bound to one stream, for the engine's bf16 GEMMs.
///
/// Layout: we store everything row-major and weights as HF does, <c>[out, in]</c>. Our product is
/// <c>C[M,N] = alpha · A[M,K] · B[N,K]ᵀ + beta · C</c> (A = activations, B = weight). cuBLAS is column-major, and a
/// row-major <c>[R, C]</c> matrix with leading dimension C is, read column-major, its transpose <c>[C, R]</c> with ld C. So cuBLAS sees
/// <c>A_cm = Aᵀ (K×M, ld K)</c>, <c>B_cm = Bᵀ (K×N, ld K)</c>, <c>C_cm = Cᵀ (N×M, ld N)</c>, and we need
/// <c>Cᵀ = (A·Bᵀ)ᵀ = B·Aᵀ = op_T(B_cm) · op_N(A_cm)</c>. That is one column-major GEMM with
/// <c>transa = T, transb = N, m' = N, n' = M, k' = K, A' = b (lda K), B' = a (ldb K), C' = c (ldc N)</c>.
/// Check: element (j,i) of the result is Σ_p b[j·K+p]·a[i·K+p] = C[i,j], stored at j + i·N, which is row-major C[i,j].
/// </summary>
internal sealed class Cublas : IDisposable
{
    /// <summary>cuBLAS workspace; sized for the split-K / stream-K kernels the heuristics pick for our shapes.</summary>
    internal const long WorkspaceBytes = 32L << 20;

    private readonly CublasHandle handle;
    private readonly DeviceBuffer workspace; // [WorkspaceBytes] bytes, owned
    private readonly CudaStream stream;

    private Cublas(CublasHandle handle, DeviceBuffer workspace, CudaStream stream)
    {
        this.handle = handle;
        this.workspace = workspace;
        this.stream = stream;
    }

    /// <summary>
    /// Creates a handle in the current context that queues all work on <paramref name="stream"/>, with default
    /// math (no TF32 or reduced-precision shortcuts beyond the bf16 inputs) and a 32 MiB workspace of our own,
    /// so cuBLAS never allocates behind our back (which would also break graph capture).
    /// </summary>
    public static Cublas Create(CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        NativeLibraries.Require(NativeLib.Cublas);
        var ctx = CudaDriverApi.RequireCurrentContext("cublasCreate_v2");
        var h = new CublasHandle();
        CudaErrors.CheckCublas(CublasApi.cublasCreate_v2(out var raw), "cublasCreate_v2");
        h.Initialize(raw, ctx);
        DeviceBuffer? ws = null;
        try
        {
            CudaErrors.CheckCublas(CublasApi.cublasSetStream_v2(raw, stream.Handle), "cublasSetStream_v2");
            CudaErrors.CheckCublas(CublasApi.cublasSetMathMode(raw, CublasApi.CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
            ws = DeviceBuffer.Allocate(WorkspaceBytes);
            unsafe
            {
                CudaErrors.CheckCublas(CublasApi.cublasSetWorkspace_v2(raw, (void*)ws.Ptr, (nuint)ws.Bytes), "cublasSetWorkspace_v2");
            }
            return new Cublas(h, ws, stream);
        }
        catch
        {
            h.Dispose();
            ws?.Dispose();
            throw;
        }
    }

    /// <summary>Row-major <c>C[M,N] (fp32) = alpha · A[M,K] · B[N,K]ᵀ + beta · C</c>; A, B bf16, fp32 accumulation.</summary>
    public void GemmBf16NT(ulong a, ulong b, ulong c, int m, int n, int k, float alpha = 1f, float beta = 0f) =>
        Gemm(a, b, c, m, n, k, alpha, beta, CublasApi.CUDA_R_32F);

    /// <summary>Same as <see cref="GemmBf16NT"/> but C is bf16 (accumulation still fp32).</summary>
    public void GemmBf16NTOutBf16(ulong a, ulong b, ulong c, int m, int n, int k, float alpha = 1f, float beta = 0f) =>
        Gemm(a, b, c, m, n, k, alpha, beta, CublasApi.CUDA_R_16BF);

    private unsafe void Gemm(ulong a, ulong b, ulong c, int m, int n, int k, float alpha, float beta, int cType)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ObjectDisposedException.ThrowIf(handle.IsClosed, this);
        if (m == 0 || n == 0) return;
        int ld = Math.Max(k, 1); // cuBLAS requires ld >= 1 even when k == 0 (C = beta·C)
        // A profiled step (qwq bench --profile-step) times the product like a kernel; the grid field holds m, n, k.
        LaunchTimer? timer = stream.Timer;
        timer?.Before("cublasGemmEx", new Dim3((uint)m, (uint)n, (uint)k), stream);
        int status = CublasApi.cublasGemmEx(handle.DangerousGetHandle(),
            CublasApi.CUBLAS_OP_T, CublasApi.CUBLAS_OP_N,
            n, m, k,
            &alpha,
            (void*)b, CublasApi.CUDA_R_16BF, ld,
            (void*)a, CublasApi.CUDA_R_16BF, ld,
            &beta,
            (void*)c, cType, n,
            CublasApi.CUBLAS_COMPUTE_32F, CublasApi.CUBLAS_GEMM_DEFAULT);
        if (status != 0)
            CudaErrors.ThrowCublas("cublasGemmEx", status,
                $"C[{m},{n}] ({(cType == CublasApi.CUDA_R_32F ? "fp32" : "bf16")}) = A[{m},{k}]·B[{n},{k}]ᵀ bf16, alpha={alpha}, beta={beta}");
        timer?.After(stream);
        GC.KeepAlive(this);
    }

    /// <summary>The stream all work is queued on.</summary>
    public CudaStream Stream => stream;

    public void Dispose()
    {
        handle.Dispose(); // before the workspace it points at
        workspace.Dispose();
    }
}

internal sealed class CublasHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CublasApi.cublasDestroy_v2(value);
}

using System.Runtime.InteropServices;

namespace QwQ.Cuda.Native;

/// <summary>Raw cuBLAS (libcublas.so.13/.12). Functions return cublasStatus_t (0 = success).</summary>
internal static unsafe partial class CublasApi
{
    private const string Lib = NativeLibraries.CublasName;

    static CublasApi() => NativeLibraries.EnsureRegistered();

    internal const int CUBLAS_OP_N = 0;
    internal const int CUBLAS_OP_T = 1;
    internal const int CUBLAS_DEFAULT_MATH = 0;
    internal const int CUBLAS_GEMM_DEFAULT = -1;
    internal const int CUBLAS_COMPUTE_32F = 68;
    internal const int CUDA_R_32F = 0;
    internal const int CUDA_R_16BF = 14;
    internal const int CUDA_R_8F_E4M3 = 28;

    [LibraryImport(Lib)] internal static partial int cublasCreate_v2(out IntPtr handle);
    [LibraryImport(Lib)] internal static partial int cublasDestroy_v2(IntPtr handle);
    [LibraryImport(Lib)] internal static partial int cublasSetStream_v2(IntPtr handle, IntPtr stream);
    [LibraryImport(Lib)] internal static partial int cublasSetMathMode(IntPtr handle, int mode);
    [LibraryImport(Lib)] internal static partial int cublasSetWorkspace_v2(IntPtr handle, void* workspace, nuint bytes);

    [LibraryImport(Lib)]
    internal static partial int cublasGemmEx(IntPtr handle, int transa, int transb, int m, int n, int k,
        void* alpha, void* a, int aType, int lda, void* b, int bType, int ldb,
        void* beta, void* c, int cType, int ldc, int computeType, int algo);
}

/// <summary>Raw cuBLASLt (libcublasLt.so.13/.12). Functions return cublasStatus_t (0 = success).</summary>
internal static unsafe partial class CublasLtApi
{
    private const string Lib = NativeLibraries.CublasLtName;

    static CublasLtApi() => NativeLibraries.EnsureRegistered();

    internal const int CUBLASLT_MATMUL_DESC_TRANSA = 3;
    internal const int CUBLASLT_MATMUL_DESC_TRANSB = 4;
    // FP8 scaling (cublasLt.h, cublasLtMatmulDescAttributes_t): device pointers to the A and B scales, how each is applied
    // (cublasLtMatmulMatrixScale_t, int32), and fast accumulation (int8: 0 keeps Hopper's periodic promotion of the
    // FP8 tensor-core accumulator to fp32).
    internal const int CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17;
    internal const int CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18;
    internal const int CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25;
    internal const int CUBLASLT_MATMUL_DESC_A_SCALE_MODE = 31;
    internal const int CUBLASLT_MATMUL_DESC_B_SCALE_MODE = 32;
    /// <summary>cublasLtMatmulMatrixScale_t: one fp32 scale per row of op(A) (length M) and per column of op(B) (length N); sm_90.</summary>
    internal const int CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F = 3;
    internal const int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
    internal const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;
    internal const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
    internal const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
    internal const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

    /// <summary>cublasLtMatmulAlgo_t: 8 opaque uint64.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct MatmulAlgo
    {
        public fixed ulong Data[8];
    }

    /// <summary>cublasLtMatmulHeuristicResult_t (96 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct HeuristicResult
    {
        public MatmulAlgo Algo;
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    [LibraryImport(Lib)] internal static partial int cublasLtCreate(out IntPtr handle);
    [LibraryImport(Lib)] internal static partial int cublasLtDestroy(IntPtr handle);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescCreate(out IntPtr desc, int computeType, int scaleType);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescDestroy(IntPtr desc);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescSetAttribute(IntPtr desc, int attr, void* buf, nuint size);
    [LibraryImport(Lib)] internal static partial int cublasLtMatrixLayoutCreate(out IntPtr layout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(Lib)] internal static partial int cublasLtMatrixLayoutDestroy(IntPtr layout);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceCreate(out IntPtr pref);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceDestroy(IntPtr pref);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceSetAttribute(IntPtr pref, int attr, void* buf, nuint size);

    [LibraryImport(Lib)]
    internal static partial int cublasLtMatmulAlgoGetHeuristic(IntPtr handle, IntPtr opDesc, IntPtr aDesc, IntPtr bDesc,
        IntPtr cDesc, IntPtr dDesc, IntPtr preference, int requestedAlgoCount, HeuristicResult* results, out int returnAlgoCount);

    [LibraryImport(Lib)]
    internal static partial int cublasLtMatmul(IntPtr handle, IntPtr computeDesc, void* alpha, void* a, IntPtr aDesc,
        void* b, IntPtr bDesc, void* beta, void* c, IntPtr cDesc, void* d, IntPtr dDesc, MatmulAlgo* algo,
        void* workspace, nuint workspaceBytes, IntPtr stream);
}

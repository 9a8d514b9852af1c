namespace QwQ.Cuda.Native;

/// <summary>
/// cuBLASLt for the same row-major product as <see cref="Cublas.GemmBf16NT"/>:
/// <c>C[M,N] fp32 = A[M,K] · B[N,K]ᵀ + beta · C</c>, A and B bf16 (C in bf16 instead where the caller asks: prefill's
/// qkv and gate_up products, <c>LinearOps.TryApplyBf16Out</c>). Uses the same column-major mapping
/// (Lt "A" = our B with TRANSA = T, Lt "B" = our A, C = D = our C read as N×M, ld N). The algorithm from
/// cublasLtMatmulAlgoGetHeuristic is chosen once per shape (and pointer alignment) and cached, together with
/// its descriptors, so a repeated shape costs one cublasLtMatmul call. <see cref="MatmulFp8TN"/> runs the same product
/// over e4m3 operands on the FP8 tensor cores, with per-row scales of both (outer-vector scaling).
/// </summary>
internal sealed class CublasLt : IDisposable
{
    internal const long WorkspaceBytes = 32L << 20;

    private readonly LtHandle handle;
    private readonly DeviceBuffer workspace; // [WorkspaceBytes] bytes, owned
    private readonly Dictionary<PlanKey, Plan> plans = new();
    private readonly Lock gate = new();

    private CublasLt(LtHandle handle, DeviceBuffer workspace)
    {
        this.handle = handle;
        this.workspace = workspace;
    }

    public static CublasLt Create()
    {
        NativeLibraries.Require(NativeLib.CublasLt);
        var ctx = CudaDriverApi.RequireCurrentContext("cublasLtCreate");
        var h = new LtHandle();
        CudaErrors.CheckCublas(CublasLtApi.cublasLtCreate(out var raw), "cublasLtCreate");
        h.Initialize(raw, ctx);
        try
        {
            return new CublasLt(h, DeviceBuffer.Allocate(WorkspaceBytes));
        }
        catch
        {
            h.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Row-major <c>C[M,N] (fp32, or bf16 with <paramref name="outBf16"/>) = A[M,K] · B[N,K]ᵀ + beta · C</c> on
    /// <paramref name="stream"/>.
    /// </summary>
    public unsafe void MatmulBf16NT(CudaStream stream, ulong a, ulong b, ulong c, int m, int n, int k, float beta = 0f, bool outBf16 = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(m);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        var plan = GetPlan(new PlanKey(m, n, k, Alignment(b), Alignment(a), Alignment(c), OutBf16: outBf16));
        float alpha = 1f;
        CublasLtApi.MatmulAlgo algo = plan.Algo;
        LaunchTimer? timer = stream.Timer; // a profiled step times the product like a kernel (grid field: m, n, k)
        timer?.Before("cublasLtMatmul_bf16", new Dim3((uint)m, (uint)n, (uint)k), stream);
        int status = CublasLtApi.cublasLtMatmul(handle.DangerousGetHandle(), plan.Desc,
            &alpha, (void*)b, plan.ALayout, (void*)a, plan.BLayout,
            &beta, (void*)c, plan.CLayout, (void*)c, plan.CLayout,
            &algo, (void*)workspace.Ptr, (nuint)workspace.Bytes, stream.Handle);
        if (status != 0) CudaErrors.ThrowCublas("cublasLtMatmul", status, Describe(m, n, k, outBf16));
        timer?.After(stream);
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    /// <summary>
    /// Row-major <c>C[M,N] (fp32, or bf16 with <paramref name="outBf16"/>) = diag(aScale) · (A[M,K] · B[N,K]ᵀ) · diag(bScale) + beta · C</c> on the FP8 tensor cores:
    /// A and B e4m3 row-major (both K-major, cuBLASLt's "TN" layout, the only one Hopper runs for FP8), one fp32 scale per
    /// row of A (<paramref name="aScale"/> [M], the per-token activation scales) and per row of B (<paramref name="bScale"/>
    /// [N], the per-output-channel weight scales), applied to the fp32 accumulator by cuBLASLt's outer-vector scaling
    /// (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, compute capability 9.0). In cuBLASLt's column-major terms Lt A = our
    /// B (TRANSA = T) with its scale vector of length Lt M = N, Lt B = our A with length Lt N = M, D = C (ld N).
    /// <paramref name="fastAccum"/>: CUBLASLT_MATMUL_DESC_FAST_ACCUM (faster, without the periodic fp32 promotion of the
    /// accumulator). K and N must be multiples of 16 and every pointer 16-byte aligned (cuBLASLt's FP8 requirements).
    /// </summary>
    public unsafe void MatmulFp8TN(CudaStream stream, ulong a, ulong aScale, ulong b, ulong bScale, ulong c, int m, int n, int k,
        float beta = 0f, bool fastAccum = false, bool outBf16 = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(m);
        CheckFp8(a, aScale, b, bScale, c, n, k);
        var key = new PlanKey(m, n, k, Alignment(b), Alignment(a), Alignment(c), fastAccum ? Operands.Fp8FastAccum : Operands.Fp8, outBf16);
        float alpha = 1f;
        lock (gate)
        {
            // The scale pointers are attributes of the (cached) descriptor, read when cublasLtMatmul enqueues: set them
            // for this call under the lock, so no other caller's pointers can be in the descriptor in between.
            var plan = GetPlan(key, bScale, aScale);
            SetScalePointers(plan.Desc, bScale, aScale);
            CublasLtApi.MatmulAlgo algo = plan.Algo;
            LaunchTimer? timer = stream.Timer;
            timer?.Before("cublasLtMatmul_fp8", new Dim3((uint)m, (uint)n, (uint)k), stream);
            int status = CublasLtApi.cublasLtMatmul(handle.DangerousGetHandle(), plan.Desc,
                &alpha, (void*)b, plan.ALayout, (void*)a, plan.BLayout,
                &beta, (void*)c, plan.CLayout, (void*)c, plan.CLayout,
                &algo, (void*)workspace.Ptr, (nuint)workspace.Bytes, stream.Handle);
            if (status != 0) CudaErrors.ThrowCublas("cublasLtMatmul", status, Describe(key));
            timer?.After(stream);
        }
        GC.KeepAlive(stream);
        GC.KeepAlive(this);
    }

    /// <summary>cuBLASLt's FP8 requirements, as a clear refusal before any call (the library would answer NOT_SUPPORTED).</summary>
    internal static void CheckFp8(ulong a, ulong aScale, ulong b, ulong bScale, ulong c, int n, int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        if (k % Fp8Multiple != 0 || n % Fp8Multiple != 0)
            throw new ArgumentException($"cuBLASLt's FP8 GEMM needs K and N to be multiples of {Fp8Multiple} (got K = {k}, N = {n}).");
        // One check per pointer, not a loop over a new array: this runs at every prefill product (no allocation per launch).
        Aligned16(a, nameof(a));
        Aligned16(aScale, nameof(aScale));
        Aligned16(b, nameof(b));
        Aligned16(bScale, nameof(bScale));
        Aligned16(c, nameof(c));

        static void Aligned16(ulong p, string name)
        {
            if (p == 0 || p % 16 != 0)
                throw new ArgumentException($"cuBLASLt's FP8 GEMM needs 16-byte aligned, non-null pointers ({name} = 0x{p:x}).", name);
        }
    }

    /// <summary>K and N (inputs and outputs of a weight) of an FP8 product must be multiples of this.</summary>
    public const int Fp8Multiple = 16;

    private static unsafe void SetScalePointers(IntPtr desc, ulong ltAScale, ulong ltBScale)
    {
        CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(desc, CublasLtApi.CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ltAScale, sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
        CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(desc, CublasLtApi.CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ltBScale, sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
    }

    /// <summary>
    /// Times up to <paramref name="candidates"/> of cuBLASLt's heuristic algorithms for this shape, each run over all of
    /// <paramref name="bs"/> in turn (every layer's copy of one product, so the timing streams weights from DRAM as a
    /// real step does, not from L2), warm-up then the median of seven, and keeps the fastest for every later call. The
    /// heuristic's first pick reads a weight matrix at ~2.6 TB/s at 8 rows; another algorithm may do better. Not
    /// for graph capture (it synchronises); <paramref name="c"/> is overwritten (fp32, or bf16 with <paramref name="outBf16"/>:
    /// the plan tuned is the one <see cref="MatmulBf16NT"/> runs with the same flag). Returns the chosen time in ms.
    /// </summary>
    public unsafe float Tune(CudaStream stream, ulong a, IReadOnlyList<ulong> bs, ulong c, int m, int n, int k, float beta, int candidates = 32,
        bool outBf16 = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfZero(bs.Count);
        ulong b = bs[0];
        uint alignB = bs.Select(Alignment).Min();
        var key = new PlanKey(m, n, k, alignB, Alignment(a), Alignment(c), OutBf16: outBf16);
        Plan plan;
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            if (plans.Remove(key, out var old)) old.Destroy();
            plan = CreatePlan(key, candidates);
            plans[key] = plan;
        }
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        float best = float.MaxValue;
        var bestAlgo = plan.Algo;
        foreach (var candidate in plan.Candidates)
        {
            var times = new float[7];
            bool ok = true;
            for (int r = -1; r < times.Length && ok; r++)
            {
                start.Record(stream);
                foreach (ulong each in bs) ok &= Run(candidate, each) == 0;
                end.Record(stream);
                end.Synchronize();
                if (r >= 0) times[r] = CudaEvent.ElapsedMilliseconds(start, end);
            }
            if (!ok) continue; // an algorithm the heuristic offered but this shape cannot run: skip it
            Array.Sort(times);
            if (times[3] < best) (best, bestAlgo) = (times[3], candidate);
        }
        plan.Algo = bestAlgo;
        return best;

        int Run(CublasLtApi.MatmulAlgo algo, ulong weight)
        {
            float alpha = 1f, bt = beta;
            return CublasLtApi.cublasLtMatmul(handle.DangerousGetHandle(), plan.Desc, &alpha, (void*)weight, plan.ALayout,
                (void*)a, plan.BLayout, &bt, (void*)c, plan.CLayout, (void*)c, plan.CLayout, &algo,
                (void*)workspace.Ptr, (nuint)workspace.Bytes, stream.Handle);
        }
    }

    private static string Describe(int m, int n, int k, bool outBf16 = false) =>
        $"C[{m},{n}] {(outBf16 ? "bf16" : "fp32")} = A[{m},{k}]·B[{n},{k}]ᵀ bf16";

    private static string Describe(PlanKey key) => key.Operands == Operands.Bf16
        ? Describe(key.M, key.N, key.K, key.OutBf16)
        : $"C[{key.M},{key.N}] {(key.OutBf16 ? "bf16" : "fp32")} = diag(sA)·A[{key.M},{key.K}]·B[{key.N},{key.K}]ᵀ·diag(sB) e4m3, outer-vector fp32 scales" +
          (key.Operands == Operands.Fp8FastAccum ? ", fast accumulation" : "");

    /// <summary>Largest power of two (≤ 256) dividing the address: the alignment the algorithm may assume.</summary>
    private static uint Alignment(ulong p) => p == 0 ? 256u : (uint)Math.Min(256ul, p & (~p + 1));

    /// <summary>The cached plan of <paramref name="key"/>, created at first use; FP8 plans get the scale pointers of that first call for the heuristic.</summary>
    private Plan GetPlan(PlanKey key, ulong ltAScale = 0, ulong ltBScale = 0)
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(handle.IsClosed, this);
            if (plans.TryGetValue(key, out var p)) return p;
            p = CreatePlan(key, 1, ltAScale, ltBScale);
            plans[key] = p;
            return p;
        }
    }

    private unsafe Plan CreatePlan(PlanKey key, int candidates = 1, ulong ltAScale = 0, ulong ltBScale = 0)
    {
        var plan = new Plan();
        IntPtr pref = IntPtr.Zero;
        try
        {
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescCreate(out plan.Desc, CublasApi.CUBLAS_COMPUTE_32F, CublasApi.CUDA_R_32F), "cublasLtMatmulDescCreate");
            int transA = CublasApi.CUBLAS_OP_T, transB = CublasApi.CUBLAS_OP_N;
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLtApi.CUBLASLT_MATMUL_DESC_TRANSA, &transA, sizeof(int)), "cublasLtMatmulDescSetAttribute");
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLtApi.CUBLASLT_MATMUL_DESC_TRANSB, &transB, sizeof(int)), "cublasLtMatmulDescSetAttribute");
            int operandType = CublasApi.CUDA_R_16BF;
            if (key.Operands != Operands.Bf16)
            {
                // FP8: compute 32F and scale type 32F (set above) are what cuBLASLt requires; both operands' scales are
                // per-row vectors, and the accumulator is promoted to fp32 periodically unless fast accumulation is asked for.
                operandType = CublasApi.CUDA_R_8F_E4M3;
                int mode = CublasLtApi.CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLtApi.CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(int)), "cublasLtMatmulDescSetAttribute(A_SCALE_MODE)");
                CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLtApi.CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(int)), "cublasLtMatmulDescSetAttribute(B_SCALE_MODE)");
                sbyte fast = key.Operands == Operands.Fp8FastAccum ? (sbyte)1 : (sbyte)0;
                CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulDescSetAttribute(plan.Desc, CublasLtApi.CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(sbyte)), "cublasLtMatmulDescSetAttribute(FAST_ACCUM)");
                SetScalePointers(plan.Desc, ltAScale, ltBScale);
            }

            // Lt "A": our B [N,K] row-major = K×N column-major (ld K), transposed by TRANSA.
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatrixLayoutCreate(out plan.ALayout, operandType, (ulong)key.K, (ulong)key.N, key.K), "cublasLtMatrixLayoutCreate");
            // Lt "B": our A [M,K] row-major = K×M column-major (ld K).
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatrixLayoutCreate(out plan.BLayout, operandType, (ulong)key.K, (ulong)key.M, key.K), "cublasLtMatrixLayoutCreate");
            // C = D: our C [M,N] row-major = N×M column-major (ld N), fp32 or bf16 (the accumulator stays fp32).
            int outType = key.OutBf16 ? CublasApi.CUDA_R_16BF : CublasApi.CUDA_R_32F;
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatrixLayoutCreate(out plan.CLayout, outType, (ulong)key.N, (ulong)key.M, key.N), "cublasLtMatrixLayoutCreate");

            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceCreate(out pref), "cublasLtMatmulPreferenceCreate");
            ulong wsBytes = (ulong)workspace.Bytes;
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtApi.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            uint alignA = key.AlignA, alignB = key.AlignB, alignC = key.AlignC;
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtApi.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alignA, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute");
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtApi.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alignB, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute");
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtApi.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alignC, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute");
            CudaErrors.CheckCublas(CublasLtApi.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtApi.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alignC, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute");

            var results = stackalloc CublasLtApi.HeuristicResult[candidates];
            int status = CublasLtApi.cublasLtMatmulAlgoGetHeuristic(handle.DangerousGetHandle(), plan.Desc,
                plan.ALayout, plan.BLayout, plan.CLayout, plan.CLayout, pref, candidates, results, out int found);
            if (status != 0) CudaErrors.ThrowCublas("cublasLtMatmulAlgoGetHeuristic", status, Describe(key));
            if (found < 1 || results[0].State != 0)
                CudaErrors.ThrowCublas("cublasLtMatmulAlgoGetHeuristic", found < 1 ? 15 : results[0].State,
                    $"no algorithm for {Describe(key)}");
            plan.Algo = results[0].Algo;
            plan.Candidates = new CublasLtApi.MatmulAlgo[found];
            for (int i = 0; i < found; i++) plan.Candidates[i] = results[i].Algo;
            return plan;
        }
        catch
        {
            plan.Destroy();
            throw;
        }
        finally
        {
            if (pref != IntPtr.Zero) CublasLtApi.cublasLtMatmulPreferenceDestroy(pref);
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            if (handle.IsClosed) return;
            foreach (var p in plans.Values) p.Destroy(); // host-side descriptors: no context needed
            plans.Clear();
            handle.Dispose();
            workspace.Dispose();
        }
    }

    /// <summary>What a plan multiplies: bf16, or e4m3 with outer-vector scales (with or without fast accumulation).</summary>
    private enum Operands { Bf16, Fp8, Fp8FastAccum }

    private readonly record struct PlanKey(int M, int N, int K, uint AlignA, uint AlignB, uint AlignC, Operands Operands = Operands.Bf16,
        bool OutBf16 = false);

    private sealed class Plan
    {
        public IntPtr Desc, ALayout, BLayout, CLayout;
        public CublasLtApi.MatmulAlgo Algo;
        public CublasLtApi.MatmulAlgo[] Candidates = [];

        public void Destroy()
        {
            if (CLayout != IntPtr.Zero) CublasLtApi.cublasLtMatrixLayoutDestroy(CLayout);
            if (BLayout != IntPtr.Zero) CublasLtApi.cublasLtMatrixLayoutDestroy(BLayout);
            if (ALayout != IntPtr.Zero) CublasLtApi.cublasLtMatrixLayoutDestroy(ALayout);
            if (Desc != IntPtr.Zero) CublasLtApi.cublasLtMatmulDescDestroy(Desc);
            Desc = ALayout = BLayout = CLayout = IntPtr.Zero;
        }
    }
}

internal sealed class LtHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CublasLtApi.cublasLtDestroy(value);
}

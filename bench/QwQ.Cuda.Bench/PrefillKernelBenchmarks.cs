using QwQ.Cuda.Engine;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Bench;

/// <summary>
/// The rest of the kernel table (after the GEMVs): the prefill products through cuBLAS and flash attention against
/// the measured bf16 GEMM rate; the element-wise kernels and decode attention against the measured copy bandwidth.
/// QwQ-32B shapes, random inputs, event timing (part of <c>KernelBenchmarks.Run</c>).
/// </summary>
internal static class PrefillKernelBenchmarks
{
    private const int H = 5120, Nq = 40, Nkv = 8, D = 128, I = 27648, Qkv = (Nq + 2 * Nkv) * D;

    public static void Run(TextWriter output, PtxLibrary lib, CudaContext ctx, CudaStream stream, double copyGBs, int iterations)
    {
        var init = new InitOps(lib);
        using var blas = Cublas.Create(stream);
        double gemmTflops = GemmTflops(blas, init, stream, 8192, 8192, 8192, Math.Max(5, iterations / 20));
        output.WriteLine($"cuBLAS bf16 GEMM 8192³: {gemmTflops:F0} TFLOP/s (the prefill ceiling)");
        output.WriteLine($"{"prefill product (M=2048)",-30}{"ms",8}{"TFLOP/s",10}{"% GEMM",9}");
        foreach (var (name, n, k, beta) in new[] { ("qkv_proj", Qkv, H, 0f), ("o_proj", H, Nq * D, 0f), ("o_proj, beta=1", H, Nq * D, 1f),
                     ("gate_up_proj", 2 * I, H, 0f), ("down_proj", H, I, 0f), ("down_proj, beta=1", H, I, 1f) })
        {
            double t = GemmTflops(blas, init, stream, 2048, n, k, Math.Max(5, iterations / 10), beta);
            output.WriteLine($"{name,-30}{2.0 * 2048 * n * k / (t * 1e12) * 1e3,8:F3}{t,10:F0}{100 * t / gemmTflops,8:F0}%");
        }

        // One sequence over the paged pool with the identity block table (block i holds positions [64 i, 64 i + 64)).
        var attention = new AttentionOps(lib, ctx.MultiprocessorCount);
        output.WriteLine($"{"attention",-30}{"ms",8}{"rate",10}{"% ceil",9}");
        foreach (int t in new[] { 2048, 16384 })
        {
            int blocks = t / AttentionOps.KvBlockSize;
            using var q = Random(init, stream, (long)t * Nq * D);
            using var k = Random(init, stream, (long)Nkv * t * D);
            using var v = Random(init, stream, (long)Nkv * t * D);
            using var o = DeviceBuffer.Allocate(2L * t * Nq * D);
            using var table = IdentityTable(blocks);
            using var seqInfo = DeviceBuffer.FromHost<int>([0, t, 0, 0]);
            double ms = Time(stream, t > 4096 ? 5 : 20,
                () => attention.PrefillPaged(stream, q.Ptr, k.Ptr, v.Ptr, o.Ptr, seqInfo.Ptr, table.Ptr, 1, t, blocks, Nq, Nkv, D, 1f / MathF.Sqrt(D)));
            double tflops = 4.0 * Nq * D * (t * (t + 1.0) / 2) / (ms * 1e-3) / 1e12;
            output.WriteLine($"{$"prefill T={t}",-30}{ms,8:F3}{tflops,7:F0} TF{100 * tflops / gemmTflops,8:F0}%");
        }
        foreach (int c in new[] { 1024, 32768 })
        {
            int blocks = c / AttentionOps.KvBlockSize;
            using var q = Random(init, stream, (long)Nq * D);
            using var k = Random(init, stream, (long)Nkv * c * D);
            using var v = Random(init, stream, (long)Nkv * c * D);
            using var o = DeviceBuffer.Allocate(2L * Nq * D);
            using var table = IdentityTable(blocks);
            using var work = DeviceBuffer.Allocate(AttentionOps.DecodePagedWorkspaceBytes(ctx.MultiprocessorCount, Nq, Nkv, D, 1));
            using var plan = new DecodeSplitPlanBuffers(1);
            plan.Plan(attention, [c], blocks, Nkv, D, KvCacheKind.Bf16);
            double ms = Time(stream, iterations,
                () => attention.DecodePaged(stream, q.Ptr, k.Ptr, v.Ptr, o.Ptr, work.Ptr, table.Ptr, plan.Rows, plan.Work, 1, blocks, Nq, Nkv, D, 1f / MathF.Sqrt(D)));
            double gbs = 2.0 * 2 * Nkv * c * D / (ms * 1e-3) / 1e9;
            output.WriteLine($"{$"decode ctx={c}",-30}{ms,8:F4}{gbs,7:F0} GB/s{100 * gbs / copyGBs,6:F0}%");
        }

        output.WriteLine($"{"element-wise (T=2048)",-30}{"ms",8}{"GB/s",10}{"% copy",9}");
        const int T = 2048;
        var norm = new NormOps(lib);
        var act = new ActivationOps(lib);
        var rope = new RopeOps(lib);
        using var residual = RandomF32((long)T * H);
        using var weight = Random(init, stream, H, mean: 1f);
        using var normed = DeviceBuffer.Allocate(2L * T * H);
        Row(output, "residual_add_rmsnorm", copyGBs, 4.0 * T * H + 2.0 * T * H,
            Time(stream, iterations, () => norm.ResidualAddRmsNorm(stream, residual.Ptr, 0, weight.Ptr, normed.Ptr, T, H, 1e-5f)));
        using var gateUp = RandomF32((long)T * 2 * I);
        using var actOut = DeviceBuffer.Allocate(2L * T * I);
        Row(output, "silu_mul", copyGBs, 4.0 * T * 2 * I + 2.0 * T * I,
            Time(stream, iterations, () => act.SiluMul(stream, gateUp.Ptr, actOut.Ptr, T, I)));
        using var qkv = RandomF32((long)T * Qkv);
        using var bias = Random(init, stream, Qkv);
        using var invFreq = DeviceBuffer.FromHost<float>(Enumerable.Range(0, D / 2).Select(i => MathF.Pow(1e6f, -2f * i / D)).ToArray());
        using var qOut = DeviceBuffer.Allocate(2L * T * Nq * D);
        using var kPool = DeviceBuffer.Allocate(2L * Nkv * T * D);
        using var vPool = DeviceBuffer.Allocate(2L * Nkv * T * D);
        using var positions = DeviceBuffer.FromHost<int>(Enumerable.Range(0, T).ToArray());
        using var slots = DeviceBuffer.FromHost<int>(Enumerable.Range(0, T).ToArray()); // identity blocks: slot = position
        Row(output, "qkv_bias_rope_paged", copyGBs, 4.0 * T * Qkv + 2.0 * T * Qkv,
            Time(stream, iterations, () => rope.QkvBiasRopePaged(stream, qkv.Ptr, bias.Ptr, invFreq.Ptr, 1f, positions.Ptr, slots.Ptr, T, Nq, Nkv, D,
                qOut.Ptr, kPool.Ptr, vPool.Ptr)));
    }

    private static DeviceBuffer IdentityTable(int blocks) => DeviceBuffer.FromHost<int>(Enumerable.Range(0, blocks).ToArray());

    private static void Row(TextWriter output, string name, double copyGBs, double bytes, double ms)
    {
        double gbs = bytes / (ms * 1e-3) / 1e9;
        output.WriteLine($"{name,-30}{ms,8:F4}{gbs,10:F0}{100 * gbs / copyGBs,8:F0}%");
    }

    private static DeviceBuffer Random(InitOps init, CudaStream s, long count, float mean = 0f)
    {
        var b = DeviceBuffer.Allocate(2 * count);
        init.FillNormalBf16(s, b.Ptr, count, (ulong)count, mean, mean == 0f ? 1f : 0.02f);
        return b;
    }

    /// <summary>fp32 activations of a realistic spread (never zeros: they can time faster than data).</summary>
    private static DeviceBuffer RandomF32(long count)
    {
        var rng = new Random(7);
        var host = new float[count];
        for (long i = 0; i < count; i++) host[i] = (float)(rng.NextDouble() * 4 - 2);
        return DeviceBuffer.FromHost<float>(host);
    }

    /// <summary>beta = 1 is the engine's fused residual add (C += A·Bᵀ), which also reads C.</summary>
    private static double GemmTflops(Cublas blas, InitOps init, CudaStream s, int m, int n, int k, int reps, float beta = 0f)
    {
        using var a = Random(init, s, (long)m * k);
        using var b = Random(init, s, (long)n * k);
        using var c = DeviceBuffer.Allocate(4L * m * n);
        c.Memset32(0, s);
        blas.GemmBf16NT(a.Ptr, b.Ptr, c.Ptr, m, n, k, beta: beta);
        double ms = Time(s, reps, () => blas.GemmBf16NT(a.Ptr, b.Ptr, c.Ptr, m, n, k, beta: beta));
        return 2.0 * m * n * (double)k / (ms * 1e-3) / 1e12;
    }

    private static double Time(CudaStream stream, int reps, Action op)
    {
        op();
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        start.Record(stream);
        for (int i = 0; i < reps; i++) op();
        end.Record(stream);
        end.Synchronize();
        return CudaEvent.ElapsedMilliseconds(start, end) / reps;
    }
}

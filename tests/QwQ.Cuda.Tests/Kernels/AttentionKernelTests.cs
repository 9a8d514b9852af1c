using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// Attention kernels against the CPU reference (<see cref="CpuOps.CausalAttention"/>) on fresh random inputs.
/// Every run draws a new seed (printed; set QWQ_TEST_SEED to replay one). Outputs are poisoned with NaN before the
/// launch, so a row the kernel forgets to write fails the finiteness check; cache slots past the visible context
/// hold NaN too, so a kernel that reads (or multiplies by zero) an unwritten position fails as well.
/// Note the layouts: the reference takes K/V as [S, nkv, D], the GPU cache is [nkv, maxCtx, D].
/// </summary>
[TestFixture]
public sealed class AttentionKernelTests
{
    private const ushort Bf16NaN = 0x7FC0;
    private const uint Bf16NaNPair = 0x7FC07FC0;
    private const double GlobalTolerance = 1e-2; // ‖Δ‖/‖ref‖ over the whole output
    private const double RowTolerance = 3e-2;    // per (token, head) row, so one bad row cannot hide in the norm

    private CudaContext? _context;
    private PtxLibrary? _library;
    private CudaStream? _stream;
    private AttentionOps? _ops;
    private string _unavailable = "";

    [OneTimeSetUp]
    public void SetUp()
    {
        if (!QwQ.Cuda.Native.Cuda.IsAvailable(out _unavailable)) return;
        _context = CudaContext.Create();
        _library = PtxLibrary.Load();
        _stream = CudaStream.Create();
        _ops = new AttentionOps(_library, _context.MultiprocessorCount);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _stream?.Dispose();
        _library?.Dispose();
        _context?.Dispose();
    }

    private (AttentionOps Ops, CudaStream Stream) Gpu()
    {
        if (_ops is null || _stream is null) Assert.Ignore($"no CUDA device ({_unavailable})");
        return (_ops!, _stream!);
    }

    // ---------------------------------------------------------------- CPU-only checks

    [Test]
    public void KernelNamesAreEntriesOfTheEmbeddedPtx()
    {
        var entries = PtxLibrary.EmbeddedEntries();
        string[] names =
        [
            AttentionOps.PrefillD32, AttentionOps.PrefillD64, AttentionOps.PrefillD128,
            AttentionOps.DecodeSplitD32, AttentionOps.DecodeSplitD64, AttentionOps.DecodeSplitD128,
            AttentionOps.DecodeCombine,
        ];
        foreach (var n in names) Assert.That(entries, Does.Contain(n), $"'{n}' missing from kernels/ptx/attention_*.ptx");
    }

    [Test]
    public void DecodeWorkspaceCoversPartialsAndContextSlot()
    {
        // QwQ: 40 heads, D = 128, 131072 context: 256 splits at most -> 40*256*128*4 + 40*256*8 + 16 bytes.
        Assert.That(AttentionOps.DecodeWorkspaceBytes(40, 128, 131072), Is.EqualTo(40L * 256 * 128 * 4 + 40L * 256 * 8 + 16));
        // A short cache needs at most one split per 64-key tile.
        Assert.That(AttentionOps.DecodeWorkspaceBytes(10, 32, 100), Is.EqualTo(10L * 2 * 32 * 4 + 10L * 2 * 8 + 16));
        Assert.That(AttentionOps.DecodeWorkspaceBytes(1, 32, 1), Is.EqualTo(1L * 1 * 32 * 4 + 8 + 16));
    }

    // ---------------------------------------------------------------- prefill

    private static IEnumerable<TestCaseData> PrefillCases()
    {
        (int Nq, int Nkv, int D, string Name)[] shapes = [(40, 8, 128, "qwq"), (10, 2, 32, "tiny")];
        foreach (var s in shapes)
            foreach (int t in new[] { 1, 7, 64, 130, 1000 })
                foreach (int start in new[] { 0, 37 })
                    yield return new TestCaseData(s.Nq, s.Nkv, s.D, t, start).SetName($"Prefill_{s.Name}_T{t}_start{start}");
        // Other head_dim / GQA ratios: D = 64 with a group of 7, a group of 16 (the widest the decode tile allows),
        // plain MHA, and a long chunk on top of a long cache.
        yield return new TestCaseData(14, 2, 64, 130, 37).SetName("Prefill_d64_g7_T130_start37");
        yield return new TestCaseData(16, 1, 64, 200, 0).SetName("Prefill_d64_g16_T200_start0");
        yield return new TestCaseData(4, 4, 32, 300, 5).SetName("Prefill_d32_mha_T300_start5");
        yield return new TestCaseData(40, 8, 128, 129, 2000).SetName("Prefill_qwq_T129_start2000");
    }

    [TestCaseSource(nameof(PrefillCases))]
    public void PrefillMatchesCpuReference(int nq, int nkv, int d, int tokens, int startPos)
    {
        var (ops, stream) = Gpu();
        var rng = NewRng();
        int s = startPos + tokens;
        int maxCtx = s + 67; // not a multiple of the 64-key tile; the tail holds NaN
        float scale = 1f / MathF.Sqrt(d);

        float[] q = RandomBf16(rng, (long)tokens * nq * d, 1.5f); // [T, nq, D]
        float[] k = RandomBf16(rng, (long)s * nkv * d, 1f);       // [S, nkv, D]
        float[] v = RandomBf16(rng, (long)s * nkv * d, 1f);

        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(ToCache(k, s, nkv, d, maxCtx));
        using var vBuf = DeviceBuffer.FromHost<ushort>(ToCache(v, s, nkv, d, maxCtx));
        using var outBuf = DeviceBuffer.Allocate(2L * tokens * nq * d);
        outBuf.Memset32(Bf16NaNPair);

        ops.Prefill(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, tokens, startPos, nq, nkv, d, maxCtx, scale);
        stream.Synchronize();
        float[] got = FromBf16(outBuf.ToArray<ushort>());

        AssertAllFinite(got, d, "prefill");
        // The CPU reference is O(T*S*nq*D): for big cases check the first and last KV-head groups only
        // (the kernel treats every head alike; the finiteness check above still covers every row).
        int[] kvHeads = (long)tokens * s * nq > 4_000_000
            ? [0, nkv - 1]
            : Enumerable.Range(0, nkv).ToArray();
        CompareWithReference(got, q, k, v, tokens, startPos, nq, nkv, d, scale, kvHeads, $"prefill T={tokens} start={startPos}");
    }

    // ---------------------------------------------------------------- decode

    [Test]
    public void DecodeDeviceMatchesCpuReferenceAsContextChanges_QwqShape() =>
        DecodeSweep(40, 8, 128, maxCtx: 20480, contexts: [1, 17, 1000, 8192, 20000, 63, 64, 65, 1000]);

    [Test]
    public void DecodeDeviceMatchesCpuReferenceAsContextChanges_Tiny() =>
        DecodeSweep(10, 2, 32, maxCtx: 3000, contexts: [1, 17, 100, 2999, 3000, 129]);

    [Test]
    public void DecodeDeviceMatchesCpuReferenceAsContextChanges_Group16_D64() =>
        DecodeSweep(16, 1, 64, maxCtx: 5000, contexts: [1, 200, 4999]);

    [Test]
    public void DecodeDeviceMatchesCpuReferenceAsContextChanges_Mha_D64() =>
        DecodeSweep(4, 4, 64, maxCtx: 777, contexts: [700, 3, 777]);

    /// <summary>
    /// One set of buffers and one fixed argument list (as a captured CUDA graph would have); only the int at the
    /// device ctx_len pointer and the contents of q change between launches.
    /// </summary>
    private void DecodeSweep(int nq, int nkv, int d, int maxCtx, int[] contexts)
    {
        var (ops, stream) = Gpu();
        var rng = NewRng();
        int filled = contexts.Max();
        float scale = 1f / MathF.Sqrt(d);
        float[] k = RandomBf16(rng, (long)filled * nkv * d, 1f); // [S, nkv, D]
        float[] v = RandomBf16(rng, (long)filled * nkv * d, 1f);

        using var kBuf = DeviceBuffer.FromHost<ushort>(ToCache(k, filled, nkv, d, maxCtx));
        using var vBuf = DeviceBuffer.FromHost<ushort>(ToCache(v, filled, nkv, d, maxCtx));
        using var qBuf = DeviceBuffer.Allocate(2L * nq * d);
        using var outBuf = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodeWorkspaceBytes(nq, d, maxCtx));
        using var ctxBuf = DeviceBuffer.Allocate(16);
        ws.Memset32(0x7FC00000); // fp32 NaN: the combine must read only partials written in this launch

        foreach (int ctx in contexts)
        {
            float[] q = RandomBf16(rng, (long)nq * d, 1.5f);
            qBuf.CopyFromHost<ushort>(ToBf16(q));
            ctxBuf.Memset32((uint)ctx, stream);
            outBuf.Memset32(Bf16NaNPair, stream);

            ops.DecodeDevice(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, ws.Ptr, ctxBuf.Ptr, nq, nkv, d, maxCtx, scale);
            stream.Synchronize();
            float[] got = FromBf16(outBuf.ToArray<ushort>());

            AssertAllFinite(got, d, $"decode ctx={ctx}");
            CompareWithReference(got, q, k.AsSpan(0, ctx * nkv * d).ToArray(), v.AsSpan(0, ctx * nkv * d).ToArray(),
                1, ctx - 1, nq, nkv, d, scale, Enumerable.Range(0, nkv).ToArray(), $"decode ctx={ctx}");
        }
    }

    [Test]
    public void DecodeWithHostContextLengthMatchesCpuReference()
    {
        var (ops, stream) = Gpu();
        var rng = NewRng();
        const int nq = 40, nkv = 8, d = 128, maxCtx = 4096, ctx = 3001;
        float scale = 1f / MathF.Sqrt(d);
        float[] q = RandomBf16(rng, nq * d, 1.5f);
        float[] k = RandomBf16(rng, (long)ctx * nkv * d, 1f);
        float[] v = RandomBf16(rng, (long)ctx * nkv * d, 1f);

        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(ToCache(k, ctx, nkv, d, maxCtx));
        using var vBuf = DeviceBuffer.FromHost<ushort>(ToCache(v, ctx, nkv, d, maxCtx));
        using var outBuf = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodeWorkspaceBytes(nq, d, maxCtx));
        outBuf.Memset32(Bf16NaNPair);

        ops.Decode(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, ws.Ptr, ctx, nq, nkv, d, maxCtx, scale);
        stream.Synchronize();
        float[] got = FromBf16(outBuf.ToArray<ushort>());
        AssertAllFinite(got, d, "decode (host ctx)");
        CompareWithReference(got, q, k, v, 1, ctx - 1, nq, nkv, d, scale, Enumerable.Range(0, nkv).ToArray(), "decode (host ctx)");
    }

    [Test]
    public void DecodeAgreesWithPrefillOfOneToken()
    {
        // The two kernels take different routes (split + merge vs one block); for T = 1 they must agree.
        var (ops, stream) = Gpu();
        var rng = NewRng();
        const int nq = 40, nkv = 8, d = 128, maxCtx = 9000, ctx = 8500;
        float scale = 1f / MathF.Sqrt(d);
        float[] q = RandomBf16(rng, nq * d, 1.5f);
        float[] k = RandomBf16(rng, (long)ctx * nkv * d, 1f);
        float[] v = RandomBf16(rng, (long)ctx * nkv * d, 1f);
        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(ToCache(k, ctx, nkv, d, maxCtx));
        using var vBuf = DeviceBuffer.FromHost<ushort>(ToCache(v, ctx, nkv, d, maxCtx));
        using var outA = DeviceBuffer.Allocate(2L * nq * d);
        using var outB = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodeWorkspaceBytes(nq, d, maxCtx));
        outA.Memset32(Bf16NaNPair);
        outB.Memset32(Bf16NaNPair);

        ops.Decode(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outA.Ptr, ws.Ptr, ctx, nq, nkv, d, maxCtx, scale);
        ops.Prefill(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outB.Ptr, 1, ctx - 1, nq, nkv, d, maxCtx, scale);
        stream.Synchronize();
        float[] a = FromBf16(outA.ToArray<ushort>());
        float[] b = FromBf16(outB.ToArray<ushort>());
        AssertAllFinite(a, d, "decode");
        AssertAllFinite(b, d, "prefill");
        AssertClose(a, b, nq, d, "decode vs prefill");
    }

    [Test]
    public void RejectsUnsupportedShapes()
    {
        var (ops, stream) = Gpu();
        using var buf = DeviceBuffer.Allocate(1 << 16);
        ulong p = buf.Ptr;
        Assert.Throws<ArgumentException>(() => ops.Prefill(stream, p, p, p, p, 1, 0, 40, 7, 128, 100, 0.1f)); // nq % nkv
        Assert.Throws<ArgumentException>(() => ops.Prefill(stream, p, p, p, p, 1, 0, 40, 8, 96, 100, 0.1f));  // head_dim
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.Prefill(stream, p, p, p, p, 0, 0, 40, 8, 128, 100, 0.1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.Prefill(stream, p, p, p, p, 10, 95, 40, 8, 128, 100, 0.1f));
        Assert.Throws<ArgumentException>(() => ops.Prefill(stream, p, p + 8, p, p, 1, 0, 40, 8, 128, 100, 0.1f)); // K alignment
        Assert.Throws<ArgumentException>(() => ops.DecodeDevice(stream, p, p, p, p, p, p, 34, 2, 128, 100, 0.1f)); // group 17
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.Decode(stream, p, p, p, p, p, 0, 40, 8, 128, 100, 0.1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.Decode(stream, p, p, p, p, p, 101, 40, 8, 128, 100, 0.1f));
    }

    // ---------------------------------------------------------------- throughput (run by hand on a GPU)

    [Test, Explicit("throughput report, not a correctness check")]
    public void PrefillThroughput_QwqShape_16k()
    {
        var (ops, stream) = Gpu();
        const int nq = 40, nkv = 8, d = 128, tokens = 16384, maxCtx = 16384;
        using var q = DeviceBuffer.Allocate(2L * tokens * nq * d);
        using var k = DeviceBuffer.Allocate(2L * nkv * maxCtx * d);
        using var v = DeviceBuffer.Allocate(2L * nkv * maxCtx * d);
        using var o = DeviceBuffer.Allocate(2L * tokens * nq * d);
        foreach (var b in new[] { q, k, v }) b.Memset32(0x3C003C00); // bf16 pairs of 0.0078125: finite, harmless
        float ms = Time(stream, 5, () => ops.Prefill(stream, q.Ptr, k.Ptr, v.Ptr, o.Ptr, tokens, 0, nq, nkv, d, maxCtx, 1f / MathF.Sqrt(d)));
        double flops = 4.0 * tokens * (tokens + 1) / 2.0 * nq * d; // causal: QK^T and PV over the lower triangle
        TestContext.Out.WriteLine($"prefill T={tokens}: {ms:F2} ms/layer, {flops / ms / 1e9:F0} TFLOP/s");
    }

    [Test, Explicit("throughput report, not a correctness check")]
    public void DecodeBandwidth_QwqShape()
    {
        var (ops, stream) = Gpu();
        const int nq = 40, nkv = 8, d = 128, maxCtx = 131072;
        using var q = DeviceBuffer.Allocate(2L * nq * d);
        using var k = DeviceBuffer.Allocate(2L * nkv * maxCtx * d);
        using var v = DeviceBuffer.Allocate(2L * nkv * maxCtx * d);
        using var o = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodeWorkspaceBytes(nq, d, maxCtx));
        using var ctxBuf = DeviceBuffer.Allocate(16);
        foreach (var b in new[] { q, k, v }) b.Memset32(0x3C003C00);
        foreach (int ctx in new[] { 1024, 8192, 32768, 131072 })
        {
            ctxBuf.Memset32((uint)ctx, stream);
            float ms = Time(stream, 20, () => ops.DecodeDevice(stream, q.Ptr, k.Ptr, v.Ptr, o.Ptr, ws.Ptr, ctxBuf.Ptr,
                nq, nkv, d, maxCtx, 1f / MathF.Sqrt(d)));
            double bytes = 2.0 * 2 * nkv * (double)ctx * d;
            TestContext.Out.WriteLine($"decode ctx={ctx}: {ms * 1000:F1} us/layer, {bytes / ms / 1e6:F0} GB/s of K/V");
        }
    }

    private static float Time(CudaStream stream, int reps, Action launch)
    {
        launch(); // warm-up (JIT of the PTX happened at load; this settles clocks and caches)
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        start.Record(stream);
        for (int i = 0; i < reps; i++) launch();
        end.Record(stream);
        end.Synchronize();
        return CudaEvent.ElapsedMilliseconds(start, end) / reps;
    }

    // ---------------------------------------------------------------- helpers

    private static Random NewRng()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int fixedSeed)
            ? fixedSeed
            : Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        return new Random(seed);
    }

    /// <summary>Gaussian values with standard deviation <paramref name="std"/>, already rounded to bf16.</summary>
    private static float[] RandomBf16(Random rng, long count, float std)
    {
        var a = new float[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = Bf16.Round((float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }
        return a;
    }

    private static ushort[] ToBf16(float[] a) => Bf16.FromFloat(a);
    private static float[] FromBf16(ushort[] a) => Bf16.ToFloat(a);

    /// <summary>[S, nkv, D] floats -> cache [nkv, maxCtx, D] bf16 with positions S.. poisoned by NaN.</summary>
    private static ushort[] ToCache(float[] kv, int s, int nkv, int d, int maxCtx)
    {
        var cache = new ushort[(long)nkv * maxCtx * d];
        Array.Fill(cache, Bf16NaN);
        for (int pos = 0; pos < s; pos++)
            for (int h = 0; h < nkv; h++)
                for (int i = 0; i < d; i++)
                    cache[((long)h * maxCtx + pos) * d + i] = Bf16.FromFloat(kv[((long)pos * nkv + h) * d + i]);
        return cache;
    }

    private static void AssertAllFinite(float[] got, int d, string what)
    {
        for (int i = 0; i < got.Length; i++)
            if (!float.IsFinite(got[i]))
                Assert.Fail($"{what}: output row {i / d} dim {i % d} is {got[i]} (never written, or NaN from masked cache slots)");
    }

    /// <summary>
    /// Runs the CPU reference on the query heads of <paramref name="kvHeads"/> (sliced out of q/k/v) and compares
    /// them with the matching rows of the GPU output [tokens, nq, D].
    /// </summary>
    private static void CompareWithReference(float[] got, float[] q, float[] k, float[] v, int tokens, int startPos,
        int nq, int nkv, int d, float scale, int[] kvHeads, string what)
    {
        int group = nq / nkv;
        int subNkv = kvHeads.Length, subNq = subNkv * group;
        int s = k.Length / (nkv * d);
        var qs = new float[(long)tokens * subNq * d];
        var ks = new float[(long)s * subNkv * d];
        var vs = new float[(long)s * subNkv * d];
        var gs = new float[qs.Length];
        for (int j = 0; j < subNkv; j++)
        {
            int h = kvHeads[j];
            for (int pos = 0; pos < s; pos++)
            {
                Array.Copy(k, ((long)pos * nkv + h) * d, ks, ((long)pos * subNkv + j) * d, d);
                Array.Copy(v, ((long)pos * nkv + h) * d, vs, ((long)pos * subNkv + j) * d, d);
            }
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < group; r++)
                {
                    long src = ((long)t * nq + h * group + r) * d, dst = ((long)t * subNq + j * group + r) * d;
                    Array.Copy(q, src, qs, dst, d);
                    Array.Copy(got, src, gs, dst, d);
                }
        }
        var expected = new float[qs.Length];
        CpuOps.CausalAttention(qs, ks, vs, expected, tokens, startPos, subNq, subNkv, d, scale);
        AssertClose(gs, expected, tokens * subNq, d, what);
    }

    private static void AssertClose(float[] got, float[] expected, int rows, int d, string what)
    {
        double num = 0, den = 0, worst = 0;
        int worstRow = -1;
        for (int r = 0; r < rows; r++)
        {
            double rn = 0, rd = 0;
            for (int i = 0; i < d; i++)
            {
                double e = expected[(long)r * d + i], g = got[(long)r * d + i];
                rn += (g - e) * (g - e);
                rd += e * e;
            }
            num += rn;
            den += rd;
            double rel = Math.Sqrt(rn) / (Math.Sqrt(rd) + 1e-6);
            if (rel > worst) (worst, worstRow) = (rel, r);
        }
        double global = Math.Sqrt(num) / (Math.Sqrt(den) + 1e-12);
        TestContext.Out.WriteLine($"{what}: rel error {global:E2} overall, worst row {worstRow} {worst:E2}");
        Assert.That(global, Is.LessThanOrEqualTo(GlobalTolerance), $"{what}: ‖Δ‖/‖ref‖");
        Assert.That(worst, Is.LessThanOrEqualTo(RowTolerance), $"{what}: row {worstRow} (in checked-head order) ‖Δ‖/‖ref‖");
    }
}

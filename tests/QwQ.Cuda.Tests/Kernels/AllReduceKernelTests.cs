using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

// Inside namespace QwQ.*, a bare `Cuda` means the namespace QwQ.Cuda; this alias picks the class.
using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// The one-shot all-reduce kernels of kernels/allreduce.cu across the GPUs of this machine (up to 8, every pair with
/// peer access): one context, library and stream per GPU, rank 0 on the fixture's, all driven from one thread (launches
/// are asynchronous, so every rank's kernel is queued before any waits at the barrier for the others). The fused
/// all-reduce + RMSNorm against the host, on every rank, and against the unfused kernels bit for bit. Skipped with
/// fewer GPUs than a case needs.
/// </summary>
[NonParallelizable]
public sealed class AllReduceKernelTests : KernelTestBase
{
    private const float Eps = 1e-5f;

    /// <summary>Decode batch sizes up to the one-shot limit (one block per row), and 130: more rows than blocks.</summary>
    private static readonly int[] RowCounts = [1, 3, 8, 64, 128, 130];

    /// <summary>One GPU's side of the all-reduce.</summary>
    private sealed record Rank(CudaContext Context, CudaStream Stream, AllReduceOps AllReduce, NormOps Norm);

    private readonly List<Rank> _ranks = [];
    private readonly List<(CudaContext Context, PtxLibrary? Library, CudaStream? Stream)> _extra = []; // ranks 1.. (rank 0 is the base's)
    private string _peerNote = "";

    protected override void CreateOps()
    {
        _ranks.Add(new Rank(Context, Stream, new AllReduceOps(Lib), new NormOps(Lib)));
        int devices = Math.Min(Cuda.DeviceCount, AllReduceOps.MaxRanks);
        var contexts = new List<CudaContext> { Context };
        for (int d = 1; d < devices; d++)
        {
            contexts.Add(CudaContext.Create(d));
            _extra.Add((contexts[^1], null, null));
        }
        // The kernels read every peer's memory: the first GPUs of which every pair has peer access.
        int usable = 1;
        while (usable < contexts.Count && Enumerable.Range(0, usable).All(i =>
                   contexts[i].CanAccessPeer(contexts[usable]) && contexts[usable].CanAccessPeer(contexts[i])))
            usable++;
        if (usable < contexts.Count) _peerNote = $" (device {usable} lacks peer access to an earlier one)";
        for (int a = 0; a < usable; a++)
            for (int b = 0; b < usable; b++)
                if (a != b) contexts[a].EnablePeerAccess(contexts[b]);
        for (int d = 1; d < usable; d++)
        {
            contexts[d].MakeCurrent();
            var lib = PtxLibrary.Load(contexts[d]);
            var stream = CudaStream.Create();
            _extra[d - 1] = (contexts[d], lib, stream);
            _ranks.Add(new Rank(contexts[d], stream, new AllReduceOps(lib), new NormOps(lib)));
        }
        Context.MakeCurrent();
    }

    [OneTimeTearDown]
    public void DisposeRanks()
    {
        // Each GPU's stream and modules with its context current, then the context (runs before the base's teardown).
        foreach (var (context, library, stream) in _extra)
        {
            try
            {
                context.MakeCurrent();
                stream?.Dispose();
                library?.Dispose();
            }
            finally
            {
                context.Dispose();
            }
        }
        _extra.Clear();
    }

    private Rank[] Ranks(int n)
    {
        if (_ranks.Count < n) Assert.Ignore($"needs {n} GPUs with peer access between every pair; this machine has {_ranks.Count}{_peerNote}");
        return _ranks.Take(n).ToArray();
    }

    /// <summary>One GPU's buffers of a test: its partial, barrier state, residual and normed rows.</summary>
    private sealed class RankBuffers(Rank rank, int rows, int hidden) : IDisposable
    {
        public Rank Rank { get; } = rank;
        public DeviceBuffer Partial { get; } = DeviceBuffer.Allocate(4L * rows * hidden);   // fp32 [rows, hidden]
        public DeviceBuffer Signal { get; } = DeviceBuffer.Allocate(AllReduceOps.SignalBytes);
        public DeviceBuffer Residual { get; } = DeviceBuffer.Allocate(4L * rows * hidden);  // fp32 [rows, hidden]
        public DeviceBuffer Out { get; } = DeviceBuffer.Allocate(2L * rows * hidden);       // bf16 [rows, hidden]
        public DeviceBuffer Weight { get; } = DeviceBuffer.Allocate(2L * hidden);            // bf16 [hidden]

        public void Dispose()
        {
            Rank.Context.MakeCurrent();
            foreach (var b in new[] { Partial, Signal, Residual, Out, Weight }) b.Dispose();
        }
    }

    /// <summary>Every rank's buffers for up to <paramref name="rows"/> rows, barrier state zeroed (as ResidualSum does once).</summary>
    private static RankBuffers[] Allocate(Rank[] ranks, int rows, int hidden)
    {
        var all = new List<RankBuffers>();
        try
        {
            foreach (var r in ranks)
            {
                r.Context.MakeCurrent();
                all.Add(new RankBuffers(r, rows, hidden));
                all[^1].Signal.Memset32(0);
            }
            return [.. all];
        }
        catch
        {
            foreach (var b in all) b.Dispose();
            throw;
        }
    }

    private static unsafe AllReduceOps.PeerPointers Peers(RankBuffers[] gpus)
    {
        var p = new AllReduceOps.PeerPointers();
        for (int r = 0; r < gpus.Length; r++)
        {
            p.Partial[r] = gpus[r].Partial.Ptr;
            p.Flags[r] = gpus[r].Signal.Ptr;
        }
        return p;
    }

    /// <summary>Random inputs: a partial per rank, one residual stream (the same on every rank, as in the engine), a norm weight.</summary>
    private (float[][] Partials, float[] Residual, float[] Weight) Inputs(int ranks, int rows, int hidden) =>
        ([.. Enumerable.Range(0, ranks).Select(_ => Normal((long)rows * hidden))], Normal((long)rows * hidden, 3f), NormalBf16(hidden, 0.1f, 1f));

    private static void Upload(RankBuffers[] gpus, float[][] partials, float[] residual, float[] weight)
    {
        for (int r = 0; r < gpus.Length; r++)
        {
            gpus[r].Rank.Context.MakeCurrent();
            gpus[r].Partial.CopyFromHost<float>(partials[r]);
            gpus[r].Residual.CopyFromHost<float>(residual);
            gpus[r].Weight.CopyFromHost<ushort>(Bf16.FromFloat(weight));
            gpus[r].Out.Memset32(Bf16NaNPair);
        }
    }

    /// <summary>Each rank's residual and normed bits after its stream has finished.</summary>
    private static (float[] Residual, ushort[] Out)[] Read(RankBuffers[] gpus, int rows, int hidden) =>
        [.. gpus.Select(g =>
        {
            g.Rank.Context.MakeCurrent();
            g.Rank.Stream.Synchronize();
            var residual = new float[rows * hidden];
            var normed = new ushort[rows * hidden];
            g.Residual.CopyToHost<float>(residual);
            g.Out.CopyToHost<ushort>(normed);
            return (residual, normed);
        })];

    private static void Fused(RankBuffers[] gpus, int rows, int hidden)
    {
        var peers = Peers(gpus);
        for (int r = 0; r < gpus.Length; r++)
        {
            Rank k = gpus[r].Rank;
            k.Context.MakeCurrent();
            k.AllReduce.AllReduceAddRmsNorm(k.Stream, peers, r, gpus.Length, gpus[r].Signal.Ptr, gpus[r].Residual.Ptr,
                gpus[r].Weight.Ptr, gpus[r].Out.Ptr, rows, hidden, Eps);
        }
    }

    /// <summary>What the engine ran before the fusion: the all-reduce, then the norm kernel.</summary>
    private static void Unfused(RankBuffers[] gpus, int rows, int hidden)
    {
        var peers = Peers(gpus);
        // Every rank's all-reduce before any norm: a kernel's first launch may wait for its context's work (lazy
        // loading), and from this one thread rank 0's all-reduce would then wait for rank 1's, not yet launched.
        for (int r = 0; r < gpus.Length; r++)
        {
            Rank k = gpus[r].Rank;
            k.Context.MakeCurrent();
            k.AllReduce.AllReduceAdd(k.Stream, peers, r, gpus.Length, gpus[r].Signal.Ptr, gpus[r].Residual.Ptr, (long)rows * hidden);
        }
        for (int r = 0; r < gpus.Length; r++)
        {
            Rank k = gpus[r].Rank;
            k.Context.MakeCurrent();
            k.Norm.ResidualAddRmsNorm(k.Stream, gpus[r].Residual.Ptr, 0, gpus[r].Weight.Ptr, gpus[r].Out.Ptr, rows, hidden, Eps);
        }
    }

    /// <summary>
    /// <paramref name="n"/> ranks' buffers, allocated once for the most rows; then, for every row count, fresh random
    /// inputs uploaded to every rank and <paramref name="body"/> run on them (it may upload them again).
    /// </summary>
    private void ForEveryRowCount(int n, int hidden, Action<RankBuffers[], int, (float[][] Partials, float[] Residual, float[] Weight)> body)
    {
        Rank[] ranks = Ranks(n);
        RankBuffers[] gpus = Allocate(ranks, RowCounts.Max(), hidden);
        try
        {
            foreach (int rows in RowCounts)
            {
                var inputs = Inputs(n, rows, hidden);
                Upload(gpus, inputs.Partials, inputs.Residual, inputs.Weight);
                body(gpus, rows, inputs);
            }
        }
        finally
        {
            foreach (var g in gpus) g.Dispose();
            Context.MakeCurrent();
        }
    }

    // 5120: QwQ-32B's rows, one round of loads per thread; 68: a block of 32 threads, some with one float4 or none;
    // 12296: three rounds (the last partial), the norm re-reads the residual.
    [TestCase(2, 5120)]
    [TestCase(2, 68)]
    [TestCase(2, 12296)]
    [TestCase(4, 5120)]
    [TestCase(8, 5120)]
    [TestCase(8, 12296)]
    public void FusedSumAndNormMatchTheHostOnEveryRank(int n, int hidden) =>
        ForEveryRowCount(n, hidden, (gpus, rows, inputs) =>
        {
            var (partials, residual, weight) = inputs;
            Fused(gpus, rows, hidden);
            var got = Read(gpus, rows, hidden);

            // The kernel's adds: the partials in rank order, then into the residual (fp32, bit for bit).
            float[] wantRes = (float[])residual.Clone();
            for (int i = 0; i < wantRes.Length; i++)
            {
                float sum = partials[0][i];
                for (int p = 1; p < n; p++) sum += partials[p][i];
                wantRes[i] += sum;
            }
            var wantOut = new float[wantRes.Length];
            CpuOps.RmsNorm(wantRes, weight, Eps, wantOut, hidden);
            for (int r = 0; r < n; r++)
            {
                string what = $"{n} ranks, {rows} rows of {hidden}, rank {r}";
                Assert.That(got[r].Residual, Is.EqualTo(wantRes), $"{what}: residual");
                float[] normed = Bf16.ToFloat(got[r].Out);
                AssertClose(normed, wantOut, 1e-2, $"{what}: normed");
                for (int t = 0; t < rows; t++)
                    Assert.That(RelativeError(normed.AsSpan(t * hidden, hidden), wantOut.AsSpan(t * hidden, hidden)),
                        Is.LessThanOrEqualTo(1e-2), $"{what}: normed row {t}");
                // Every rank sums in the same order and norms the same row the same way: the same bits.
                Assert.That(got[r].Out, Is.EqualTo(got[0].Out), $"{what}: normed bits against rank 0");
            }
        });

    /// <summary>
    /// The fused kernel against the two kernels it replaces (allreduce_add_f32, then residual_add_rmsnorm_f32_bf16 with no
    /// delta): the same residual and normed bits, so fusing changes no result. The calls share the barrier state, as the
    /// engine's do (the warm-up and timings use the unfused kernel), with different grids.
    /// </summary>
    [TestCase(2, 5120)]
    [TestCase(2, 68)]
    [TestCase(2, 12296)]
    [TestCase(4, 5120)]
    [TestCase(8, 5120)]
    public void FusedEqualsAllReduceThenNormBitForBit(int n, int hidden) =>
        ForEveryRowCount(n, hidden, (gpus, rows, inputs) =>
        {
            Unfused(gpus, rows, hidden);
            var want = Read(gpus, rows, hidden);
            Upload(gpus, inputs.Partials, inputs.Residual, inputs.Weight);
            Fused(gpus, rows, hidden);
            var got = Read(gpus, rows, hidden);
            for (int r = 0; r < n; r++)
            {
                string what = $"{n} ranks, {rows} rows of {hidden}, rank {r}";
                AssertAllFinite(Bf16.ToFloat(got[r].Out), $"{what}: normed");
                Assert.That(got[r].Residual, Is.EqualTo(want[r].Residual), $"{what}: residual");
                Assert.That(got[r].Out, Is.EqualTo(want[r].Out), $"{what}: normed bits");
            }
        });

    [Test]
    public void RejectsBadArguments()
    {
        Rank[] ranks = Ranks(2);
        RankBuffers[] gpus = Allocate(ranks, 1, 64);
        try
        {
            var peers = Peers(gpus);
            Context.MakeCurrent();
            AllReduceOps ops = ranks[0].AllReduce;
            var g = gpus[0];
            void Call(int rank = 0, int count = 2, ulong weight = 0, int rows = 1, int hidden = 64, float eps = Eps) =>
                ops.AllReduceAddRmsNorm(Stream, peers, rank, count, g.Signal.Ptr, g.Residual.Ptr, weight == 0 ? g.Weight.Ptr : weight,
                    g.Out.Ptr, rows, hidden, eps);
            Assert.Multiple(() =>
            {
                Assert.That(() => Call(hidden: 62), Throws.ArgumentException.With.Property("ParamName").EqualTo("hidden"));
                Assert.That(() => Call(rows: 0), Throws.ArgumentException.With.Property("ParamName").EqualTo("rows"));
                Assert.That(() => Call(eps: 0f), Throws.ArgumentException.With.Property("ParamName").EqualTo("eps"));
                Assert.That(() => Call(weight: g.Weight.Ptr + 2), Throws.ArgumentException.With.Property("ParamName").EqualTo("weight"));
                Assert.That(() => Call(rank: 2), Throws.InstanceOf<ArgumentOutOfRangeException>());
                Assert.That(() => Call(count: 1), Throws.InstanceOf<ArgumentOutOfRangeException>());
            });
        }
        finally
        {
            foreach (var g in gpus) g.Dispose();
            Context.MakeCurrent();
        }
    }
}

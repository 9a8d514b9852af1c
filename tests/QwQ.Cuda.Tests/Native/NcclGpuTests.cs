using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

// Inside namespace QwQ.*, a bare `Cuda` means the namespace QwQ.Cuda; this alias picks the class.
using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// NCCL collectives across the GPUs of this machine (up to 4), one process, one thread, ncclCommInitAll. Skipped
/// without CUDA, with fewer than 2 devices, or without NCCL. Values are small integers, exact in fp32, so every
/// comparison is exact whatever order NCCL sums in.
/// </summary>
[NonParallelizable]
public class NcclGpuTests
{
    private const int Count = 4096;

    private int[] _devices = [];
    private CudaContext[] _contexts = [];

    [OneTimeSetUp]
    public void FindDevices()
    {
        if (!Cuda.IsAvailable(out _) || !Nccl.IsAvailable(out _)) return;
        CudaErrors.Check(CudaDriverApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (count < 2) return;
        _devices = Enumerable.Range(0, Math.Min(count, 4)).ToArray();
        _contexts = _devices.Select(d => CudaContext.Create(d)).ToArray();
    }

    [SetUp]
    public void RequireGpus()
    {
        if (!Cuda.IsAvailable(out var reason)) Assert.Ignore($"no CUDA device ({reason})");
        if (!Nccl.IsAvailable(out var why)) Assert.Ignore($"NCCL is not available ({why})");
        if (_devices.Length < 2) Assert.Ignore("too few GPUs: the NCCL tests need at least 2 CUDA devices");
    }

    [OneTimeTearDown]
    public void ReleaseContexts()
    {
        foreach (var c in _contexts) c.Dispose();
    }

    /// <summary>Per rank: a buffer holding <paramref name="values"/>(rank) and a stream, each made on the rank's device.</summary>
    private (DeviceBuffer[] Buffers, CudaStream[] Streams) Allocate(Func<int, float[]> values, long extraBytes = 0)
    {
        var buffers = new DeviceBuffer[_devices.Length];
        var streams = new CudaStream[_devices.Length];
        for (int r = 0; r < _devices.Length; r++)
        {
            _contexts[r].MakeCurrent();
            var v = values(r);
            buffers[r] = DeviceBuffer.Allocate(v.Length * sizeof(float) + extraBytes);
            buffers[r].CopyFromHost<float>(v);
            streams[r] = CudaStream.Create();
        }
        return (buffers, streams);
    }

    private float[] Read(int rank, DeviceBuffer buffer, CudaStream stream, int count)
    {
        _contexts[rank].MakeCurrent(); // NCCL may have switched the thread's device
        stream.Synchronize();
        var host = new float[count];
        buffer.CopyToHost<float>(host);
        return host;
    }

    private static void Free(DeviceBuffer[] buffers, CudaStream[] streams)
    {
        foreach (var s in streams) s.Dispose();
        foreach (var b in buffers) b.Dispose();
    }

    [Test]
    public void VersionIsNccl2()
    {
        var (major, _, _) = Nccl.DecodeVersion(Nccl.Version);
        TestContext.Out.WriteLine($"NCCL {Nccl.FormatVersion(Nccl.Version)}");
        Assert.That(major, Is.EqualTo(2));
        Assert.That(NativeEnvironment.Get(Nccl.NvlsEnableVariable), Is.Not.Null, "NVLS setting in place before any communicator");
    }

    [Test]
    public void CommunicatorsKnowTheirRankAndDevice()
    {
        using var clique = NcclClique.Create(_devices);
        Assert.That(clique.Size, Is.EqualTo(_devices.Length));
        for (int r = 0; r < clique.Size; r++)
        {
            Assert.That((clique[r].Rank, clique[r].Size, clique[r].Device), Is.EqualTo((r, _devices.Length, _devices[r])));
            Assert.That(clique[r].GetAsyncError(), Is.EqualTo(NcclResult.Success));
        }
    }

    [Test]
    public void AllReduceSumsKnownValuesOnEveryDevice()
    {
        int n = _devices.Length;
        // rank r holds (r + 1) · (i % 7 + 1): the sum over ranks is n(n+1)/2 · (i % 7 + 1)
        var (buffers, streams) = Allocate(r => Enumerable.Range(0, Count).Select(i => (float)((r + 1) * (i % 7 + 1))).ToArray());
        try
        {
            using var clique = NcclClique.Create(_devices);
            var pointers = buffers.Select(b => b.Ptr).ToArray();
            var handles = streams.Select(s => s.Handle).ToArray();
            clique.AllReduce(pointers, pointers, Count, NcclDataType.Float32, NcclRedOp.Sum, handles); // in place

            float triangle = n * (n + 1) / 2f;
            var expected = Enumerable.Range(0, Count).Select(i => triangle * (i % 7 + 1)).ToArray();
            for (int r = 0; r < n; r++)
                Assert.That(Read(r, buffers[r], streams[r], Count), Is.EqualTo(expected), $"rank {r} (device {_devices[r]})");
            clique.ThrowIfAsyncError();

            // The hot path allocates nothing: the same all-reduce again, measured (the sum is now n · triangle · (i % 7 + 1)).
            long before = GC.GetAllocatedBytesForCurrentThread();
            clique.AllReduce(pointers, pointers, Count, NcclDataType.Float32, NcclRedOp.Sum, handles);
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.That(allocated, Is.Zero, "bytes allocated by one all-reduce over every rank");
            for (int r = 0; r < n; r++)
                Assert.That(Read(r, buffers[r], streams[r], Count), Is.EqualTo(expected.Select(x => x * n).ToArray()), $"rank {r}, second all-reduce");
        }
        finally
        {
            Free(buffers, streams);
        }
    }

    [Test]
    public void AllGatherConcatenatesInRankOrder()
    {
        int n = _devices.Length, part = 256;
        // rank r's send part is r·1000 + i, at the front of a buffer that also holds the n·part receive area after it
        var (buffers, streams) = Allocate(r => Enumerable.Range(0, part).Select(i => (float)(r * 1000 + i)).ToArray(),
            extraBytes: (long)n * part * sizeof(float));
        try
        {
            using var clique = NcclClique.Create(_devices);
            var send = buffers.Select(b => b.Ptr).ToArray();
            var recv = buffers.Select(b => b.Ptr + (ulong)(part * sizeof(float))).ToArray();
            clique.AllGather(send, recv, part, NcclDataType.Float32, streams.Select(s => s.Handle).ToArray());

            var expected = Enumerable.Range(0, n).SelectMany(r => Enumerable.Range(0, part).Select(i => (float)(r * 1000 + i))).ToArray();
            for (int r = 0; r < n; r++)
                Assert.That(Read(r, buffers[r], streams[r], part + n * part)[part..], Is.EqualTo(expected), $"rank {r}");
            clique.ThrowIfAsyncError();
        }
        finally
        {
            Free(buffers, streams);
        }
    }

    [Test]
    public void DisposedCommunicatorsAreRefused()
    {
        var clique = NcclClique.Create(_devices);
        clique.Dispose();
        Assert.Throws<ObjectDisposedException>(() => clique[0].GetAsyncError());
        clique.Dispose(); // idempotent
    }
}

using System.Runtime.InteropServices;
using System.Text;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

public class DriverGpuTests : GpuTestBase
{
    // extern "C" __global__ void qwq_test_fill_u32(unsigned* dst, unsigned value, int n) { i < n: dst[i] = value + i }
    // (nvcc -arch=compute_80 -ptx)
    private const string FillPtx = """
        .version 7.8
        .target sm_80
        .address_size 64

        .visible .entry qwq_test_fill_u32(
        	.param .u64 qwq_test_fill_u32_param_0,
        	.param .u32 qwq_test_fill_u32_param_1,
        	.param .u32 qwq_test_fill_u32_param_2
        )
        {
        	.reg .pred 	%p<2>;
        	.reg .b32 	%r<8>;
        	.reg .b64 	%rd<5>;

        	ld.param.u64 	%rd1, [qwq_test_fill_u32_param_0];
        	ld.param.u32 	%r2, [qwq_test_fill_u32_param_1];
        	ld.param.u32 	%r3, [qwq_test_fill_u32_param_2];
        	mov.u32 	%r4, %ctaid.x;
        	mov.u32 	%r5, %ntid.x;
        	mov.u32 	%r6, %tid.x;
        	mad.lo.s32 	%r1, %r4, %r5, %r6;
        	setp.ge.s32 	%p1, %r1, %r3;
        	@%p1 bra 	$L__BB0_2;

        	cvta.to.global.u64 	%rd2, %rd1;
        	mul.wide.s32 	%rd3, %r1, 4;
        	add.s64 	%rd4, %rd2, %rd3;
        	add.s32 	%r7, %r1, %r2;
        	st.global.u32 	[%rd4], %r7;

        $L__BB0_2:
        	ret;
        }
        """;

    [Test]
    public void ContextProperties()
    {
        Assert.That(Context.DeviceName, Is.Not.Empty);
        Assert.That(Context.TotalMemory, Is.GreaterThan(1L << 30));
        Assert.That(Context.MultiprocessorCount, Is.GreaterThan(0));
        Assert.That(Context.ComputeCapability.Major, Is.GreaterThanOrEqualTo(7));
        Assert.That(Context.DriverVersion, Is.GreaterThanOrEqualTo(12000));
        Assert.That(Context.L2CacheBytes, Is.GreaterThan(0));
        var (free, total) = Context.GetMemoryInfo();
        Assert.That(total, Is.EqualTo(Context.TotalMemory));
        Assert.That(free, Is.InRange(1, total));
        TestContext.Out.WriteLine(Context.ToString());
    }

    [Test]
    public void AllocCopyRoundTrip()
    {
        var rng = new Random(42);
        var data = new float[100_003];
        for (int i = 0; i < data.Length; i++) data[i] = (float)rng.NextDouble() * 200 - 100;
        using var buf = DeviceBuffer.FromHost<float>(data);
        Assert.That(buf.Bytes, Is.EqualTo(data.Length * 4L));
        Assert.That(buf.Ptr % 256, Is.EqualTo(0UL));
        Assert.That(buf.ToArray<float>(), Is.EqualTo(data));

        // Offsets, and a different element type over the same bytes.
        var part = new float[10];
        buf.CopyToHost<float>(part, byteOffset: 4 * 500);
        Assert.That(part, Is.EqualTo(data[500..510]));
        buf.CopyFromHost<float>(new float[] { 1, 2, 3 }, byteOffset: 8);
        var bytes = buf.ToArray<byte>();
        Assert.That(MemoryMarshal.Cast<byte, float>(bytes.AsSpan(8, 12)).ToArray(), Is.EqualTo(new float[] { 1, 2, 3 }));

        Assert.Throws<ArgumentOutOfRangeException>(() => buf.CopyFromHost<float>(new float[2], byteOffset: buf.Bytes - 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => buf.CopyToHost<byte>(new byte[1], byteOffset: -1));
    }

    [Test]
    public void AsyncCopiesThroughPinnedMemoryAndDeviceToDevice()
    {
        using var stream = CudaStream.Create();
        using var input = PinnedHostBuffer.Allocate(4096);
        using var output = PinnedHostBuffer.Allocate(4096);
        var span = input.AsSpan<int>();
        Assert.That(span.Length, Is.EqualTo(1024));
        for (int i = 0; i < span.Length; i++) span[i] = i * 7 - 3;
        output.AsSpan<int>().Fill(-1);

        using var a = DeviceBuffer.Allocate(4096);
        using var b = DeviceBuffer.Allocate(8192);
        a.CopyFromHostAsync(input.Ptr, 4096, 0, stream);
        b.CopyFromDevice(a.Ptr, 4096, 4096, stream);
        b.CopyToHostAsync(output.Ptr, 4096, 4096, stream);
        stream.Synchronize();
        Assert.That(output.AsSpan<int>().ToArray(), Is.EqualTo(Enumerable.Range(0, 1024).Select(i => i * 7 - 3).ToArray()));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.CopyFromDevice(a.Ptr, 4096, 4097, stream));
    }

    [Test]
    public void Memset32FillsWholeBufferIncludingTail()
    {
        using var buf = DeviceBuffer.Allocate(4 * 1000 + 2);
        buf.Memset32(0x7FC00000);
        var f = new float[1000];
        buf.CopyToHost<float>(f);
        Assert.That(f.All(float.IsNaN), Is.True);
        var tail = new byte[2];
        buf.CopyToHost<byte>(tail, 4000);
        Assert.That(tail, Is.EqualTo(new byte[] { 0x00, 0x00 }));

        using var stream = CudaStream.Create();
        buf.Memset32(0x11223344, stream);
        stream.Synchronize();
        var all = buf.ToArray<byte>();
        Assert.That(MemoryMarshal.Cast<byte, uint>(all.AsSpan(0, 4000)).ToArray().All(v => v == 0x11223344), Is.True);
        Assert.That(all[4000..], Is.EqualTo(new byte[] { 0x44, 0x33 }));
    }

    [Test]
    public void EventTiming()
    {
        using var stream = CudaStream.Create();
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        using var buf = DeviceBuffer.Allocate(64L << 20);
        start.Record(stream);
        for (int i = 0; i < 10; i++) buf.Memset32((uint)i, stream);
        end.Record(stream);
        end.Synchronize();
        float ms = CudaEvent.ElapsedMilliseconds(start, end);
        Assert.That(ms, Is.GreaterThan(0f).And.LessThan(10_000f));

        using var noTiming = CudaEvent.Create(timing: false);
        noTiming.Record(stream);
        noTiming.Synchronize();
        Assert.Throws<CudaException>(() => CudaEvent.ElapsedMilliseconds(start, noTiming));
    }

    [Test]
    public void GraphCaptureReplaysAMemcpy()
    {
        using var stream = CudaStream.Create();
        using var src = DeviceBuffer.FromHost<int>(Enumerable.Range(0, 256).ToArray());
        using var dst = DeviceBuffer.Allocate(src.Bytes);
        dst.Memset32(0);

        using var graph = CudaGraph.Capture(stream, () => dst.CopyFromDevice(src.Ptr, src.Bytes, 0, stream));
        stream.Synchronize();
        Assert.That(dst.ToArray<int>(), Is.All.EqualTo(0), "capture records, it does not execute");

        graph.Launch(stream);
        stream.Synchronize();
        Assert.That(dst.ToArray<int>(), Is.EqualTo(Enumerable.Range(0, 256).ToArray()));

        src.CopyFromHost<int>(Enumerable.Range(1000, 256).ToArray());
        graph.Launch(stream);
        stream.Synchronize();
        Assert.That(dst.ToArray<int>(), Is.EqualTo(Enumerable.Range(1000, 256).ToArray()), "replay reads the current data");
    }

    [Test]
    public void FailedCaptureLeavesTheStreamUsable()
    {
        using var stream = CudaStream.Create();
        Assert.Throws<InvalidOperationException>(() => CudaGraph.Capture(stream, () => throw new InvalidOperationException("boom")));
        using var buf = DeviceBuffer.Allocate(16);
        buf.Memset32(5, stream);
        stream.Synchronize();
        Assert.That(buf.ToArray<uint>(), Is.All.EqualTo(5u));
    }

    [Test]
    public unsafe void ModuleLoadAndKernelLaunchWithoutAllocation()
    {
        using var module = CudaModule.LoadPtx(Encoding.UTF8.GetBytes(FillPtx), "test_fill");
        var kernel = module.GetKernel("qwq_test_fill_u32");
        Assert.That(kernel.Name, Is.EqualTo("qwq_test_fill_u32"));
        using var stream = CudaStream.Create();
        const int n = 1000;
        using var buf = DeviceBuffer.Allocate(4 * n);

        ulong ptr = buf.Ptr;
        uint value = 7;
        int count = n;
        void** args = stackalloc void*[3];
        args[0] = &ptr;
        args[1] = &value;
        args[2] = &count;
        var grid = new Dim3((n + 255) / 256);
        var block = new Dim3(256);
        kernel.Launch(grid, block, 0, stream, args); // warm up (JIT of the generated stubs etc.)

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) kernel.Launch(grid, block, 0, stream, args);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        stream.Synchronize();
        Assert.That(allocated, Is.Zero, "a launch must not allocate");
        Assert.That(buf.ToArray<uint>(), Is.EqualTo(Enumerable.Range(0, n).Select(i => 7u + (uint)i).ToArray()));

        var bad = Assert.Throws<CudaException>(() => kernel.Launch(new Dim3(1), new Dim3(4096), 0, stream, args));
        Assert.That(bad!.Message, Does.StartWith("cuLaunchKernel failed: CUDA_ERROR_").And.Contain("qwq_test_fill_u32"));

        var missing = Assert.Throws<CudaException>(() => module.GetKernel("no_such_kernel"));
        Assert.That(missing!.Message, Does.Contain("CUDA_ERROR_NOT_FOUND").And.Contain("no_such_kernel").And.Contain("test_fill"));

        kernel.SetMaxDynamicSharedMemory(64 * 1024);
    }

    [Test]
    public void BadPtxThrowsWithJitLog()
    {
        var e = Assert.Throws<CudaException>(() =>
            CudaModule.LoadPtx(Encoding.UTF8.GetBytes(".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry broken() { bogus.instruction; }\n"), "broken_module"));
        Assert.That(e!.Message, Does.StartWith("cuModuleLoadDataEx failed: ").And.Contain("broken_module"));
        Assert.That(e.Message, Does.Contain("JIT log"));
        TestContext.Out.WriteLine(e.Message);
    }

    [Test]
    public void PtxLibraryLoadsEveryEmbeddedModule()
    {
        using var lib = PtxLibrary.Load(Context);
        Assert.That(PtxLibrary.EmbeddedEntries(), Is.Not.Empty, "the committed kernels/ptx is embedded in every build");
        foreach (var entry in PtxLibrary.EmbeddedEntries())
        {
            var k = lib.GetKernel(entry);
            Assert.That(k.Handle, Is.Not.EqualTo(IntPtr.Zero), entry);
            Assert.That(lib.GetKernel(entry).Handle, Is.EqualTo(k.Handle), "cached");
        }
        var e = Assert.Throws<KeyNotFoundException>(() => lib.GetKernel("not_an_entry_anywhere"));
        Assert.That(e!.Message, Does.Contain("not_an_entry_anywhere"));
    }

    [Test]
    public void DisposeIsIdempotent()
    {
        var buf = DeviceBuffer.Allocate(1024);
        var stream = CudaStream.Create();
        var ev = CudaEvent.Create();
        var pinned = PinnedHostBuffer.Allocate(1024);
        foreach (IDisposable d in new IDisposable[] { buf, stream, ev, pinned }) { d.Dispose(); d.Dispose(); }
        Assert.Throws<ObjectDisposedException>(() => _ = buf.Ptr);
        Assert.Throws<ObjectDisposedException>(() => _ = stream.Handle);
        using var zero = DeviceBuffer.Allocate(0);
        Assert.That(zero.Ptr, Is.EqualTo(0UL));
        Assert.That(zero.ToArray<float>(), Is.Empty);
    }

    [Test]
    public void HugeAllocationThrowsOutOfMemory()
    {
        var e = Assert.Throws<CudaOutOfMemoryException>(() => DeviceBuffer.Allocate(1L << 50));
        Assert.That(e!.Message, Does.StartWith("cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY").And.Contain("--max-context"));
    }
}

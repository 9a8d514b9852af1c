using System.Runtime.CompilerServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

/// <summary>
/// The TMA tensor map the sm_90a prefill attention reads K and V through (Native/TensorMap.cs): its size is the
/// driver's CUtensorMap, bad arguments are refused before the driver is called, and on a GPU of compute capability
/// 9.0+ the driver encodes one over a real pool (the attention kernel tests run the kernel on it).
/// </summary>
public class TensorMapTests
{
    [Test]
    public void IsTheDriversCuTensorMap() => Assert.That(Unsafe.SizeOf<TensorMap>(), Is.EqualTo(128));

    [TestCase(0x1008UL, 128, 64, 100UL, "address")]     // not 16-byte aligned
    [TestCase(0UL, 128, 64, 100UL, "address")]
    [TestCase(0x1000UL, 96, 64, 100UL, "rowElements")]  // not whole 64-element (128-byte) boxes
    [TestCase(0x1000UL, 128, 0, 100UL, "boxRows")]
    [TestCase(0x1000UL, 128, 257, 100UL, "boxRows")]
    [TestCase(0x1000UL, 128, 64, 0UL, "rows")]
    [TestCase(0x1000UL, 128, 64, (1UL << 32) + 1, "rows")]
    public void BadArgumentsAreRefusedBeforeTheDriver(ulong address, int rowElements, int boxRows, ulong rows, string parameter)
    {
        var e = Assert.Catch<ArgumentException>(() => TensorMap.EncodeBf16Rows(address, rows, rowElements, boxRows))!;
        Assert.That(e.ParamName, Is.EqualTo(parameter));
    }

}

/// <summary>The driver's half of <see cref="TensorMapTests"/>: skipped without a CUDA device.</summary>
public class TensorMapGpuTests : GpuTestBase
{
    [Test]
    public void TheDriverEncodesAPoolMap()
    {
        if (Context.ComputeCapability.Major < 9) Assert.Ignore("tensor maps need compute capability 9.0+");
        using var pool = DeviceBuffer.Allocate(64L * 128 * 2 * 8); // 8 blocks of 64 rows of 128 bf16
        TensorMap map = TensorMap.EncodeBf16Rows(pool.Ptr, 1UL << 31, 128, 64);
        ulong any = 0;
        foreach (ulong w in map) any |= w;
        Assert.That(any, Is.Not.Zero, "the driver wrote the map");
    }
}

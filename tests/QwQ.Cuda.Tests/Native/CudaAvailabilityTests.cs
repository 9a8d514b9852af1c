using QwQ.Cuda.Errors;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

// Inside namespace QwQ.*, a bare `Cuda` means the namespace QwQ.Cuda; this alias picks the class.
using Cuda = global::QwQ.Cuda.Native.Cuda;

public class CudaAvailabilityTests
{
    [Test]
    public void IsAvailableNeverThrowsAndExplainsFalse()
    {
        bool available = false;
        string reason = "unset";
        Assert.DoesNotThrow(() => available = Cuda.IsAvailable(out reason));
        if (available)
            Assert.That(reason, Is.Empty);
        else
            Assert.That(reason, Is.Not.Empty.And.Length.GreaterThan(20), "a false result must say why, with the fix");
    }

    [Test]
    public void IsAvailableIsStableAcrossCalls()
    {
        bool first = Cuda.IsAvailable(out var r1);
        bool second = Cuda.IsAvailable(out var r2);
        Assert.That(second, Is.EqualTo(first));
        Assert.That(r2, Is.EqualTo(r1));
    }

    [Test]
    public void ContextCreateWithoutCudaThrowsUnavailable()
    {
        if (Cuda.IsAvailable(out _)) Assert.Ignore("CUDA is available here; this checks the no-GPU path");
        var e = Assert.Throws<CudaUnavailableException>(() => CudaContext.Create());
        Assert.That(e!, Is.InstanceOf<QwqException>());
        Cuda.IsAvailable(out var reason);
        Assert.That(e!.Message, Is.EqualTo(reason));
    }

    [Test]
    public void FormatVersion() =>
        Assert.Multiple(() =>
        {
            Assert.That(Cuda.FormatVersion(12000), Is.EqualTo("12.0"));
            Assert.That(Cuda.FormatVersion(12080), Is.EqualTo("12.8"));
            Assert.That(Cuda.FormatVersion(13000), Is.EqualTo("13.0"));
        });
}

using System.Runtime.InteropServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

public class NativeLibraryProbingTests
{
    private static Func<string, string?> Env(params (string Key, string Value)[] vars) =>
        name => vars.FirstOrDefault(v => v.Key == name).Value;

    private static readonly Func<string, bool> NoDirs = _ => false;

    private static IReadOnlyList<string> Linux(NativeLib lib, Func<string, string?>? env = null, Func<string, bool>? dirs = null) =>
        NativeLibraries.CandidatePaths(lib, isWindows: false, Architecture.X64, env ?? Env(), dirs ?? NoDirs);

    [Test]
    public void CublasPrefers13EverywhereThen12()
    {
        Assert.That(Linux(NativeLib.Cublas), Is.EqualTo(new[]
        {
            "libcublas.so.13",
            "/usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.13",
            "/usr/local/cuda/lib64/libcublas.so.13",
            "libcublas.so.12",
            "/usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.12",
            "/usr/local/cuda/lib64/libcublas.so.12",
        }));
    }

    [Test]
    public void CublasLtMirrorsCublas()
    {
        var c = Linux(NativeLib.CublasLt).ToList();
        Assert.That(c[0], Is.EqualTo("libcublasLt.so.13"));
        Assert.That(c, Does.Contain("/usr/local/cuda/lib64/libcublasLt.so.12"));
        Assert.That(c.IndexOf("libcublasLt.so.12"), Is.GreaterThan(c.IndexOf("/usr/local/cuda/lib64/libcublasLt.so.13")));
    }

    [Test]
    public void DriverIsTheSystemLibcuda()
    {
        var c = Linux(NativeLib.Driver, Env(("QWQ_CUBLAS_PATH", "/x/libcublas.so")));
        Assert.That(c, Is.EqualTo(new[] { "libcuda.so.1", "libcuda.so" }));
    }

    [Test]
    public void EnvFileOverrideIsExclusive()
    {
        var c = Linux(NativeLib.Cublas, Env(("QWQ_CUBLAS_PATH", " /opt/cuda/lib/libcublas.so.13.0.1 ")));
        Assert.That(c, Is.EqualTo(new[] { "/opt/cuda/lib/libcublas.so.13.0.1" }));
        // ... and only for its own library.
        Assert.That(Linux(NativeLib.CublasLt, Env(("QWQ_CUBLAS_PATH", "/opt/x.so")))[0], Is.EqualTo("libcublasLt.so.13"));
    }

    [Test]
    public void EnvDirectoryOverrideProbesVersionedNamesThere()
    {
        var c = Linux(NativeLib.CublasLt, Env(("QWQ_CUBLASLT_PATH", "/opt/cuda/lib")), d => d == "/opt/cuda/lib");
        Assert.That(c, Is.EqualTo(new[] { Path.Join("/opt/cuda/lib", "libcublasLt.so.13"), Path.Join("/opt/cuda/lib", "libcublasLt.so.12") }));
    }

    [Test]
    public void BlankEnvIsIgnored() =>
        Assert.That(Linux(NativeLib.Cublas, Env(("QWQ_CUBLAS_PATH", "  ")))[0], Is.EqualTo("libcublas.so.13"));

    [Test]
    public void Arm64UsesSbsaTargetDir() =>
        Assert.That(NativeLibraries.CandidatePaths(NativeLib.Cublas, false, Architecture.Arm64, Env(), NoDirs)[1],
            Is.EqualTo("/usr/local/cuda/targets/sbsa-linux/lib/libcublas.so.13"));

    [Test]
    public void WindowsNames()
    {
        var drv = NativeLibraries.CandidatePaths(NativeLib.Driver, true, Architecture.X64, Env(), NoDirs);
        Assert.That(drv, Is.EqualTo(new[] { "nvcuda.dll" }));

        var blas = NativeLibraries.CandidatePaths(NativeLib.Cublas, true, Architecture.X64, Env(("CUDA_PATH", "C:/CUDA")), NoDirs).ToList();
        Assert.That(blas[0], Is.EqualTo("cublas64_13.dll"));
        Assert.That(blas, Does.Contain(Path.Join("C:/CUDA", "bin", "x64", "cublas64_13.dll")));
        Assert.That(blas.IndexOf("cublas64_12.dll"), Is.GreaterThan(blas.IndexOf(Path.Join("C:/CUDA", "bin", "cublas64_13.dll"))));

        var lt = NativeLibraries.CandidatePaths(NativeLib.CublasLt, true, Architecture.X64, Env(), NoDirs);
        Assert.That(lt, Is.EqualTo(new[] { "cublasLt64_13.dll", "cublasLt64_12.dll" }));
    }

    [Test]
    public void MissingLibraryReportsWhatWasTried()
    {
        // An override to a file that does not exist must fail (no silent fallback) and say what it tried.
        var old = Environment.GetEnvironmentVariable(NativeLibraries.CublasLtPathEnv);
        if (NativeLibraries.TryLoad(NativeLib.CublasLt, out _, out _))
            Assert.Ignore("cuBLASLt already loaded in this process; the load is cached");
        try
        {
            Environment.SetEnvironmentVariable(NativeLibraries.CublasLtPathEnv, "/nonexistent/libcublasLt.so.13");
            Assert.That(NativeLibraries.TryLoad(NativeLib.CublasLt, out var h, out var error), Is.False);
            Assert.That(h, Is.EqualTo(IntPtr.Zero));
            Assert.That(error, Does.Contain("/nonexistent/libcublasLt.so.13").And.Contain(NativeLibraries.CublasLtPathEnv));
            var e = Assert.Throws<CudaUnavailableException>(() => NativeLibraries.Require(NativeLib.CublasLt));
            Assert.That(e!.Message, Is.EqualTo(error));
        }
        finally
        {
            Environment.SetEnvironmentVariable(NativeLibraries.CublasLtPathEnv, old);
        }
    }
}

using System.Reflection;
using System.Runtime.InteropServices;

namespace QwQ.Cuda.Native;

/// <summary>The native libraries this assembly binds to.</summary>
internal enum NativeLib { Driver, Cublas, CublasLt, Nccl }

/// <summary>
/// Resolves the logical library names used by the [LibraryImport]s in this folder to real files.
/// The default .NET probing would look for "libcuda.so" (a dev symlink absent on runtime-only
/// machines) and knows nothing about versioned cuBLAS sonames or the CUDA install dirs, so this
/// assembly's DllImport resolver is owned here. Candidate lists are pure functions so they can be unit-tested.
/// NCCL (tensor parallelism only) is resolved the same way but loaded only when a communicator is wanted.
/// </summary>
internal static class NativeLibraries
{
    // Logical names used in [LibraryImport]; never real files, so they only resolve through Resolve().
    internal const string DriverName = "qwq_cuda_driver";
    internal const string CublasName = "qwq_cublas";
    internal const string CublasLtName = "qwq_cublaslt";
    internal const string NcclName = "qwq_nccl";

    internal const string CublasPathEnv = "QWQ_CUBLAS_PATH";
    internal const string CublasLtPathEnv = "QWQ_CUBLASLT_PATH";
    internal const string NcclPathEnv = "QWQ_NCCL_PATH";

    // cuBLAS majors we accept, newest first. The GPU box has CUDA 13 only; 12 is kept for older installs.
    private static readonly int[] CublasMajors = [13, 12];

    private static readonly Lock Gate = new();
    private static readonly IntPtr[] Handles = new IntPtr[Enum.GetValues<NativeLib>().Length];
    private static bool registered;

    /// <summary>Installs the resolver once. Called from the static constructors of the API classes.</summary>
    internal static void EnsureRegistered()
    {
        if (Volatile.Read(ref registered)) return;
        lock (Gate) // a second thread must not P/Invoke before the resolver is actually installed
        {
            if (registered) return;
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
            }
            catch (InvalidOperationException)
            {
                // Someone already installed a resolver for this assembly; our logical names will then fail to
                // load with DllNotFoundException, which callers report as "CUDA unavailable".
            }
            Volatile.Write(ref registered, true);
        }
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        NativeLib? lib = libraryName switch
        {
            DriverName => NativeLib.Driver,
            CublasName => NativeLib.Cublas,
            CublasLtName => NativeLib.CublasLt,
            NcclName => NativeLib.Nccl,
            _ => null,
        };
        if (lib is null) return IntPtr.Zero; // not ours: default probing
        return TryLoad(lib.Value, out var handle, out _) ? handle : IntPtr.Zero;
    }

    /// <summary>Loads (once, then cached) the library, probing <see cref="CandidatePaths"/> in order.</summary>
    internal static bool TryLoad(NativeLib lib, out IntPtr handle, out string error)
    {
        lock (Gate)
        {
            handle = Handles[(int)lib];
            if (handle != IntPtr.Zero) { error = ""; return true; }
            var candidates = CandidatePaths(lib, OperatingSystem.IsWindows(), RuntimeInformation.ProcessArchitecture,
                Environment.GetEnvironmentVariable, Directory.Exists);
            foreach (var c in candidates)
            {
                if (NativeLibrary.TryLoad(c, out handle))
                {
                    Handles[(int)lib] = handle;
                    error = "";
                    return true;
                }
            }
            handle = IntPtr.Zero;
            error = $"{DisplayName(lib)} could not be loaded (tried: {string.Join(", ", candidates)}). {Fix(lib)}";
            return false;
        }
    }

    /// <summary>Like <see cref="TryLoad"/> but throws <see cref="CudaUnavailableException"/> naming the fix.</summary>
    internal static IntPtr Require(NativeLib lib)
    {
        EnsureRegistered();
        if (!TryLoad(lib, out var h, out var error)) throw new CudaUnavailableException(error);
        return h;
    }

    /// <summary>An optional export of an already loadable library (e.g. a newer _v2 entry point), or zero.</summary>
    internal static IntPtr TryGetExport(NativeLib lib, string name) =>
        TryLoad(lib, out var h, out _) && NativeLibrary.TryGetExport(h, name, out var p) ? p : IntPtr.Zero;

    internal static string DisplayName(NativeLib lib) => lib switch
    {
        NativeLib.Driver => "The CUDA driver library",
        NativeLib.Cublas => "cuBLAS",
        NativeLib.CublasLt => "cuBLASLt",
        _ => "NCCL (libnccl.so.2)",
    };

    private static string Fix(NativeLib lib) => lib switch
    {
        NativeLib.Driver => "Install the NVIDIA driver (R525 or newer, CUDA 12+); on Linux it provides libcuda.so.1.",
        NativeLib.Cublas => $"Install the CUDA 13 (or 12) cuBLAS runtime, add its lib directory to LD_LIBRARY_PATH (PATH on Windows), " +
                            $"or set {CublasPathEnv} to the library file or its directory.",
        NativeLib.CublasLt => $"Install the CUDA 13 (or 12) cuBLAS runtime, add its lib directory to LD_LIBRARY_PATH (PATH on Windows), " +
                              $"or set {CublasLtPathEnv} to the library file or its directory.",
        _ => "NCCL is needed only for --tensor-parallel > 1 (one GPU runs without it). Install NCCL 2 (Linux: e.g. the libnccl2 " +
             $"package or NVIDIA's nvidia-nccl pip wheel), add its lib directory to LD_LIBRARY_PATH, or set {NcclPathEnv} to the library file or its directory.",
    };

    /// <summary>
    /// File names / paths to try, in order. Bare sonames come first so LD_LIBRARY_PATH and the loader cache win
    /// over the fixed CUDA install dirs; for cuBLAS every location of the newest major is tried before an older
    /// major. When the override variable is set it is authoritative: a directory is searched for the versioned
    /// names, anything else is taken as the library file itself (no silent fallback to another copy).
    /// </summary>
    internal static IReadOnlyList<string> CandidatePaths(NativeLib lib, bool isWindows, Architecture arch,
        Func<string, string?> getEnv, Func<string, bool> directoryExists)
    {
        var names = FileNames(lib, isWindows);
        string? envVar = lib switch
        {
            NativeLib.Cublas => CublasPathEnv,
            NativeLib.CublasLt => CublasLtPathEnv,
            NativeLib.Nccl => NcclPathEnv,
            _ => null,
        };
        string? overridePath = envVar is null ? null : getEnv(envVar);
        if (!string.IsNullOrWhiteSpace(overridePath))
        {
            overridePath = overridePath.Trim();
            if (!directoryExists(overridePath)) return [overridePath];
            return names.Select(n => Path.Join(overridePath, n)).ToList();
        }

        var dirs = new List<string>();
        if (lib != NativeLib.Driver) // the driver lives in the system library dirs, never in the toolkit
        {
            if (isWindows)
            {
                var cudaPath = getEnv("CUDA_PATH");
                if (!string.IsNullOrWhiteSpace(cudaPath))
                {
                    dirs.Add(Path.Join(cudaPath, "bin", "x64")); // CUDA 13 layout
                    dirs.Add(Path.Join(cudaPath, "bin"));
                }
            }
            else
            {
                var target = arch == Architecture.Arm64 ? "sbsa-linux" : "x86_64-linux";
                dirs.Add($"/usr/local/cuda/targets/{target}/lib");
                dirs.Add("/usr/local/cuda/lib64");
            }
        }

        var result = new List<string>();
        foreach (var n in names)
        {
            result.Add(n);
            foreach (var d in dirs) result.Add(isWindows ? Path.Join(d, n) : d + "/" + n);
        }
        return result;
    }

    /// <summary>Bare library file names, preferred first.</summary>
    internal static IReadOnlyList<string> FileNames(NativeLib lib, bool isWindows) => lib switch
    {
        NativeLib.Driver => isWindows ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"],
        NativeLib.Cublas => CublasMajors.Select(m => isWindows ? $"cublas64_{m}.dll" : $"libcublas.so.{m}").ToList(),
        NativeLib.CublasLt => CublasMajors.Select(m => isWindows ? $"cublasLt64_{m}.dll" : $"libcublasLt.so.{m}").ToList(),
        // NCCL's ABI is stable across 2.x, so the major soname is enough; the unversioned dev symlink is a last resort.
        // NVIDIA ships NCCL for Linux only; the Windows name is a placeholder so probing fails with the usual message.
        _ => isWindows ? ["nccl.dll"] : ["libnccl.so.2", "libnccl.so"],
    };
}

using System.Collections.ObjectModel;
using System.Text;
using System.Text.RegularExpressions;

namespace QwQ.Cuda.Native;

/// <summary>
/// All kernels of this assembly, JIT-loaded once into the current context and handed out by entry name. build.sh
/// embeds two builds of kernels/*.cu:
/// <list type="bullet">
/// <item><c>ptx/*.ptx</c>, for compute_80: runs on every GPU we support (A100, H100, H200), launched the ordinary way;</item>
/// <item><c>ptx/sm90/*.ptx</c>, for compute_90: the same kernels with programmatic dependent launch (every kernel
/// begins with <c>kernel_entry_barrier</c>, kernels/common.cuh), so each may be scheduled while the one before it
/// finishes. Loaded on sm_90 and newer (driver 12.3+) unless the caller turns it off (<c>EngineOptions.ProgrammaticLaunch</c>).</item>
/// </list>
/// Beside either build, on compute capability 9.0 exactly, <c>ptx/sm90a/*.ptx</c>: kernels/sm90a/*.cu for compute_90a,
/// the arch-specific target whose instructions (wgmma) run on 9.0 and on no later GPU. These are extra kernels with their
/// own entry names (the Hopper prefill attention), not a third build of the others; callers ask
/// <see cref="ArchSpecific"/> before they use one. When none is embedded or the caller turns them off
/// (<c>EngineOptions.HopperAttention</c>), nothing else changes: the portable kernels run.
/// Entry names must be unique across the modules loaded together (they are <c>extern "C"</c>, so a duplicate is a build mistake).
/// </summary>
internal sealed partial class PtxLibrary : IDisposable
{
    private const string ResourcePrefix = "ptx/";
    private const string ProgrammaticPrefix = "ptx/sm90/";
    private const string ArchSpecificPrefix = "ptx/sm90a/";
    private const string ResourceSuffix = ".ptx";

    /// <summary>The oldest GPU generation (compute capability major) whose kernels we launch programmatically: Hopper.</summary>
    public const int ProgrammaticLaunchMinMajor = 9;

    /// <summary>The oldest driver (cuDriverGetVersion encoding) that keeps programmatic launches in a captured graph: CUDA 12.3.</summary>
    public const int ProgrammaticLaunchMinDriver = 12030;

    /// <summary>The one compute capability the arch-specific (sm_90a) kernels run on: Hopper, H100 and H200.</summary>
    public static readonly (int Major, int Minor) ArchSpecificCapability = (9, 0);

    private readonly List<CudaModule> modules;
    private readonly Dictionary<string, CudaModule> moduleByEntry;
    private readonly Dictionary<string, CudaKernel> kernels = new(StringComparer.Ordinal);
    private readonly Lock gate = new();
    private bool disposed;

    private PtxLibrary(List<CudaModule> modules, Dictionary<string, CudaModule> moduleByEntry, bool programmaticLaunch, bool archSpecific)
    {
        this.modules = modules;
        this.moduleByEntry = moduleByEntry;
        ProgrammaticLaunch = programmaticLaunch;
        ArchSpecific = archSpecific;
    }

    /// <summary>Whether this library's kernels are the compute_90 build, launched programmatically (<see cref="CudaKernel.ProgrammaticLaunch"/>).</summary>
    public bool ProgrammaticLaunch { get; }

    /// <summary>
    /// Whether the sm_90a kernels (<c>ptx/sm90a</c>) are loaded: embedded, asked for, and the device is compute
    /// capability 9.0. They begin with <c>kernel_entry_barrier</c> like every kernel, so they are launched as the
    /// others are (programmatically when <see cref="ProgrammaticLaunch"/> is on).
    /// </summary>
    public bool ArchSpecific { get; }

    /// <summary>
    /// Makes <paramref name="context"/> current and loads every embedded PTX module of one build into it: the compute_90
    /// build with programmatic launch when <paramref name="programmaticLaunch"/> is on, the device is sm_90 or newer and
    /// the driver CUDA 12.3 or newer; otherwise the compute_80 build. Plus the sm_90a kernels when
    /// <paramref name="archSpecific"/> is on (see <see cref="LoadsArchSpecific"/>).
    /// </summary>
    public static PtxLibrary Load(CudaContext context, bool programmaticLaunch = true, bool archSpecific = true)
    {
        ArgumentNullException.ThrowIfNull(context);
        context.MakeCurrent();
        bool programmatic = programmaticLaunch && EmbeddedPtx(programmatic: true).Count > 0
            && context.ComputeCapability.Major >= ProgrammaticLaunchMinMajor && context.DriverVersion >= ProgrammaticLaunchMinDriver;
        bool arch = LoadsArchSpecific(context.ComputeCapability, archSpecific, EmbeddedArchSpecificPtx().Count > 0);
        var ptx = arch ? Merge(EmbeddedPtx(programmatic), EmbeddedArchSpecificPtx()) : EmbeddedPtx(programmatic);
        var entryToResource = EntryToResource(ptx); // throws on duplicates before touching the GPU
        var modules = new List<CudaModule>();
        var byResource = new Dictionary<string, CudaModule>(StringComparer.Ordinal);
        try
        {
            foreach (var (resource, text) in ptx)
            {
                var m = CudaModule.LoadPtx(Encoding.UTF8.GetBytes(text), resource);
                modules.Add(m);
                byResource[resource] = m;
            }
        }
        catch
        {
            foreach (var m in modules) m.Dispose();
            throw;
        }
        var byEntry = entryToResource.ToDictionary(kv => kv.Key, kv => byResource[kv.Value], StringComparer.Ordinal);
        return new PtxLibrary(modules, byEntry, programmatic, arch);
    }

    /// <summary>
    /// Whether <see cref="Load"/> adds the sm_90a modules: asked for, embedded, and a device of compute capability 9.0
    /// exactly (sm_90a code does not run on 10.x or 12.x, and the driver refuses to JIT it there). Needs no GPU.
    /// </summary>
    internal static bool LoadsArchSpecific((int Major, int Minor) capability, bool requested, bool embedded) =>
        requested && embedded && capability == ArchSpecificCapability;

    private static SortedDictionary<string, string> Merge(IReadOnlyDictionary<string, string> a, IReadOnlyDictionary<string, string> b)
    {
        var all = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in a.Concat(b)) all.Add(k, v); // resource names differ by folder: no clash
        return all;
    }

    /// <summary>Whether a loaded module has the kernel <paramref name="entry"/> (an entry that an older PTX set may lack).</summary>
    public bool Has(string entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        lock (gate) return moduleByEntry.ContainsKey(entry);
    }

    /// <summary>The kernel named <paramref name="entry"/>; throws naming it when no embedded module has it.</summary>
    public CudaKernel GetKernel(string entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (kernels.TryGetValue(entry, out var k)) return k;
            if (!moduleByEntry.TryGetValue(entry, out var module))
                throw new KeyNotFoundException(
                    $"Kernel '{entry}' is not an .entry in any embedded PTX module ({string.Join(", ", modules.Select(m => m.Name))}). " +
                    "Check the name against kernels/*.cu and rebuild the PTX with kernels/build.sh.");
            k = module.GetKernel(entry, ProgrammaticLaunch);
            kernels[entry] = k;
            return k;
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            kernels.Clear();
            foreach (var m in modules) m.Dispose();
        }
    }

    private static readonly Lazy<IReadOnlyDictionary<string, string>> Embedded = new(() => ReadEmbedded(ResourcePrefix));
    private static readonly Lazy<IReadOnlyDictionary<string, string>> EmbeddedProgrammatic = new(() => ReadEmbedded(ProgrammaticPrefix));
    private static readonly Lazy<IReadOnlyDictionary<string, string>> EmbeddedArch = new(() => ReadEmbedded(ArchSpecificPrefix));

    /// <summary>
    /// Resource name (e.g. "ptx/rmsnorm.ptx", or "ptx/sm90/rmsnorm.ptx" for the compute_90 build) → PTX text, sorted
    /// by name. Needs no GPU.
    /// </summary>
    public static IReadOnlyDictionary<string, string> EmbeddedPtx(bool programmatic = false) =>
        programmatic ? EmbeddedProgrammatic.Value : Embedded.Value;

    /// <summary>
    /// The sm_90a kernels ("ptx/sm90a/name.ptx" → PTX text), sorted by name; empty only in a build whose tree lacks
    /// kernels/ptx/sm90a (the tests require it). Needs no GPU.
    /// </summary>
    public static IReadOnlyDictionary<string, string> EmbeddedArchSpecificPtx() => EmbeddedArch.Value;

    /// <summary>
    /// Which kernels this process runs, for a benchmark's record: "embedded" or "QWQ_PTX_DIR=path", then the first 12
    /// hex digits of a SHA-256 over every module of the three builds (names and text). Why: an A/B that swaps the PTX
    /// must be able to show that its two arms ran different kernels (session 16 found one whose arms did not).
    /// </summary>
    public static string KernelsIdentity() =>
        Describe(Environment.GetEnvironmentVariable(PtxDirectoryVariable), [Embedded.Value, EmbeddedProgrammatic.Value, EmbeddedArch.Value]);

    internal static string Describe(string? ptxDirectory, IEnumerable<IReadOnlyDictionary<string, string>> builds)
    {
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (var build in builds)
            foreach (var (name, text) in build.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                // lengths before each part, so that no two different sets hash the same bytes
                sha.AppendData(BitConverter.GetBytes(name.Length));
                sha.AppendData(Encoding.UTF8.GetBytes(name));
                sha.AppendData(BitConverter.GetBytes(text.Length));
                sha.AppendData(Encoding.UTF8.GetBytes(text));
            }
        string hash = Convert.ToHexStringLower(sha.GetHashAndReset())[..12];
        return (ptxDirectory is { Length: > 0 } dir ? $"{PtxDirectoryVariable}={dir}" : "embedded") + ", ptx " + hash;
    }

    /// <summary>Every <c>.entry</c> name across the embedded PTX of the compute_80 build (the other has the same). Needs no GPU.</summary>
    public static IReadOnlySet<string> EmbeddedEntries() =>
        EmbeddedPtx().Values.SelectMany(ParseEntries).ToHashSet(StringComparer.Ordinal);

    /// <summary>Every <c>.entry</c> name across the embedded sm_90a PTX (empty when none is embedded). Needs no GPU.</summary>
    public static IReadOnlySet<string> EmbeddedArchSpecificEntries() =>
        EmbeddedArchSpecificPtx().Values.SelectMany(ParseEntries).ToHashSet(StringComparer.Ordinal);

    /// <summary>
    /// Kernel development: a directory of freshly built <c>*.ptx</c> (and <c>sm90/*.ptx</c>, <c>sm90a/*.ptx</c>) used instead of the
    /// embedded ones, so kernels compiled on a GPU machine (which has nvcc but no .NET) run with a build made elsewhere.
    /// </summary>
    public const string PtxDirectoryVariable = "QWQ_PTX_DIR";

    /// <summary>The PTX of one build: resources named <paramref name="prefix"/><c>name.ptx</c> (no deeper folder).</summary>
    private static IReadOnlyDictionary<string, string> ReadEmbedded(string prefix)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        if (Environment.GetEnvironmentVariable(PtxDirectoryVariable) is { Length: > 0 } root)
        {
            if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{PtxDirectoryVariable}={root} is not a directory");
            string dir = Path.Combine(root, prefix[ResourcePrefix.Length..]);
            if (!Directory.Exists(dir)) return result;
            foreach (var file in Directory.GetFiles(dir, "*" + ResourceSuffix))
                result[prefix + Path.GetFileName(file)] = File.ReadAllText(file, Encoding.UTF8);
            return result;
        }
        var asm = typeof(PtxLibrary).Assembly;
        foreach (var name in asm.GetManifestResourceNames())
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal) || !name.EndsWith(ResourceSuffix, StringComparison.Ordinal)
                || name.IndexOf('/', prefix.Length) >= 0)
                continue;
            using var s = asm.GetManifestResourceStream(name)
                ?? throw new InvalidOperationException($"Embedded resource '{name}' cannot be opened.");
            using var r = new StreamReader(s, Encoding.UTF8);
            result[name] = r.ReadToEnd();
        }
        return new ReadOnlyDictionary<string, string>(result);
    }

    /// <summary>Entry → resource; throws when two modules define the same entry.</summary>
    internal static Dictionary<string, string> EntryToResource(IReadOnlyDictionary<string, string> ptxByResource)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (resource, text) in ptxByResource)
        {
            foreach (var entry in ParseEntries(text))
            {
                if (map.TryGetValue(entry, out var other) && other != resource)
                    throw new InvalidOperationException($"Kernel entry '{entry}' is defined in both '{other}' and '{resource}'; entry names must be unique.");
                map[entry] = resource;
            }
        }
        return map;
    }

    /// <summary>The kernel entry names declared in PTX text (<c>.entry name(</c>, optionally <c>.visible</c>/<c>.weak</c>); comments are ignored.</summary>
    internal static IEnumerable<string> ParseEntries(string ptx)
    {
        var stripped = BlockComment().Replace(ptx, " ");
        stripped = LineComment().Replace(stripped, "");
        foreach (Match m in EntryDecl().Matches(stripped)) yield return m.Groups[1].Value;
    }

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex BlockComment();

    [GeneratedRegex(@"//[^\n]*")]
    private static partial Regex LineComment();

    // PTX identifiers: [a-zA-Z][a-zA-Z0-9_$]* or [_$%][a-zA-Z0-9_$]+
    [GeneratedRegex(@"(?<![\w.$])\.entry\s+([A-Za-z_$%][\w$]*)")]
    private static partial Regex EntryDecl();
}

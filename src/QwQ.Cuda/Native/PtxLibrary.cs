using System.Collections.ObjectModel;
using System.Text;
using System.Text.RegularExpressions;

namespace QwQ.Cuda.Native;

/// <summary>
/// All kernels of this assembly: every embedded resource named <c>ptx/*.ptx</c> (built from kernels/*.cu by
/// kernels/build.sh) is JIT-loaded once into the current context, and kernels are handed out by entry name.
/// Entry names must be unique across modules (they are <c>extern "C"</c>, so a duplicate is a build mistake).
/// </summary>
internal sealed partial class PtxLibrary : IDisposable
{
    private const string ResourcePrefix = "ptx/";
    private const string ResourceSuffix = ".ptx";

    private readonly List<CudaModule> modules;
    private readonly Dictionary<string, CudaModule> moduleByEntry;
    private readonly Dictionary<string, CudaKernel> kernels = new(StringComparer.Ordinal);
    private readonly Lock gate = new();
    private bool disposed;

    private PtxLibrary(List<CudaModule> modules, Dictionary<string, CudaModule> moduleByEntry)
    {
        this.modules = modules;
        this.moduleByEntry = moduleByEntry;
    }

    /// <summary>Loads every embedded PTX module into the current context.</summary>
    public static PtxLibrary Load()
    {
        var entryToResource = EntryToResource(EmbeddedPtx()); // throws on duplicates before touching the GPU
        var modules = new List<CudaModule>();
        var byResource = new Dictionary<string, CudaModule>(StringComparer.Ordinal);
        try
        {
            foreach (var (resource, text) in EmbeddedPtx())
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
        return new PtxLibrary(modules, byEntry);
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
            k = module.GetKernel(entry);
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

    private static readonly Lazy<IReadOnlyDictionary<string, string>> Embedded = new(ReadEmbedded);

    /// <summary>Resource name (e.g. "ptx/rmsnorm.ptx") → PTX text, sorted by name. Needs no GPU.</summary>
    public static IReadOnlyDictionary<string, string> EmbeddedPtx() => Embedded.Value;

    /// <summary>Every <c>.entry</c> name across the embedded PTX. Needs no GPU.</summary>
    public static IReadOnlySet<string> EmbeddedEntries() =>
        EmbeddedPtx().Values.SelectMany(ParseEntries).ToHashSet(StringComparer.Ordinal);

    /// <summary>
    /// Kernel development: a directory of freshly built <c>*.ptx</c> used instead of the embedded ones, so kernels
    /// compiled on a GPU machine (which has nvcc but no .NET) run with a build made elsewhere.
    /// </summary>
    public const string PtxDirectoryVariable = "QWQ_PTX_DIR";

    private static IReadOnlyDictionary<string, string> ReadEmbedded()
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        if (Environment.GetEnvironmentVariable(PtxDirectoryVariable) is { Length: > 0 } dir)
        {
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{PtxDirectoryVariable}={dir} is not a directory");
            foreach (var file in Directory.GetFiles(dir, "*" + ResourceSuffix))
                result[ResourcePrefix + Path.GetFileName(file)] = File.ReadAllText(file, Encoding.UTF8);
            return result;
        }
        var asm = typeof(PtxLibrary).Assembly;
        foreach (var name in asm.GetManifestResourceNames())
        {
            if (!name.StartsWith(ResourcePrefix, StringComparison.Ordinal) || !name.EndsWith(ResourceSuffix, StringComparison.Ordinal))
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

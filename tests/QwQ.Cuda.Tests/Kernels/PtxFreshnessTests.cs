using System.Security.Cryptography;
using System.Text.RegularExpressions;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// CPU-only checks that the committed PTX matches the kernel sources: every kernels/*.cu has a kernels/ptx/*.ptx and a
/// kernels/ptx/sm90/*.ptx stamped (by build.sh / build.ps1) with the hash of its current sources, declaring every
/// extern "C" __global__ entry of the .cu; and every kernel of the sm90 build waits for the kernel before it before
/// touching memory (programmatic dependent launch relies on it). (That every [KernelEntry] name is an embedded entry
/// is checked in Native/KernelEntryTests.)
/// The sm_90a build (kernels/sm90a/*.cu → kernels/ptx/sm90a/*.ptx, compute_90a) is checked the same way. (It was
/// optional until its PTX was first built on the GPU machine, in session 9; the engine still runs the portable kernels
/// when a build lacks it, but the committed tree must have it.)
/// </summary>
public class PtxFreshnessTests
{
    private static readonly Regex HashStamp = new(@"^// qwq-source-sha256: ([0-9a-f]{64})\s*$", RegexOptions.Multiline);

    // extern "C" __global__ [void] [__launch_bounds__(...)] [void] name(   — name may be token-pasted (a##P##_b);
    // whitespace may include macro line continuations.
    private static readonly Regex GlobalEntry = new(
        @"extern[\s\\]+""C""[\s\\]+__global__[\s\\]+(?:void[\s\\]+)?(?:__launch_bounds__[\s\\]*\([^)]*\)[\s\\]*)?(?:void[\s\\]+)?(?!__launch_bounds__)([A-Za-z_]\w*(?:\s*##\s*\w+)*)[\s\\]*\(",
        RegexOptions.Singleline);

    private static readonly Regex Define = new(@"^[ \t]*#[ \t]*define[ \t]+(\w+)\(([^)]*)\)(?:[^\n]*\\\n)*[^\n]*", RegexOptions.Multiline);

    /// <summary>
    /// The extern "C" __global__ names a .cu declares, with the simple macro pattern expanded: an entry whose name is
    /// token-pasted inside <c>#define M(P, ...)</c> yields one name per top-level invocation <c>M(a, ...)</c>.
    /// </summary>
    internal static List<string> DeclaredEntries(string source)
    {
        source = source.Replace("\r", "");
        source = Regex.Replace(source, @"/\*.*?\*/", " ", RegexOptions.Singleline);
        source = Regex.Replace(source, @"//[^\n]*", "");
        var defines = Define.Matches(source).ToList();
        var names = new List<string>();
        foreach (Match m in GlobalEntry.Matches(source))
        {
            string template = m.Groups[1].Value;
            if (!template.Contains("##"))
            {
                names.Add(template);
                continue;
            }
            var def = defines.FirstOrDefault(d => m.Index >= d.Index && m.Index < d.Index + d.Length);
            if (def is null) continue; // pasted outside a recognisable macro: cannot check
            string[] parameters = def.Groups[2].Value.Split(',', StringSplitOptions.TrimEntries);
            string[] parts = template.Split("##", StringSplitOptions.TrimEntries);
            var call = new Regex(@"(?<![\w#])" + Regex.Escape(def.Groups[1].Value) + @"\s*\(([^()]*)\)");
            foreach (Match c in call.Matches(source))
            {
                if (defines.Any(d => c.Index >= d.Index && c.Index < d.Index + d.Length)) continue;
                string[] args = c.Groups[1].Value.Split(',', StringSplitOptions.TrimEntries);
                names.Add(string.Concat(parts.Select(part =>
                {
                    int i = Array.IndexOf(parameters, part);
                    return i >= 0 && i < args.Length ? args[i] : part;
                })));
            }
        }
        return names;
    }

    /// <summary>The checkout's kernels/ folder, or null when the tests do not run from a source checkout.</summary>
    internal static string? FindKernelsDir()
    {
        for (var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "QwQ.Cuda.sln")) && Directory.Exists(Path.Combine(dir.FullName, "kernels")))
                return Path.Combine(dir.FullName, "kernels");
        }
        return null;
    }

    private static string KernelsDir()
    {
        if (FindKernelsDir() is { } kdir) return kdir;
        Assert.Ignore("kernels/ not found above the test directory (tests not run from a source checkout)");
        return "";
    }

    private static IEnumerable<string> Sources(string dir) => !Directory.Exists(dir) ? [] :
        Directory.GetFiles(dir, "*.cu").Where(f => f.EndsWith(".cu", StringComparison.Ordinal)).Order(StringComparer.Ordinal);

    /// <summary>
    /// sha256 over the .cu then every <paramref name="headerDir"/>/*.cuh (ordinal name order; default: the .cu's own
    /// folder, i.e. kernels/), CR bytes removed — as build.sh does. kernels/sm90a/*.cu hash with kernels/*.cuh.
    /// </summary>
    internal static string SourceHash(string cuPath, string? headerDir = null)
    {
        string kdir = headerDir ?? Path.GetDirectoryName(cuPath)!;
        var headers = Directory.GetFiles(kdir, "*.cuh").Where(f => f.EndsWith(".cuh", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var path in new[] { cuPath }.Concat(headers))
        {
            byte[] bytes = File.ReadAllBytes(path);
            sha.AppendData(bytes.Where(b => b != (byte)'\r').ToArray());
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>
    /// The builds build.sh writes: compute_80 in ptx/ and compute_90 (programmatic launch) in ptx/sm90/ of kernels/*.cu;
    /// compute_90a in ptx/sm90a/ of kernels/sm90a/*.cu.
    /// </summary>
    private static readonly string[] Builds = ["ptx", "ptx/sm90", ArchBuild];

    private const string ArchBuild = "ptx/sm90a";

    /// <summary>The folder under kernels/ holding a build's sources: kernels/sm90a for the sm_90a build, kernels/ for the others.</summary>
    private static string SourceFolder(string build) => build == ArchBuild ? "sm90a" : "";

    /// <summary>
    /// What is wrong with <paramref name="build"/>'s PTX under <paramref name="kdir"/> (a kernels/ folder), one line per
    /// problem.
    /// </summary>
    internal static List<string> FreshnessProblems(string kdir, string build)
    {
        string src = SourceFolder(build), prefix = src.Length > 0 ? src + "/" : "";
        string ptxDir = Path.Combine(kdir, build);
        var problems = new List<string>();
        foreach (var cu in Sources(Path.Combine(kdir, src)))
        {
            string name = Path.GetFileNameWithoutExtension(cu);
            string ptxPath = Path.Combine(ptxDir, name + ".ptx");
            if (!File.Exists(ptxPath))
            {
                problems.Add($"kernels/{build}/{name}.ptx is missing");
                continue;
            }
            string ptx = File.ReadAllText(ptxPath);
            var stamp = HashStamp.Match(ptx);
            if (!stamp.Success) problems.Add($"kernels/{build}/{name}.ptx has no source-hash stamp (not built by build.sh/build.ps1)");
            else if (stamp.Groups[1].Value != SourceHash(cu, kdir)) problems.Add($"kernels/{build}/{name}.ptx is stale (kernels/{prefix}{name}.cu or a .cuh changed)");

            var entries = PtxLibrary.ParseEntries(ptx).ToHashSet(StringComparer.Ordinal);
            foreach (string entry in DeclaredEntries(File.ReadAllText(cu)))
            {
                if (!entries.Contains(entry))
                    problems.Add($"kernels/{build}/{name}.ptx lacks entry '{entry}' declared in {prefix}{name}.cu");
            }
        }
        return problems;
    }

    [Test]
    public void EveryKernelSourceHasFreshPtx([ValueSource(nameof(Builds))] string build)
    {
        string kdir = KernelsDir();
        if (build == ArchBuild)
            Assert.That(Sources(Path.Combine(kdir, "sm90a")), Is.Not.Empty, "kernels/sm90a holds the Hopper prefill attention");
        var problems = FreshnessProblems(kdir, build);
        Assert.That(problems, Is.Empty, "Rebuild the PTX with ./build.sh (or build.ps1):\n" + string.Join("\n", problems));
    }

    [Test]
    public void NoPtxWithoutSource([ValueSource(nameof(Builds))] string build)
    {
        string kdir = KernelsDir();
        string ptxDir = Path.Combine(kdir, build);
        var orphans = (Directory.Exists(ptxDir) ? Directory.GetFiles(ptxDir, "*.ptx") : [])
            .Select(p => Path.GetFileNameWithoutExtension(p))
            .Where(n => !File.Exists(Path.Combine(kdir, SourceFolder(build), n + ".cu")))
            .ToList();
        Assert.That(orphans, Is.Empty, "PTX files whose .cu is gone (build.sh removes them)");
    }

    [Test]
    public void TheSm90aBuildIsCheckedWithTheHeadersOfKernels()
    {
        // A kernels/ tree in a temporary folder: one header, one sm_90a source; its PTX absent, then fresh, then stale.
        string kdir = Directory.CreateTempSubdirectory("qwq-kernels").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(kdir, "sm90a"));
            File.WriteAllText(Path.Combine(kdir, "h.cuh"), "// header\n");
            string cu = Path.Combine(kdir, "sm90a", "k.cu");
            File.WriteAllText(cu, "#include \"../h.cuh\"\nextern \"C\" __global__ void __launch_bounds__(128, 2) k_sm90a(int x) {}\n");
            Assert.That(FreshnessProblems(kdir, ArchBuild), Is.EqualTo(new[] { "kernels/ptx/sm90a/k.ptx is missing" }), "not built");
            Directory.CreateDirectory(Path.Combine(kdir, ArchBuild));

            string ptx = Path.Combine(kdir, ArchBuild, "k.ptx");
            void Build(string entry) => File.WriteAllText(ptx,
                $"// qwq-source-sha256: {SourceHash(cu, kdir)}\n.version 8.0\n.target sm_90a\n.visible .entry {entry}(\n)\n{{ ret; }}\n");
            Build("k_sm90a");
            Assert.That(FreshnessProblems(kdir, ArchBuild), Is.Empty, "fresh, hashed with kernels/*.cuh (not kernels/sm90a/*.cuh)");

            File.WriteAllText(Path.Combine(kdir, "h.cuh"), "// header, changed\n");
            Assert.That(FreshnessProblems(kdir, ArchBuild), Is.EqualTo(new[] { "kernels/ptx/sm90a/k.ptx is stale (kernels/sm90a/k.cu or a .cuh changed)" }),
                "a header of kernels/ changed");
            Build("renamed");
            Assert.That(FreshnessProblems(kdir, ArchBuild), Is.EqualTo(new[] { "kernels/ptx/sm90a/k.ptx lacks entry 'k_sm90a' declared in sm90a/k.cu" }));

            File.WriteAllText(Path.Combine(kdir, "sm90a", "other.cu"), "extern \"C\" __global__ void other(int x) {}\n");
            Assert.That(FreshnessProblems(kdir, ArchBuild), Has.Some.Contains("sm90a/other.ptx is missing"), "every source needs PTX");
        }
        finally
        {
            Directory.Delete(kdir, recursive: true);
        }
    }

    // A memory instruction that could see another kernel's data: global or generic addresses. The kernel's own
    // parameters, its thread's local memory (a by-value struct parameter indexed at run time is copied there) and its
    // block's shared memory are private to this launch, so they may come before the wait; so may a prefetch, which
    // returns no data (the GEMVs prefetch their constant weights into L2 before waiting).
    // A store, atomic or reduction to global or generic memory: what even the kernels allowed to load early must not do
    // before the wait (the kernel before may still read what it would overwrite).
    private static readonly Regex StoreInstruction = new(@"^\s*(?:@!?%p\d+\s+)?(?:st|atom|red)\.(?!param|local|shared)", RegexOptions.Multiline);

    private static readonly Regex MemoryInstruction = new(@"^\s*(?:@!?%p\d+\s+)?(?:ld|st|atom|red|cp|mbarrier)\.(?!param|local|shared)", RegexOptions.Multiline);

    /// <summary>
    /// The body of each <c>.entry</c> of <paramref name="ptx"/>: from its name to the next entry (device functions are
    /// inlined into our kernels, so the body holds every instruction the kernel runs before its first call).
    /// </summary>
    internal static IEnumerable<(string Entry, string Body)> EntryBodies(string ptx)
    {
        var starts = Regex.Matches(ptx, @"(?<![\w.$])\.entry\s+([A-Za-z_$%][\w$]*)").ToList();
        for (int i = 0; i < starts.Count; i++)
        {
            int end = i + 1 < starts.Count ? starts[i + 1].Index : ptx.Length;
            yield return (starts[i].Groups[1].Value, ptx[starts[i].Index..end]);
        }
    }

    /// <summary>
    /// Kernels that read memory before griddepcontrol.wait on purpose, each with the argument why it cannot read stale
    /// data. The decode attention split kernels (kernels/attention_decode.cu, "Programmatic launch"): before the wait
    /// they read ctx_len and the block table (copied from the host before the step, and a copy is not overlapped) and
    /// start cp.async loads of K/V tiles that end before position ctx_len-1, which only earlier steps wrote; the kernel
    /// before (RoPE) writes position ctx_len-1 alone, and q and that tile are read after the wait. They may load early,
    /// never store: <see cref="StoreInstruction"/> before the wait is still a problem for them.
    /// </summary>
    internal static bool LoadsBeforeWaitByDesign(string entry) =>
        entry.StartsWith("attention_decode_paged_", StringComparison.Ordinal);

    /// <summary>
    /// A kernel launched programmatically may start while the kernel before it still runs: it must execute
    /// griddepcontrol.wait before any load or store other than its parameters, or it could read stale activations.
    /// </summary>
    internal static List<string> ProgrammaticLaunchProblems(string module, string ptx)
    {
        var problems = new List<string>();
        foreach (var (entry, body) in EntryBodies(ptx))
        {
            int wait = body.IndexOf("griddepcontrol.wait", StringComparison.Ordinal);
            if (wait < 0)
            {
                problems.Add($"{module}: {entry} never executes griddepcontrol.wait (begin it with kernel_entry_barrier())");
                continue;
            }
            var first = (LoadsBeforeWaitByDesign(entry) ? StoreInstruction : MemoryInstruction).Match(body);
            if (first.Success && first.Index < wait)
            {
                int eol = body.IndexOf('\n', first.Index);
                string line = body[first.Index..(eol < 0 ? body.Length : eol)].Trim();
                problems.Add($"{module}: {entry} touches memory before griddepcontrol.wait ('{line}'; call kernel_entry_barrier() first)");
            }
        }
        return problems;
    }

    [Test]
    public void EveryProgrammaticKernelWaitsBeforeTouchingMemory()
    {
        string dir = Path.Combine(KernelsDir(), "ptx", "sm90");
        var files = Directory.GetFiles(dir, "*.ptx");
        Assert.That(files, Is.Not.Empty, "kernels/ptx/sm90 holds the compute_90 build");
        // The sm_90a kernels are launched programmatically beside the compute_90 build: the same rule.
        var arch = Directory.GetFiles(Path.Combine(KernelsDir(), "ptx", "sm90a"), "*.ptx");
        Assert.That(arch, Is.Not.Empty, "kernels/ptx/sm90a holds the compute_90a build");
        files = [.. files, .. arch];
        var problems = files.SelectMany(f => ProgrammaticLaunchProblems(Path.GetFileName(f), File.ReadAllText(f))).ToList();
        Assert.That(problems, Is.Empty, string.Join("\n", problems));
    }

    [Test]
    public void TheWaitCheckCatchesAKernelThatReadsFirst()
    {
        const string ptx = """
            .visible .entry good(
            	.param .u64 good_param_0
            )
            {
            	ld.param.u64 	%rd1, [good_param_0];
            	st.local.u64 	[%rd2], %rd1;
            	prefetch.global.L2 	[%rd1];
            	griddepcontrol.wait;
            	ld.global.f32 	%f1, [%rd1];
            	ret;
            }
            .visible .entry reads_first(
            	.param .u64 reads_first_param_0
            )
            {
            	ld.param.u64 	%rd1, [reads_first_param_0];
            	ld.global.nc.f32 	%f1, [%rd1];
            	griddepcontrol.wait;
            	ret;
            }
            .visible .entry never_waits(
            )
            {
            	ret;
            }
            """;
        var problems = ProgrammaticLaunchProblems("t.ptx", ptx);
        Assert.That(problems, Has.Count.EqualTo(2));
        Assert.That(problems[0], Does.Contain("reads_first").And.Contain("ld.global.nc"));
        Assert.That(problems[1], Does.Contain("never_waits"));
    }

    [Test]
    public void OnlyTheDecodeAttentionSplitKernelsMayLoadBeforeWaiting()
    {
        const string ptx = """
            .visible .entry attention_decode_paged_bf16_d128(
            	.param .u64 p0
            )
            {
            	ld.global.nc.u32 	%r1, [%rd1];
            	cp.async.cg.shared.global 	[%r2], [%rd2], 16;
            	griddepcontrol.wait;
            	ret;
            }
            .visible .entry attention_decode_combine_bf16(
            	.param .u64 p0
            )
            {
            	ld.global.nc.u32 	%r1, [%rd1];
            	griddepcontrol.wait;
            	ret;
            }
            .visible .entry attention_decode_paged_fp8_d128(
            )
            {
            	ld.global.nc.u32 	%r1, [%rd1];
            	ret;
            }
            .visible .entry attention_decode_paged_bf16_d64(
            	.param .u64 p0
            )
            {
            	ld.global.nc.u32 	%r1, [%rd1];
            	st.global.v2.f32 	[%rd2], {%f1, %f2};
            	griddepcontrol.wait;
            	ret;
            }
            """;
        var problems = ProgrammaticLaunchProblems("attention_decode.ptx", ptx);
        Assert.That(problems, Has.Count.EqualTo(3), string.Join("\n", problems));
        Assert.That(problems[0], Does.Contain("attention_decode_combine_bf16").And.Contain("before griddepcontrol.wait"));
        Assert.That(problems[1], Does.Contain("attention_decode_paged_fp8_d128").And.Contain("never executes"));
        Assert.That(problems[2], Does.Contain("attention_decode_paged_bf16_d64").And.Contain("st.global"), "early loads only, never a store");
    }

    [Test]
    public void DeclaredEntriesExpandsTokenPastingMacros()
    {
        const string src = """
            // extern "C" __global__ void commented_out(int x) {}
            extern "C" __global__ void __launch_bounds__(256) plain_f32(const float* x) {}
            extern "C" __global__ void no_bounds(int n)
            {
            }
            #define MAKE(MM, UU)                                              \
                extern "C" __global__ void __launch_bounds__(128, 4)        \
                gemv_m##MM##_bf16(const float* w /* [n, k] */, int n) {   \
                    body<MM, UU>(w, n);                                      \
                }
            MAKE(2, 4)
            MAKE(8, 2)
            """;
        Assert.That(DeclaredEntries(src), Is.EquivalentTo(new[] { "plain_f32", "no_bounds", "gemv_m2_bf16", "gemv_m8_bf16" }));
    }

    [Test]
    public void SourceHashIgnoresCarriageReturns()
    {
        string dir = Directory.CreateTempSubdirectory("qwq-hash").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "a.cu"), "x\ny\n");
            File.WriteAllText(Path.Combine(dir, "h.cuh"), "z\n");
            string lf = SourceHash(Path.Combine(dir, "a.cu"));
            File.WriteAllText(Path.Combine(dir, "a.cu"), "x\r\ny\r\n");
            Assert.That(SourceHash(Path.Combine(dir, "a.cu")), Is.EqualTo(lf));
            // sha256("x\ny\nz\n"): the .cu then the header, concatenated.
            Assert.That(lf, Is.EqualTo(Convert.ToHexStringLower(SHA256.HashData("x\ny\nz\n"u8))));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

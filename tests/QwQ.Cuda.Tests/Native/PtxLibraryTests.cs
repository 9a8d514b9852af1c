using System.Text.RegularExpressions;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

public class PtxLibraryTests
{
    [Test]
    public void EmbeddedPtxIsReadableWithoutAGpu()
    {
        var ptx = PtxLibrary.EmbeddedPtx();
        Assert.That(ptx, Is.Not.Empty, "the committed kernels/ptx is embedded in every build");
        foreach (var (name, text) in ptx)
        {
            Assert.That(name, Does.StartWith("ptx/").And.EndWith(".ptx"));
            Assert.That(text, Does.Contain(".version").And.Contain(".target"), name);
        }
        Assert.That(PtxLibrary.EmbeddedPtx(), Is.SameAs(ptx), "read once");
    }

    [Test]
    public void EmbeddedEntriesWorksWithoutAGpu()
    {
        var entries = PtxLibrary.EmbeddedEntries();
        Assert.That(entries, Is.Not.Empty, "the committed kernels/ptx is embedded in every build");
        Assert.That(entries.All(e => Regex.IsMatch(e, @"^[A-Za-z_$][\w$]*$")), Is.True);
    }

    [Test]
    public void TheKernelsIdentityNamesWhereThePtxCameFromAndHashesEveryModule()
    {
        var a = new Dictionary<string, string> { ["ptx/rope.ptx"] = "// rope v1", ["ptx/gemv.ptx"] = "// gemv" };
        var arch = new Dictionary<string, string> { ["ptx/sm90a/attention_prefill_sm90a.ptx"] = "// tma" };
        string embedded = PtxLibrary.Describe(null, [a, arch]);
        Assert.That(embedded, Does.Match("^embedded, ptx [0-9a-f]{12}$"));
        Assert.That(PtxLibrary.Describe("/tmp/kernels/ptx", [a, arch]), Is.EqualTo("QWQ_PTX_DIR=/tmp/kernels/ptx" + embedded["embedded".Length..]),
            "the same PTX from a directory: the same hash, another source");
        // any module's text, any name, a module more or fewer moves the hash
        var changed = new Dictionary<string, string>(a) { ["ptx/rope.ptx"] = "// rope v2" };
        var renamed = new Dictionary<string, string> { ["ptx/rope2.ptx"] = "// rope v1", ["ptx/gemv.ptx"] = "// gemv" };
        var moved = new Dictionary<string, string> { ["ptx/rope.ptx"] = "// rope v", ["ptx/gemv.ptx"] = "1// gemv" };
        foreach (var other in new[] { PtxLibrary.Describe(null, [changed, arch]), PtxLibrary.Describe(null, [renamed, arch]),
                     PtxLibrary.Describe(null, [a]), PtxLibrary.Describe(null, [moved, arch]) })
            Assert.That(other, Is.Not.EqualTo(embedded));
        // this process's own: the embedded builds unless QWQ_PTX_DIR is set
        string own = PtxLibrary.KernelsIdentity();
        Assert.That(own, Does.Match(Environment.GetEnvironmentVariable(PtxLibrary.PtxDirectoryVariable) is { Length: > 0 }
            ? "^QWQ_PTX_DIR=.+, ptx [0-9a-f]{12}$" : "^embedded, ptx [0-9a-f]{12}$"));
    }

    [Test]
    public void EntriesAreUniqueAcrossModules() =>
        Assert.DoesNotThrow(() => PtxLibrary.EntryToResource(PtxLibrary.EmbeddedPtx()));

    [Test]
    public void EmbeddedPtxTargetsHardwareWeRunOn()
    {
        // The compute_80 build must JIT on sm_80..sm_90 (A100/H100/H200); the programmatic build is loaded on sm_90+
        // only, so it targets exactly sm_90 (a higher .target would fail to load on the H100).
        foreach (var (programmatic, most) in new[] { (false, 80), (true, 90) })
        {
            Assert.That(PtxLibrary.EmbeddedPtx(programmatic), Is.Not.Empty, programmatic ? "the sm90 build" : "the compute_80 build");
            foreach (var (name, text) in PtxLibrary.EmbeddedPtx(programmatic))
            {
                var m = Regex.Match(text, @"^\s*\.target\s+sm_(\d+)", RegexOptions.Multiline);
                Assert.That(m.Success, Is.True, $"{name} has no .target");
                Assert.That(int.Parse(m.Groups[1].Value), Is.LessThanOrEqualTo(most), $"{name}: .target sm_{m.Groups[1].Value}");
            }
        }
    }

    [Test]
    public void ArchSpecificKernelsLoadOnComputeCapability90Only()
    {
        // sm_90a code runs on 9.0 alone: not on Ampere/Ada, and not on Blackwell (10.x, 12.x) either.
        Assert.That(PtxLibrary.LoadsArchSpecific((9, 0), requested: true, embedded: true), Is.True);
        foreach (var cc in new[] { (8, 0), (8, 6), (8, 9), (9, 1), (10, 0), (10, 3), (12, 0), (12, 1) })
            Assert.That(PtxLibrary.LoadsArchSpecific(cc, requested: true, embedded: true), Is.False, $"sm_{cc.Item1}{cc.Item2}");
        Assert.That(PtxLibrary.LoadsArchSpecific((9, 0), requested: false, embedded: true), Is.False, "turned off (EngineOptions.HopperAttention)");
        Assert.That(PtxLibrary.LoadsArchSpecific((9, 0), requested: true, embedded: false), Is.False, "not built yet: nothing changes");
    }

    [Test]
    public void ArchSpecificPtxTargetsSm90aAndAddsItsOwnEntries()
    {
        // Empty until build.sh has run where nvcc is; once embedded, every module is compute_90a PTX whose entries
        // are distinct from the two builds' (they are loaded together into one library).
        var arch = PtxLibrary.EmbeddedArchSpecificPtx();
        Assert.That(arch.Keys, Has.All.StartsWith("ptx/sm90a/"));
        Assert.That(PtxLibrary.EmbeddedPtx().Keys, Has.None.StartsWith("ptx/sm90a/"), "the compute_80 build excludes the sm90a folder");
        Assert.That(PtxLibrary.EmbeddedPtx(programmatic: true).Keys, Has.None.StartsWith("ptx/sm90a/"), "so does the compute_90 build");
        foreach (var (name, text) in arch)
            Assert.That(Regex.IsMatch(text, @"^\s*\.target\s+sm_90a\b", RegexOptions.Multiline), Is.True, $"{name}: .target sm_90a");
        var merged = PtxLibrary.EmbeddedPtx(programmatic: true).Concat(arch).ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.DoesNotThrow(() => PtxLibrary.EntryToResource(merged));
        if (arch.Count == 0) Assert.Ignore("kernels/ptx/sm90a not built yet (needs nvcc): only the folder separation was checked");
    }

    [Test]
    public void BothBuildsHoldTheSameKernels()
    {
        static string Module(string resource) => resource[(resource.LastIndexOf('/') + 1)..];
        var portable = PtxLibrary.EmbeddedPtx();
        var programmatic = PtxLibrary.EmbeddedPtx(programmatic: true);
        Assert.That(portable, Is.Not.Empty, "the committed kernels/ptx is embedded in every build");
        Assert.That(programmatic.Keys.Select(Module), Is.EquivalentTo(portable.Keys.Select(Module)), "one module per kernels/*.cu in each build");
        Assert.That(programmatic.Keys, Has.All.StartsWith("ptx/sm90/"));
        Assert.That(portable.Keys, Has.None.StartsWith("ptx/sm90/"), "the compute_80 build excludes the sm90 folder");
        Assert.That(programmatic.Values.SelectMany(PtxLibrary.ParseEntries), Is.EquivalentTo(portable.Values.SelectMany(PtxLibrary.ParseEntries)));
        Assert.DoesNotThrow(() => PtxLibrary.EntryToResource(programmatic));
        Assert.That(portable.Values, Has.None.Contains("griddepcontrol"), "compute_80 has no programmatic launch");
    }

    [Test]
    public void ParsesEntriesAndIgnoresFunctionsAndComments()
    {
        const string ptx = """
            .version 7.8
            .target sm_80
            .address_size 64
            	// .globl	alpha
            .visible .entry alpha(
            	.param .u64 alpha_param_0
            )
            { ret; }
            .entry beta_bf16
            (
            )
            { ret; }
            .weak .entry $gamma(){ ret; }
            .func (.param .b32 r) helper_func(.param .b32 x) { ret; }
            // .visible .entry commented_out(
            /* .entry block_commented(
               */
            """;
        Assert.That(PtxLibrary.ParseEntries(ptx).ToArray(), Is.EqualTo(new[] { "alpha", "beta_bf16", "$gamma" }));
    }

    [Test]
    public void DuplicateEntriesAcrossModulesAreRejected()
    {
        var modules = new Dictionary<string, string>
        {
            ["ptx/a.ptx"] = ".visible .entry same(\n)\n{ ret; }\n.visible .entry only_a(\n){ ret; }",
            ["ptx/b.ptx"] = ".visible .entry same(\n)\n{ ret; }",
        };
        var e = Assert.Throws<InvalidOperationException>(() => PtxLibrary.EntryToResource(modules));
        Assert.That(e!.Message, Does.Contain("'same'").And.Contain("ptx/a.ptx").And.Contain("ptx/b.ptx"));

        modules.Remove("ptx/b.ptx");
        Assert.That(PtxLibrary.EntryToResource(modules), Is.EquivalentTo(new Dictionary<string, string>
        {
            ["same"] = "ptx/a.ptx",
            ["only_a"] = "ptx/a.ptx",
        }));
    }
}

using System.Reflection;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Native;

/// <summary>
/// Every <c>[KernelEntry]</c> constant names a real <c>.entry</c> of the embedded PTX; an arch-specific one
/// (<c>ArchSpecific = true</c>) an entry of the embedded sm_90a PTX.
/// </summary>
public class KernelEntryTests
{
    [Test]
    public void EveryKernelEntryConstantIsInTheEmbeddedPtx()
    {
        var entries = PtxLibrary.EmbeddedEntries();
        var archEntries = PtxLibrary.EmbeddedArchSpecificEntries();
        Assert.That(archEntries, Is.Not.Empty, "the sm_90a PTX (kernels/ptx/sm90a) is embedded");
        var problems = FindProblems(typeof(PtxLibrary).Assembly, entries, archEntries);
        Assert.That(problems, Is.Empty,
            $"[KernelEntry] names not found as .entry in the embedded PTX ({PtxLibrary.EmbeddedPtx().Count} modules, " +
            $"{entries.Count} entries). Rebuild kernels/ptx with kernels/build.sh or fix the name:{Environment.NewLine}" +
            string.Join(Environment.NewLine, problems));
    }

    [Test]
    public void CheckerCatchesMissingAndMisusedEntries()
    {
        // The checker itself must not pass vacuously: run it on this test assembly, which has bad fields below.
        var problems = FindProblems(typeof(KernelEntryTests).Assembly, new HashSet<string> { Fakes.Present },
            new HashSet<string> { Fakes.ArchPresent });
        Assert.That(problems, Has.Count.EqualTo(4), string.Join("\n", problems));
        Assert.That(problems, Has.Some.Contains("definitely_not_a_kernel").And.Some.Contains("Fakes.Missing"));
        Assert.That(problems, Has.Some.Contains("Nested.Hidden").And.Some.Contains("also_not_a_kernel"));
        Assert.That(problems, Has.Some.Contains("NotConst").And.Some.Contains("const string"));
        // An arch-specific name is looked up in the sm_90a entries only, not in the portable build's.
        Assert.That(problems, Has.Some.Contains("Fakes.ArchInPortableOnly").And.Some.Contains("sm_90a"));
    }

    /// <summary>
    /// One line per bad field: a [KernelEntry] that is not a const string, or whose value is not an entry (of
    /// <paramref name="archEntries"/> for an arch-specific one).
    /// </summary>
    internal static List<string> FindProblems(Assembly assembly, IReadOnlySet<string> entries, IReadOnlySet<string> archEntries)
    {
        Type[] types;
        try { types = assembly.GetTypes(); } // includes nested and non-public types
        catch (ReflectionTypeLoadException e) { types = e.Types.Where(t => t is not null).ToArray()!; }

        var problems = new List<string>();
        const BindingFlags all = BindingFlags.Static | BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;
        foreach (var type in types)
        {
            foreach (var field in type.GetFields(all))
            {
                if (field.GetCustomAttribute<KernelEntryAttribute>() is not { } attribute) continue;
                string where = $"{type.FullName?.Replace('+', '.')}.{field.Name}";
                if (!field.IsLiteral || field.FieldType != typeof(string))
                {
                    problems.Add($"{where}: [KernelEntry] must be on a const string field");
                    continue;
                }
                var value = (string?)field.GetRawConstantValue();
                if (attribute.ArchSpecific)
                {
                    if (value is null || !archEntries.Contains(value))
                        problems.Add($"{where} = \"{value}\" is not an .entry of the sm_90a kernels (kernels/sm90a, kernels/ptx/sm90a)");
                }
                else if (value is null || !entries.Contains(value))
                    problems.Add($"{where} = \"{value}\" is not an .entry in the embedded PTX");
            }
        }
        return problems;
    }

    // Deliberately wrong declarations for CheckerCatchesMissingAndMisusedEntries (they live in the test assembly,
    // so they never affect the real check above).
#pragma warning disable CS0414, CS0169
    private static class Fakes
    {
        [KernelEntry] internal const string Present = "present_kernel";
        [KernelEntry] internal const string Missing = "definitely_not_a_kernel";
        [KernelEntry] internal static readonly string NotConst = "present_kernel";
        [KernelEntry(ArchSpecific = true)] internal const string ArchPresent = "arch_kernel";
        [KernelEntry(ArchSpecific = true)] internal const string ArchInPortableOnly = "present_kernel";

        internal static class Nested
        {
            [KernelEntry] private const string Hidden = "also_not_a_kernel";
        }
    }
#pragma warning restore CS0414, CS0169
}

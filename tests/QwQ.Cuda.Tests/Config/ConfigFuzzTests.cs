using System.Diagnostics;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Tests.Cli;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Config;

/// <summary>
/// Mutated copies of tests/fixtures/models/tiny-gqa/config.json: every one either loads to the original config (a
/// harmless mutation), or to the original with the mutated value where that value is valid, or fails with exactly
/// one <see cref="ConfigException"/> of one line naming the file. Never another exception (overflow, stack overflow,
/// index out of range), a hang, or a large allocation. The seed is fixed so CI runs the same files; QWQ_TEST_SEED
/// picks others (it is printed).
/// </summary>
public class ConfigFuzzTests
{
    private const string Source = "config.json";

    private static string FixtureText =>
        File.ReadAllText(Path.Combine(TestContext.CurrentContext.TestDirectory, "fixtures", "models", "tiny-gqa", "config.json"));

    /// <summary>One mutated file: what was done (for the failure message), the key it touched, and the text; Absent: the key was dropped or set to null.</summary>
    internal sealed record Mutation(string What, string? Key, string Json, bool Absent = false);

    private static int Seed()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int s) ? s : 20261122;
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        return seed;
    }

    /// <summary>Values put in place of a field: wrong types, signs, zero, values beyond int/long, ones that wrap in 32 bits.</summary>
    private static IEnumerable<(string What, string Raw)> ValueMutations(string raw)
    {
        yield return ("null", "null");
        yield return ("as a string", JsonSerializer.Serialize(raw));
        yield return ("true", "true");
        yield return ("false", "false");
        yield return ("empty list", "[]");
        yield return ("in a list", $"[{raw}]");
        yield return ("in an object", $"{{\"value\": {raw}}}");
        bool number = double.TryParse(raw, System.Globalization.CultureInfo.InvariantCulture, out _);
        yield return ("negated", !number ? "-1" : raw.StartsWith('-') ? raw[1..] : "-" + raw);
        yield return ("zero", "0");
        yield return ("zero float", "0.0");
        foreach (var huge in new[] { "1e300", "1e400", "-1e400", "9223372036854775808", "18446744073709551616", "2147483648",
                     "2147483647", "4294967296", "4294967616", "1073741840", "1073741824", "-2147483648" })
            yield return ("huge " + huge, huge);
        if (raw.All(char.IsAsciiDigit))
        {
            yield return ("integral float", raw + ".0");
            yield return ("fraction", raw + ".5");
        }
        yield return ("NaN string", "\"NaN\"");
        yield return ("Infinity string", "\"Infinity\"");
        yield return ("-Infinity string", "\"-Infinity\"");
        yield return ("NaN literal", "NaN");
        yield return ("deep nesting", new string('[', 200) + new string(']', 200));
        yield return ("nested garbage", "{\"a\": {\"b\": [1, {\"c\": null}, \"x\"]}, \"d\": []}");
        yield return ("long string", JsonSerializer.Serialize(new string('x', 100_000)));
    }

    internal static List<Mutation> Mutations(string fixture, int seed)
    {
        using var doc = JsonDocument.Parse(fixture);
        var fields = doc.RootElement.EnumerateObject().Select(p => (p.Name, Raw: p.Value.GetRawText())).ToList();
        static string Render(IEnumerable<(string Name, string Raw)> f) =>
            "{" + string.Join(", ", f.Select(x => $"{JsonSerializer.Serialize(x.Name)}: {x.Raw}")) + "}";
        var list = new List<Mutation>();

        // every field × every value mutation, and dropped
        for (int i = 0; i < fields.Count; i++)
        {
            var (name, raw) = fields[i];
            list.Add(new($"drop '{name}'", name, Render(fields.Where((_, j) => j != i)), Absent: true));
            foreach (var (what, value) in ValueMutations(raw))
                list.Add(new($"'{name}' {what}", name, Render(fields.Select((f, j) => j == i ? (f.Name, value) : f)), Absent: value == "null"));
            list.Add(new($"duplicate '{name}'", name, Render([.. fields, (name, raw)])));
        }

        // fields tiny-gqa does not have, with values that must be refused (or, for head_dim 32, equal the derived one)
        foreach (var (what, value) in ValueMutations("32").Append(("same as derived", "32")).Append(("odd", "33")).Append(("too large", "2048")))
            list.Add(new($"head_dim {what}", "head_dim", Render([.. fields, ("head_dim", value)])));
        foreach (var scaling in new[]
                 {
                     "[]", "\"yarn\"", "{\"factor\": 4}", "{\"type\": \"linear\", \"factor\": 4}", "{\"type\": \"yarn\"}",
                     "{\"type\": \"yarn\", \"factor\": \"4\"}", "{\"type\": \"yarn\", \"factor\": 0.5}", "{\"type\": \"yarn\", \"factor\": 1e300}",
                     "{\"type\": \"yarn\", \"factor\": \"NaN\"}", "{\"type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": -1}",
                     "{\"type\": \"yarn\", \"factor\": 4, \"original_max_position_embeddings\": 4294967296}",
                     "{\"type\": \"yarn\", \"factor\": 65536, \"original_max_position_embeddings\": 65536}",
                     "{\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": -1}", "{\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": 1, \"beta_slow\": 2}",
                     "{\"type\": \"yarn\", \"factor\": 4, \"mscale\": -5}", "{\"type\": [\"yarn\"], \"factor\": 4}", "null",
                 })
            list.Add(new($"rope_scaling {scaling}", "rope_scaling", Render([.. fields, ("rope_scaling", scaling)])));

        // whole-file damage
        string text = Render(fields);
        list.Add(new("empty file", null, ""));
        list.Add(new("whitespace only", null, "  \n "));
        list.Add(new("top-level null", null, "null"));
        list.Add(new("top-level list", null, $"[{text}]"));
        list.Add(new("top-level number", null, "320"));
        list.Add(new("empty object", null, "{}"));
        list.Add(new("byte order mark", null, "\uFEFF" + text));
        list.Add(new("comments", null, "// a comment\n" + text.Replace("{", "{ /* inline */ ")));
        list.Add(new("trailing comma", null, text[..^1] + ",}"));
        list.Add(new("two objects", null, text + text));
        var random = new Random(seed);
        for (int i = 0; i < 40; i++)
        {
            int at = random.Next(1, text.Length - 1);
            list.Add(new($"truncated at {at}", null, text[..at]));
        }
        // Structure characters between tokens (inside a string they could rename an optional key: a valid, different
        // file), and quotes anywhere (an odd count never parses).
        var outsideStrings = Enumerable.Range(0, text.Length + 1).Where(i => text[..i].Count(ch => ch == '"') % 2 == 0).ToArray();
        for (int i = 0; i < 40; i++)
        {
            char c = "\"{}[]:,"[random.Next(7)];
            int at = c == '"' ? random.Next(0, text.Length + 1) : outsideStrings[random.Next(outsideStrings.Length)];
            list.Add(new($"'{c}' inserted at {at}", null, text.Insert(at, c.ToString())));
        }
        return list;
    }

    /// <summary>Parses on another thread with a deadline, counting what that thread allocated.</summary>
    private static (ModelConfig? Config, Exception? Error, long Allocated) ParseGuarded(Mutation m)
    {
        var task = Task.Run(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            try { return ((ModelConfig?)ModelConfig.Parse(m.Json, Source), (Exception?)null, GC.GetAllocatedBytesForCurrentThread() - before); }
            catch (Exception e) { return (null, e, GC.GetAllocatedBytesForCurrentThread() - before); }
        });
        if (!task.Wait(TimeSpan.FromSeconds(10))) Assert.Fail($"{m.What}: parsing did not finish in 10 s");
        return task.Result;
    }

    /// <summary>True when a successfully parsed config is acceptable for this mutation (see the class summary).</summary>
    private static bool Acceptable(ModelConfig loaded, ModelConfig original, Mutation m)
    {
        if (loaded == original) return true;
        // The only fields where a mutation can be another valid value: any finite θ above 1 is a valid RoPE base,
        // embeddings may be tied or not, and without torch_dtype transformers (and we) assume bfloat16.
        if (m.Key == "rope_theta" && loaded == original with { RopeTheta = loaded.RopeTheta }) return true;
        if (m.Key == "tie_word_embeddings" && loaded == original with { TieWordEmbeddings = loaded.TieWordEmbeddings }) return true;
        if (m.Key == "torch_dtype" && m.Absent && loaded == original with { TorchDtype = "bfloat16" }) return true;
        return false;
    }

    [Test]
    public void MutatedConfigsLoadUnchangedOrFailWithOneConfigException()
    {
        string fixture = FixtureText;
        var original = ModelConfig.Parse(fixture, Source);
        var mutations = Mutations(fixture, Seed());
        Assert.That(mutations, Has.Count.GreaterThanOrEqualTo(100));
        int loaded = 0, refused = 0;
        var sw = Stopwatch.StartNew();
        foreach (var m in mutations)
        {
            var (config, error, allocated) = ParseGuarded(m);
            Assert.That(allocated, Is.LessThan(64L << 20), $"{m.What}: allocated {allocated} bytes");
            if (config is not null)
            {
                Assert.That(Acceptable(config, original, m), $"{m.What}: loaded a different config {config}");
                // and its derived sizes are computable (checked arithmetic would throw on a wrap)
                Assert.DoesNotThrow(() => _ = (config.ParameterCount, config.WeightBytes, config.KvBytesPerToken, MemoryPlan.ModelMaxPositions(config)), m.What);
                loaded++;
                continue;
            }
            Assert.That(error, Is.TypeOf<ConfigException>(), $"{m.What}: {error}");
            Assert.That(error!.Message, Does.StartWith(Source + ": ").And.Not.Contain('\n'), m.What);
            Assert.That(error.Message, Has.Length.LessThan(400), m.What);
            refused++;
        }
        TestContext.Out.WriteLine($"{mutations.Count} mutations: {loaded} loaded, {refused} refused, in {sw.ElapsedMilliseconds} ms");
        Assert.That(loaded, Is.GreaterThan(10), "some mutations are harmless (ignored fields, 256.0 for 256, a byte order mark)");
        Assert.That(refused, Is.GreaterThan(loaded));
    }

    [Test]
    public async Task InfoOnRefusedConfigsPrintsOneErrorLine()
    {
        string fixture = FixtureText;
        var random = new Random(Seed());
        var refused = Mutations(fixture, random.Next()).Where(m => ParseGuarded(m).Error is not null).ToList();
        // the two files of the issue, and 20 more drawn with the seed
        var chosen = refused.Where(m => m.What is "'num_hidden_layers' huge 1073741824" or "head_dim huge 1073741840")
            .Concat(refused.OrderBy(_ => random.Next()).Take(20)).ToList();
        Assert.That(chosen, Has.Count.EqualTo(22));

        using var tmp = new TestModels.TempDir();
        foreach (var m in chosen)
        {
            File.WriteAllText(tmp.Combine("config.json"), m.Json, new UTF8Encoding(false));
            var r = await CliTests.Qwq("info", "--model", tmp.Path);
            Assert.That(r.ExitCode, Is.EqualTo(1).Or.EqualTo(2), $"{m.What}: {r.Err}");
            var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.That(lines, Has.Length.EqualTo(1), $"{m.What}: {r.Err}");
            Assert.That(lines[0], Does.StartWith("error: "), m.What);
            Assert.That(r.Err, Does.Not.Contain("internal error").And.Not.Contain("   at "), m.What);
        }
    }

    [Test]
    public async Task InfoOnAHarmlessMutationWorks()
    {
        using var tmp = new TestModels.TempDir();
        var m = Mutations(FixtureText, 1).First(x => x.What == "'hidden_size' integral float");
        File.WriteAllText(tmp.Combine("config.json"), m.Json);
        var r = await CliTests.Qwq("info", "--model", tmp.Path);
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("hidden size").And.Contain("320"));
    }
}

using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>
/// Mutants of the tiny-gqa checkpoint go through the whole load (open, validate against config.json, read every
/// tensor as fp32). Each either loads weights bit-identical to the fixture's, or fails with one QwqException that
/// names the file: never different weights, never another exception, never a hang. Each mutator also says which of
/// the two it must be (or "either", for blind byte edits), so a harmless change that is rejected fails as well.
/// Deterministic: mutant i uses seed + i and mutator i mod their count; QWQ_TEST_SEED picks another seed.
/// </summary>
public class SafetensorsFuzzTests
{
    private const int Mutants = 420;
    private const int DefaultSeed = 20261127;
    private static readonly TimeSpan PerMutantTimeout = TimeSpan.FromSeconds(30);

    private enum Expect { Identical, Rejected, Either }

    private sealed record Mutant(Expect Expect, string What, byte[] Bytes);

    /// <summary>The fixture, taken apart by the test's own parsing (not the reader under test).</summary>
    private sealed class Original
    {
        public Original(byte[] file)
        {
            File = file;
            (Header, Data) = Split(file);
            HeaderLength = Encoding.UTF8.GetByteCount(Header);
            Names = [.. Json().Select(p => p.Key).Where(k => k != "__metadata__")];
        }

        public byte[] File { get; }
        public string Header { get; }
        public int HeaderLength { get; }
        public byte[] Data { get; }
        public string[] Names { get; }

        /// <summary>A fresh mutable copy of the header.</summary>
        public JsonObject Json() => JsonNode.Parse(Header)!.AsObject();

        public static (long Begin, long End) Offsets(JsonObject h, string name)
        {
            var o = h[name]!["data_offsets"]!.AsArray();
            return ((long)o[0]!, (long)o[1]!);
        }

        public static long[] Shape(JsonObject h, string name) => [.. h[name]!["shape"]!.AsArray().Select(d => (long)d!)];
    }

    private static byte[] Build(string header, byte[] data) => Bytes(Encoding.UTF8.GetBytes(header), data);
    private static byte[] Build(JsonObject header, byte[] data) => Build(header.ToJsonString(), data);
    private static T Pick<T>(Random r, IReadOnlyList<T> items) => items[r.Next(items.Count)];
    private static string PickName(Random r, Original o) => Pick(r, o.Names);

    private static (string Name, Func<Random, Original, Mutant> Make)[] Mutators() =>
    [
        ("rebuilt unchanged", (_, o) => new(Expect.Identical, "header re-serialized", Build(o.Json(), o.Data))),

        ("flip a header bit", (r, o) =>
        {
            var b = o.File.ToArray();
            int at = 8 + r.Next(o.HeaderLength), bit = r.Next(8);
            b[at] ^= (byte)(1 << bit);
            return new(Expect.Either, $"byte {at} ^= 0x{1 << bit:X2}", b);
        }),

        ("overwrite header bytes", (r, o) =>
        {
            var b = o.File.ToArray();
            int at = 8 + r.Next(o.HeaderLength), n = r.Next(1, 5);
            for (int i = at; i < Math.Min(at + n, 8 + o.HeaderLength); i++) b[i] = (byte)r.Next(256);
            return new(Expect.Either, $"bytes {at}..{at + n} randomized", b);
        }),

        ("header length off by 1..8", (r, o) =>
        {
            int delta = r.Next(1, 9) * (r.Next(2) == 0 ? -1 : 1);
            var b = o.File.ToArray();
            BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)(o.HeaderLength + delta));
            return new(Expect.Rejected, $"header length {delta:+0;-0}", b);
        }),

        ("wild header length", (r, o) =>
        {
            ulong n = Pick(r, new ulong[] { 0UL, 1, 7, (ulong)o.File.Length - 8, (ulong)o.File.Length, 100_000_001, 1UL << 63, ulong.MaxValue, 2UL * (ulong)o.HeaderLength });
            var b = o.File.ToArray();
            BinaryPrimitives.WriteUInt64LittleEndian(b, n);
            return new(Expect.Rejected, $"header length {n}", b);
        }),

        ("truncate", (r, o) =>
        {
            int n = r.Next(o.File.Length);
            return new(Expect.Rejected, $"first {n} of {o.File.Length} bytes", o.File[..n]);
        }),

        ("append bytes", (r, o) =>
        {
            var tail = new byte[r.Next(1, 4097)];
            if (r.Next(2) == 0) r.NextBytes(tail); else tail.AsSpan().Fill((byte)' ');
            return new(Expect.Rejected, $"{tail.Length} bytes appended", [.. o.File, .. tail]);
        }),

        ("shift offsets", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            var (b, e) = Original.Offsets(h, name);
            long d = Pick(r, new long[] { 1, 2, 4, 8, 64, 4096 }) * (r.Next(2) == 0 ? -1 : 1);
            int mode = r.Next(3);
            var shifted = mode switch { 0 => (b + d, e + d), 1 => (b + d, e), _ => (b, e + d) };
            h[name]!["data_offsets"] = new JsonArray(shifted.Item1, shifted.Item2);
            return new(Expect.Rejected, $"'{name}' [{b}, {e}] -> [{shifted.Item1}, {shifted.Item2}]", Build(h, o.Data));
        }),

        ("point a tensor at another's bytes", (r, o) =>
        {
            var h = o.Json();
            string x = PickName(r, o), y = Pick(r, o.Names.Where(n => n != x).ToList());
            if (r.Next(4) == 0) (x, y) = (TensorNames.LmHead, TensorNames.Embedding);
            h[x]!["data_offsets"] = h[y]!["data_offsets"]!.DeepClone();
            return new(Expect.Rejected, $"'{x}' uses the offsets of '{y}'", Build(h, o.Data));
        }),

        ("swap offsets of different-sized tensors", (r, o) =>
        {
            var h = o.Json();
            string x = PickName(r, o);
            var (xb, xe) = Original.Offsets(h, x);
            string y = Pick(r, o.Names.Where(n => Original.Offsets(h, n) is var (b, e) && e - b != xe - xb).ToList());
            (h[x]!["data_offsets"], h[y]!["data_offsets"]) = (h[y]!["data_offsets"]!.DeepClone(), h[x]!["data_offsets"]!.DeepClone());
            return new(Expect.Rejected, $"offsets of '{x}' and '{y}' swapped", Build(h, o.Data));
        }),

        ("lay the data out in another order", (r, o) =>
        {
            var h = o.Json();
            var order = o.Names.OrderBy(_ => r.Next()).ToList();
            var data = new List<byte>();
            foreach (var name in order)
            {
                var (b, e) = Original.Offsets(h, name);
                h[name]!["data_offsets"] = new JsonArray(data.Count, data.Count + (e - b));
                data.AddRange(o.Data[(int)b..(int)e]);
            }
            return new(Expect.Identical, $"data order {string.Join(",", order.Select(n => Array.IndexOf(o.Names, n)))}", Build(h, [.. data]));
        }),

        ("relabel a dtype", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            JsonNode? dtype = Pick(r, new JsonNode?[] { "BF16", "F16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "f32", "F32 ", "", null, 32 });
            h[name]!["dtype"] = dtype;
            return new(Expect.Rejected, $"'{name}' dtype {dtype?.ToJsonString() ?? "null"}", Build(h, o.Data));
        }),

        ("relabel F32 as BF16 with the shape fitting the bytes", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            var shape = Original.Shape(h, name);
            shape[0] *= 2;
            h[name]!["dtype"] = "BF16";
            h[name]!["shape"] = new JsonArray([.. shape.Select(d => (JsonNode?)d)]);
            return new(Expect.Rejected, $"'{name}' BF16{TensorInfo.FormatShape(shape)}", Build(h, o.Data));
        }),

        ("edit a shape", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            var s = Original.Shape(h, name);
            var edits = new List<(string, JsonNode?)>
            {
                ("first dim + 1", Dims([s[0] + 1, .. s[1..]])), ("first dim - 1", Dims([s[0] - 1, .. s[1..]])),
                ("last dim * 2", Dims([.. s[..^1], s[^1] * 2])), ("append 1", Dims([.. s, 1])), ("prepend 1", Dims([1, .. s])),
                ("drop last dim", Dims(s[..^1])), ("-1", Dims([-1, .. s[1..]])), ("2^62 x 4", Dims([1L << 62, 4])),
                ("1.5", new JsonArray(1.5)), ("string", new JsonArray(s[0].ToString())), ("null", null), ("empty object", new JsonObject()),
            };
            if (s.Length == 2 && s[0] != s[1]) edits.Add(("transposed", Dims([s[1], s[0]])));
            var (what, shape) = Pick(r, edits);
            h[name]!["shape"] = shape;
            return new(Expect.Rejected, $"'{name}' shape {TensorInfo.FormatShape(s)}: {what}", Build(h, o.Data));
        }),

        ("duplicate a key", (r, o) =>
        {
            var h = o.Json();
            string name = r.Next(5) == 0 ? "__metadata__" : PickName(r, o);
            string other = PickName(r, o);
            string entry = r.Next(2) == 0 ? h[name]!.ToJsonString() : h[other]!.ToJsonString();
            string text = h.ToJsonString();
            return new(Expect.Rejected, $"'{name}' twice", Build("{" + JsonSerializer.Serialize(name) + ":" + entry + "," + text[1..], o.Data));
        }),

        ("rename a tensor to another's name", (r, o) =>
        {
            string x = PickName(r, o), y = Pick(r, o.Names.Where(n => n != x).ToList());
            string text = o.Json().ToJsonString().Replace($"\"{x}\":", $"\"{y}\":");
            return new(Expect.Rejected, $"'{x}' renamed '{y}'", Build(text, o.Data));
        }),

        ("offsets that are not two integers", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            var (b, e) = Original.Offsets(h, name);
            string offsets = Pick(r, new[] { $"[\"{b}\",\"{e}\"]", $"[{b}.0,{e}.0]", $"[{b}]", $"[{b},{e},{e}]", "null", $"[{b},{e}.5]",
                                             $"{{\"0\":{b},\"1\":{e}}}", $"[-1,{e}]", $"[{b},{e}e0]", $"[{b},18446744073709551616]" });
            h[name]!["data_offsets"] = JsonNode.Parse(offsets);
            return new(Expect.Rejected, $"'{name}' data_offsets {offsets}", Build(h, o.Data));
        }),

        ("invalid UTF-8 in a name or in metadata", (r, o) =>
        {
            string target = r.Next(3) == 0 ? "\"pt\"" : $"\"{PickName(r, o)}\"";
            var header = Encoding.UTF8.GetBytes(o.Json().ToJsonString());
            int at = header.AsSpan().IndexOf(Encoding.UTF8.GetBytes(target)) + 1 + r.Next(target.Length - 2);
            byte[] bad = Pick(r, new byte[][] { [0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0x80], [0xF4, 0x90, 0x80, 0x80] });
            return new(Expect.Rejected, $"{Convert.ToHexString(bad)} inserted in {target} at byte {at}", Bytes([.. header[..at], .. bad, .. header[at..]], o.Data));
        }),

        ("unpaired surrogate escape", (r, o) =>
        {
            string target = r.Next(3) == 0 ? "\"pt\"" : $"\"{PickName(r, o)}\"";
            string escape = Pick(r, new[] { @"\ud800", @"\udfff", @"\ud83d" });
            string text = o.Json().ToJsonString().Replace(target, target.Insert(1 + r.Next(target.Length - 1), escape));
            return new(Expect.Rejected, $"{escape} in {target}", Build(text, o.Data));
        }),

        ("content after the header object", (r, o) =>
        {
            string tail = Pick(r, new[] { " x", "{}", ",", "]", "}", "\0", " 0", "\"\"" });
            return new(Expect.Rejected, $"header + {JsonSerializer.Serialize(tail)}", Build(o.Json().ToJsonString() + tail, o.Data));
        }),

        ("header not an object", (r, o) =>
        {
            string text = o.Json().ToJsonString();
            string header = Pick(r, new[] { "[" + text + "]", "null", "\"x\"", "0", "" });
            return new(Expect.Rejected, $"header {Shorten(header)}", Build(header, o.Data));
        }),

        ("metadata that is not a string map", (r, o) =>
        {
            var h = o.Json();
            JsonNode metadata = Pick(r, new Func<JsonNode>[] { () => new JsonObject { ["format"] = 1 }, () => new JsonArray("pt"), () => "pt",
                                                              () => new JsonObject { ["format"] = new JsonObject() } })();
            h["__metadata__"] = metadata;
            return new(Expect.Rejected, $"__metadata__ {metadata.ToJsonString()}", Build(h, o.Data));
        }),

        ("remove a tensor", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            h.Remove(name);
            return new(Expect.Rejected, $"'{name}' removed", Build(h, o.Data));
        }),

        ("rename a tensor", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            string renamed = Pick(r, new[] { name + ".x", name.Replace("layers.0.", "layers.2.").Replace("layers.1.", "layers.3."),
                                             char.ToUpperInvariant(name[0]) + name[1..], name.Replace(".weight", ".bias"), name[..^1] }
                                     .Where(n => n != name).ToList());
            var entry = h[name]!.DeepClone();
            h.Remove(name);
            h[renamed] = entry;
            return new(Expect.Rejected, $"'{name}' renamed '{renamed}'", Build(h, o.Data));
        }),

        ("add a zero-size tensor", (r, o) =>
        {
            var h = o.Json();
            long at = Pick(r, new long[] { 0, o.Data.Length, Original.Offsets(h, PickName(r, o)).Begin, 3 });
            h["model.extra.weight"] = new JsonObject { ["dtype"] = "F32", ["shape"] = Dims([0, 320]), ["data_offsets"] = new JsonArray(at, at) };
            return new(Expect.Rejected, $"zero-size tensor at {at}", Build(h, o.Data));
        }),

        ("add a rotary inv_freq (ignorable)", (r, o) => AddInvFreq(r, o, layer: r.Next(2), Expect.Identical)),
        ("add a rotary inv_freq of a layer the config lacks", (r, o) => AddInvFreq(r, o, layer: 2 + r.Next(3), Expect.Rejected)),

        ("reorder keys", (r, o) =>
        {
            var h = o.Json();
            Shuffle(r, h);
            foreach (var name in o.Names) Shuffle(r, h[name]!.AsObject());
            return new(Expect.Identical, "keys shuffled", Build(h, o.Data));
        }),

        ("reformat whitespace", (r, o) =>
        {
            string text = r.Next(2) == 0 ? o.Json().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) : o.Json().ToJsonString();
            string pad = new(Enumerable.Range(0, r.Next(0, 40)).Select(_ => Pick(r, new[] { ' ', '\t', '\n', '\r' })).ToArray());
            return new(Expect.Identical, $"indented or not, {pad.Length} whitespace characters after", Build(text + pad, o.Data));
        }),

        ("edit metadata", (r, o) =>
        {
            var h = o.Json();
            int choice = r.Next(4);
            if (choice == 0) h.Remove("__metadata__");
            else h["__metadata__"] = choice switch { 1 => null, 2 => new JsonObject { ["format"] = "np", ["note"] = "x" }, _ => new JsonObject() };
            return new(Expect.Identical, $"metadata edit {choice}", Build(h, o.Data));
        }),

        ("escape a character of a name", (r, o) =>
        {
            string name = PickName(r, o);
            int i = r.Next(name.Length);
            string escaped = name[..i] + $"\\u{(int)name[i]:x4}" + name[(i + 1)..];
            return new(Expect.Identical, $"'{name}' as \"{escaped}\"", Build(o.Json().ToJsonString().Replace($"\"{name}\":", $"\"{escaped}\":"), o.Data));
        }),

        ("unknown field in an entry", (r, o) =>
        {
            var h = o.Json();
            string name = PickName(r, o);
            h[name]!["comment"] = Pick(r, new JsonNode?[] { 1, "x", null, new JsonArray() });
            return new(Expect.Identical, $"'{name}' gets an unknown field (the reference reader ignores those)", Build(h, o.Data));
        }),
    ];

    private static JsonArray Dims(long[] dims) => new([.. dims.Select(d => (JsonNode?)d)]);

    private static void Shuffle(Random r, JsonObject obj)
    {
        var props = obj.ToList();
        obj.Clear();
        foreach (var (k, v) in props.OrderBy(_ => r.Next())) obj[k] = v;
    }

    private static Mutant AddInvFreq(Random r, Original o, int layer, Expect expect)
    {
        var h = o.Json();
        var values = new byte[16 * 4];
        r.NextBytes(values);
        string name = TensorNames.RotaryInvFreq(layer);
        h[name] = new JsonObject { ["dtype"] = "F32", ["shape"] = Dims([16]), ["data_offsets"] = new JsonArray(o.Data.Length, o.Data.Length + values.Length) };
        return new(expect, $"'{name}' added", Build(h, [.. o.Data, .. values]));
    }

    private static string Shorten(string s) => s.Length <= 20 ? JsonSerializer.Serialize(s) : JsonSerializer.Serialize(s[..20]) + "...";

    [Test]
    public void MutantsLoadIdenticallyOrFailWithOneClearError()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int fixedSeed) ? fixedSeed : DefaultSeed;
        var mutators = Mutators();
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay); mutant i uses seed + i and mutator i mod {mutators.Length}");

        var original = new Original(File.ReadAllBytes(TinyGqaFixture.WeightsPath));
        ModelConfig config = TinyGqaFixture.Config;
        CpuWeights reference = TinyGqaFixture.Reference;
        using var dir = new TempDir();
        var failures = new List<string>();
        var outcomes = new Dictionary<string, int> { ["loaded"] = 0, ["rejected"] = 0 };
        for (int i = 0; i < Mutants; i++)
        {
            var (kind, make) = mutators[i % mutators.Length];
            Mutant m;
            try { m = make(new Random(seed + i), original); }
            catch (Exception e) { failures.Add($"mutant {i} ({kind}): the mutator itself failed: {e}"); continue; }

            string? problem = Check(m, dir.Path, config, reference, outcomes);
            if (problem is not null) failures.Add($"mutant {i} ({kind}: {m.What}, seed {seed + i}): {problem}");
        }
        TestContext.Out.WriteLine($"{Mutants} mutants: {outcomes["loaded"]} loaded (each checked bit for bit), {outcomes["rejected"]} rejected");
        Assert.That(failures, Is.Empty, $"{failures.Count} of {Mutants} mutants misbehaved:\n" + string.Join("\n", failures.Take(20)));
    }

    /// <summary>Null when the mutant behaved; else what went wrong.</summary>
    private static string? Check(Mutant m, string dir, ModelConfig config, CpuWeights reference, Dictionary<string, int> outcomes)
    {
        File.WriteAllBytes(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), m.Bytes);
        var load = Task.Run(() => TinyGqaFixture.Load(dir, config));
        try
        {
            if (!load.Wait(PerMutantTimeout)) return $"no result within {PerMutantTimeout.TotalSeconds} s (a hang?)";
        }
        catch (AggregateException ae) when (ae.InnerExceptions.Count == 1)
        {
            var e = ae.InnerException!;
            outcomes["rejected"]++;
            if (e is not QwqException) return $"threw {e.GetType().Name}, not a WeightsException: {e}";
            if (!e.Message.Contains(dir)) return $"the error does not name the file: {e.Message}";
            return m.Expect == Expect.Identical ? $"rejected a change that means nothing: {e.Message}" : null;
        }
        outcomes["loaded"]++;
        if (TinyGqaFixture.FirstDifference(reference, load.Result) is { } diff) return $"LOADED DIFFERENT WEIGHTS (first: {diff})";
        return m.Expect == Expect.Rejected ? "loaded, but must be rejected" : null;
    }
}

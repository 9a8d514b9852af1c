using System.IO.Compression;
using System.Text.Json;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Text;

/// <summary>Paths and shared, lazily loaded objects for the text tests (tokenizer fixture, goldens).</summary>
internal static class TextFixtures
{
    public static string FixturesDir => Path.Combine(AppContext.BaseDirectory, "fixtures");

    /// <summary>tests/fixtures/qwq-32b: tokenizer.json.gz, tokenizer_config.json, generation_config.json.</summary>
    public static string QwqDir => Path.Combine(FixturesDir, "qwq-32b");

    public static string GoldensPath => Path.Combine(FixturesDir, "text", "text_goldens.json");

    private static readonly Lazy<QwenTokenizer> LazyTokenizer = new(() => QwenTokenizer.Load(QwqDir));
    public static QwenTokenizer Tokenizer => LazyTokenizer.Value;

    private static readonly Lazy<JsonElement> LazyGoldens = new(() =>
        JsonDocument.Parse(File.ReadAllText(GoldensPath)).RootElement.Clone());
    public static JsonElement Goldens => LazyGoldens.Value;

    private static readonly Lazy<string> LazyPlainDir = new(() =>
    {
        // A directory holding only the two tokenizer files, uncompressed, as a user would have it.
        string dir = Path.Combine(Path.GetTempPath(), "qwq-text-tests-" + Environment.ProcessId);
        Directory.CreateDirectory(dir);
        using (var gz = new GZipStream(File.OpenRead(Path.Combine(QwqDir, "tokenizer.json.gz")), CompressionMode.Decompress))
        using (var outFile = File.Create(Path.Combine(dir, "tokenizer.json")))
            gz.CopyTo(outFile);
        File.Copy(Path.Combine(QwqDir, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"), overwrite: true);
        return dir;
    });

    /// <summary>A temp directory with only tokenizer.json (uncompressed) and tokenizer_config.json.</summary>
    public static string PlainTokenizerDir => LazyPlainDir.Value;

    public static string NewTempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qwq-text-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static IEnumerable<TestCaseData> EncodeCases()
    {
        int i = 0;
        foreach (var e in Goldens.GetProperty("encode").EnumerateArray())
        {
            string text = e.GetProperty("text").GetString()!;
            string label = text.Length > 30 ? text[..30] + "…" : text;
            yield return new TestCaseData(i++).SetArgDisplayNames($"{i - 1}: {JsonSerializer.Serialize(label)}");
        }
    }

    public static IEnumerable<TestCaseData> ChatCases()
    {
        int i = 0;
        foreach (var c in Goldens.GetProperty("chat").EnumerateArray())
            yield return new TestCaseData(i++).SetArgDisplayNames(c.GetProperty("name").GetString()!);
    }

    public static int[] Ids(JsonElement array) => array.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}

using System.Security.Cryptography;
using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Hosting;

/// <summary>
/// The Hugging Face hub cache as huggingface_hub writes it: file contents live once in <c>blobs/&lt;sha256&gt;</c>,
/// <c>snapshots/&lt;rev&gt;/&lt;file&gt;</c> are relative symbolic links into them, and <c>refs/main</c> holds the
/// revision. Loading through the links must give exactly the weights of loading the fixture directly.
/// </summary>
public class HfCacheLoadTests
{
    private const string RepoId = "test-org/tiny-gqa";
    private const string Revision = "0123456789abcdef0123456789abcdef01234567";

    private TempDir _hub = null!;
    [SetUp] public void SetUp() => _hub = new TempDir();
    [TearDown] public void TearDown() => _hub.Dispose();

    private static Func<string, string?> Env(string key, string value) => k => k == key ? value : null;

    /// <summary>Writes <paramref name="files"/> into the cache and returns the snapshot directory.</summary>
    private static string BuildCache(string hub, IReadOnlyDictionary<string, byte[]> files)
    {
        string repo = Path.Combine(hub, "models--" + RepoId.Replace("/", "--"));
        string snapshot = Path.Combine(repo, "snapshots", Revision);
        Directory.CreateDirectory(Path.Combine(repo, "blobs"));
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        Directory.CreateDirectory(snapshot);
        foreach (var (name, bytes) in files)
        {
            string blob = Convert.ToHexStringLower(SHA256.HashData(bytes));
            File.WriteAllBytes(Path.Combine(repo, "blobs", blob), bytes);
            File.CreateSymbolicLink(Path.Combine(snapshot, name), Path.Combine("..", "..", "blobs", blob));
        }
        File.WriteAllText(Path.Combine(repo, "refs", "main"), Revision);
        return snapshot;
    }

    private static Dictionary<string, byte[]> SingleFileCheckpoint() => new()
    {
        ["config.json"] = File.ReadAllBytes(TinyGqaFixture.ConfigPath),
        [SafetensorsCheckpoint.SingleFileName] = File.ReadAllBytes(TinyGqaFixture.WeightsPath),
    };

    /// <summary>The fixture's tensors split over two shards and an index, as large checkpoints are published.</summary>
    private Dictionary<string, byte[]> ShardedCheckpoint()
    {
        var entries = Entries(File.ReadAllBytes(TinyGqaFixture.WeightsPath));
        var shards = new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };
        var files = new Dictionary<string, byte[]> { ["config.json"] = File.ReadAllBytes(TinyGqaFixture.ConfigPath) };
        var weightMap = new Dictionary<string, string>();
        for (int s = 0; s < shards.Length; s++)
        {
            var part = entries.Where((_, i) => i * shards.Length / entries.Count == s).ToList();
            string scratch = _hub.File("shard.tmp");
            Write(scratch, part);
            files[shards[s]] = File.ReadAllBytes(scratch);
            File.Delete(scratch);
            foreach (var e in part) weightMap[e.Name] = shards[s];
        }
        files[SafetensorsCheckpoint.IndexFileName] = JsonSerializer.SerializeToUtf8Bytes(new { metadata = new { }, weight_map = weightMap });
        return files;
    }

    private static void AssertLoadsLikeTheFixture(string modelDir)
    {
        Assert.That(File.ResolveLinkTarget(Path.Combine(modelDir, "config.json"), returnFinalTarget: true), Is.Not.Null,
            "the cache under test must be made of symbolic links");
        ModelConfig config = ModelConfig.Load(Path.Combine(modelDir, "config.json"));
        TinyGqaFixture.AssertIdentical(TinyGqaFixture.Reference, TinyGqaFixture.Load(modelDir, config));
    }

    [Test]
    public void SnapshotDirectoryOfSymlinksLoads()
    {
        string snapshot = BuildCache(_hub.Path, SingleFileCheckpoint());
        AssertLoadsLikeTheFixture(ModelLocator.Resolve(snapshot, Env("HOME", _hub.Path)));
    }

    [Test]
    public void HfIdLoadsThroughTheCache([Values("HF_HUB_CACHE", "HF_HOME")] string variable)
    {
        string hub = variable == "HF_HOME" ? Path.Combine(_hub.Path, "hub") : _hub.Path;
        string snapshot = BuildCache(hub, SingleFileCheckpoint());
        string resolved = ModelLocator.Resolve(RepoId, Env(variable, _hub.Path));
        Assert.That(resolved, Is.EqualTo(snapshot));
        AssertLoadsLikeTheFixture(resolved);
    }

    [Test]
    public void ShardedSnapshotOfSymlinksLoads()
    {
        BuildCache(_hub.Path, ShardedCheckpoint());
        string resolved = ModelLocator.Resolve(RepoId, Env("HF_HUB_CACHE", _hub.Path));
        using (var ck = SafetensorsCheckpoint.Open(resolved))
            Assert.That(ck.Files, Has.Count.EqualTo(2));
        AssertLoadsLikeTheFixture(resolved);
    }
}

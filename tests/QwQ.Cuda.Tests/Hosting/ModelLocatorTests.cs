using QwQ.Cuda.Errors;
using QwQ.Cuda.Hosting;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Hosting;

public class ModelLocatorTests
{
    private static Func<string, string?> Env(params (string Key, string Value)[] vars) =>
        k => vars.FirstOrDefault(v => v.Key == k).Value;

    private static string MakeSnapshot(string hub, string repo, string hash, bool writeRef = true)
    {
        string repoDir = Path.Combine(hub, "models--" + repo.Replace("/", "--"));
        string snap = Path.Combine(repoDir, "snapshots", hash);
        Directory.CreateDirectory(snap);
        File.WriteAllText(Path.Combine(snap, "config.json"), "{}");
        if (writeRef)
        {
            Directory.CreateDirectory(Path.Combine(repoDir, "refs"));
            File.WriteAllText(Path.Combine(repoDir, "refs", "main"), hash + "\n");
        }
        return snap;
    }

    [Test]
    public void LocalDirectoryWins()
    {
        using var tmp = new TestModels.TempDir();
        Assert.That(ModelLocator.Resolve(tmp.Path, Env()), Is.EqualTo(Path.GetFullPath(tmp.Path)));
    }

    [Test]
    public void HfIdResolvesThroughHfHubCache()
    {
        using var tmp = new TestModels.TempDir();
        string snap = MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "abc123");
        MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "old999", writeRef: false);
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HF_HUB_CACHE", tmp.Path))), Is.EqualTo(snap));
    }

    [Test]
    public void HfHomeIsUsedWhenHubCacheIsUnset()
    {
        using var tmp = new TestModels.TempDir();
        string snap = MakeSnapshot(Path.Combine(tmp.Path, "hub"), "Qwen/QwQ-32B", "h1");
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HF_HOME", tmp.Path))), Is.EqualTo(snap));
    }

    [Test]
    public void LegacyHuggingfaceHubCacheVariableIsHonoured()
    {
        // huggingface_hub still reads HUGGINGFACE_HUB_CACHE (its name before HF_HUB_CACHE) when HF_HUB_CACHE is unset;
        // containers and older setups export only it.
        using var tmp = new TestModels.TempDir();
        string legacy = Path.Combine(tmp.Path, "legacy"), current = Path.Combine(tmp.Path, "current");
        string legacySnap = MakeSnapshot(legacy, "Qwen/QwQ-32B", "l1");
        string currentSnap = MakeSnapshot(current, "Qwen/QwQ-32B", "c1");
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HUGGINGFACE_HUB_CACHE", legacy), ("HF_HOME", tmp.Path))), Is.EqualTo(legacySnap));
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HUGGINGFACE_HUB_CACHE", legacy), ("HF_HUB_CACHE", current))), Is.EqualTo(currentSnap));
    }

    [Test]
    public void RepoFolderOfTheCacheResolvesToItsSnapshot()
    {
        // Tab-completing into ~/.cache/huggingface/hub gives the repo folder (refs/, snapshots/, blobs/), not a snapshot.
        using var tmp = new TestModels.TempDir();
        string snap = MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "abc123");
        MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "old999", writeRef: false);
        string repoDir = Path.Combine(tmp.Path, "models--Qwen--QwQ-32B");
        Assert.That(ModelLocator.Resolve(repoDir, Env()), Is.EqualTo(snap));
        Assert.That(ModelLocator.Resolve(repoDir + "/", Env()), Is.EqualTo(snap));
    }

    [Test]
    public void SeveralSnapshotsWithoutRefAreListedWithTheFix()
    {
        using var tmp = new TestModels.TempDir();
        MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "aaa111", writeRef: false);
        MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "bbb222", writeRef: false);
        var e = Assert.Throws<QwqException>(() => ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HF_HUB_CACHE", tmp.Path))));
        Assert.That(e!.Message, Does.Contain("aaa111").And.Contain("bbb222").And.Contain("Qwen/QwQ-32B@"));
        Assert.That(e.Message, Does.Not.Contain("neither"), "the model is in the cache; the message must not say it is not");
    }

    [Test]
    public void HomeCacheIsTheLastResort()
    {
        using var tmp = new TestModels.TempDir();
        string snap = MakeSnapshot(Path.Combine(tmp.Path, ".cache", "huggingface", "hub"), "Qwen/QwQ-32B", "h2");
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HOME", tmp.Path))), Is.EqualTo(snap));
    }

    [Test]
    public void RevisionSuffixPicksAnotherRefOrCommit()
    {
        using var tmp = new TestModels.TempDir();
        MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "main1");
        string pinned = MakeSnapshot(tmp.Path, "Qwen/QwQ-32B", "deadbeef", writeRef: false);
        Assert.That(ModelLocator.Resolve("Qwen/QwQ-32B@deadbeef", Env(("HF_HUB_CACHE", tmp.Path))), Is.EqualTo(pinned));
    }

    [Test]
    public void MissingModelNamesWhatWasSearched()
    {
        using var tmp = new TestModels.TempDir();
        var e = Assert.Throws<QwqException>(() => ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HF_HUB_CACHE", tmp.Path))));
        Assert.That(e!.Message, Does.Contain("Qwen/QwQ-32B").And.Contain(tmp.Path).And.Contain("models--Qwen--QwQ-32B"));
    }

    [Test]
    public void DanglingRefIsReported()
    {
        using var tmp = new TestModels.TempDir();
        string repoDir = Path.Combine(tmp.Path, "models--Qwen--QwQ-32B");
        Directory.CreateDirectory(Path.Combine(repoDir, "refs"));
        File.WriteAllText(Path.Combine(repoDir, "refs", "main"), "nothere");
        var e = Assert.Throws<QwqException>(() => ModelLocator.Resolve("Qwen/QwQ-32B", Env(("HF_HUB_CACHE", tmp.Path))));
        Assert.That(e!.Message, Does.Contain("nothere"));
    }

    [Test]
    public void NonexistentPathThatIsNoHfIdSaysTheDirectoryIsMissing()
    {
        var e = Assert.Throws<QwqException>(() => ModelLocator.Resolve("/no/such/dir/anywhere", Env()));
        Assert.That(e!.Message, Does.Contain("/no/such/dir/anywhere").And.Contain("does not exist"));
    }

    [Test]
    public void AFileIsNotAModelDirectory()
    {
        using var tmp = new TestModels.TempDir();
        string f = tmp.Combine("config.json");
        File.WriteAllText(f, "{}");
        var e = Assert.Throws<QwqException>(() => ModelLocator.Resolve(f, Env()));
        Assert.That(e!.Message, Does.Contain("is a file"));
    }
}

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Hosting;

/// <summary>
/// Turns what a user passes as <c>--model</c> into a directory: a local path, or a Hugging Face id
/// (<c>Qwen/QwQ-32B</c>) already downloaded into the local HF hub cache. Nothing is downloaded.
/// </summary>
public static class ModelLocator
{
    /// <summary>
    /// Resolves <paramref name="modelPathOrHfId"/>. A directory that exists wins; otherwise an id of the form
    /// <c>owner/name</c> (optionally <c>owner/name@revision</c>) is looked up in the HF cache.
    /// Throws <see cref="QwqException"/> naming every place searched when nothing is found.
    /// </summary>
    /// <param name="environment">Reads environment variables (tests pass their own); null uses the process's.</param>
    public static string Resolve(string modelPathOrHfId, Func<string, string?>? environment = null)
    {
        if (string.IsNullOrWhiteSpace(modelPathOrHfId))
            throw new OptionException("--model is empty: pass a model directory or a Hugging Face id such as Qwen/QwQ-32B.");

        string expanded = ExpandHome(modelPathOrHfId, environment);
        if (Directory.Exists(expanded))
        {
            string full = Path.GetFullPath(expanded);
            // A repo folder of the cache itself (what tab completion into ~/.cache/huggingface/hub gives) stands for
            // the snapshot its refs/main names, as the id would.
            if (IsCacheRepoFolder(full))
                return FindSnapshot(full, "main", out string why) ??
                       throw new QwqException($"'{full}' is a Hugging Face cache folder, not a model directory: {why} Pass one of its snapshots/<commit> directories.");
            return full;
        }
        if (File.Exists(expanded))
            throw new QwqException($"Model path '{modelPathOrHfId}' is a file; pass the directory that holds config.json and the *.safetensors files.");

        if (!LooksLikeHfId(modelPathOrHfId, out string repoId, out string revision))
            throw new QwqException($"Model directory '{Path.GetFullPath(expanded)}' does not exist. Pass an existing directory or a Hugging Face id such as Qwen/QwQ-32B.");

        string cacheRoot = HubCacheDirectory(environment);
        string repoDir = Path.Combine(cacheRoot, "models--" + repoId.Replace("/", "--", StringComparison.Ordinal));
        string download = revision == "main" ? $"huggingface-cli download {repoId}" : $"huggingface-cli download {repoId} --revision {revision}";
        if (!Directory.Exists(repoDir))
            throw new QwqException(
                $"Model '{modelPathOrHfId}' is neither a local directory nor in the Hugging Face cache (searched '{repoDir}'). " +
                $"Download it first (e.g. `{download}`), set HF_HUB_CACHE/HF_HOME to where it is, or pass its directory.");
        return FindSnapshot(repoDir, revision, out string reason) ??
               throw new QwqException($"Model '{modelPathOrHfId}' is not usable from the Hugging Face cache: {reason} " +
                                      $"Download it again (e.g. `{download}`), or pass a snapshot directory.");
    }

    /// <summary>The HF hub cache: <c>HF_HUB_CACHE</c> (or its old name <c>HUGGINGFACE_HUB_CACHE</c>), else <c>HF_HOME/hub</c>, else <c>~/.cache/huggingface/hub</c>.</summary>
    public static string HubCacheDirectory(Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        // HUGGINGFACE_HUB_CACHE is the variable's older name, which huggingface_hub still reads when HF_HUB_CACHE is unset.
        string? hubCache = environment("HF_HUB_CACHE");
        if (string.IsNullOrEmpty(hubCache)) hubCache = environment("HUGGINGFACE_HUB_CACHE");
        if (!string.IsNullOrEmpty(hubCache)) return ExpandHome(hubCache, environment);
        string? hfHome = environment("HF_HOME");
        if (!string.IsNullOrEmpty(hfHome)) return Path.Combine(ExpandHome(hfHome, environment), "hub");
        string? xdg = environment("XDG_CACHE_HOME");
        string cache = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Home(environment), ".cache");
        return Path.Combine(cache, "huggingface", "hub");
    }

    internal static bool LooksLikeHfId(string value, out string repoId, out string revision)
    {
        repoId = value;
        revision = "main";
        int at = value.IndexOf('@');
        if (at >= 0)
        {
            repoId = value[..at];
            revision = value[(at + 1)..];
            if (revision.Length == 0) return false;
        }
        string[] parts = repoId.Split('/');
        if (parts.Length != 2) return false;
        foreach (string part in parts)
        {
            if (part.Length == 0 || part is "." or "..") return false;
            foreach (char c in part)
                if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')) return false;
        }
        return true;
    }

    /// <summary>A folder <c>models--owner--name</c> with a <c>snapshots</c> folder and no config.json of its own.</summary>
    private static bool IsCacheRepoFolder(string dir) =>
        Path.GetFileName(Path.TrimEndingDirectorySeparator(dir)).StartsWith("models--", StringComparison.Ordinal) &&
        Directory.Exists(Path.Combine(dir, "snapshots")) && !File.Exists(Path.Combine(dir, "config.json"));

    /// <summary>The snapshot of <paramref name="revision"/> in an existing repo folder, or null with <paramref name="why"/> saying what is wrong.</summary>
    private static string? FindSnapshot(string repoDir, string revision, out string why)
    {
        string snapshots = Path.Combine(repoDir, "snapshots");
        string refFile = Path.Combine(repoDir, "refs", revision);
        why = "";

        // A revision that names a commit directly is its own snapshot folder.
        string direct = Path.Combine(snapshots, revision);
        if (Directory.Exists(direct) && !File.Exists(refFile)) return direct;

        if (File.Exists(refFile))
        {
            string hash = File.ReadAllText(refFile).Trim();
            string dir = Path.Combine(snapshots, hash);
            if (hash.Length > 0 && Directory.Exists(dir)) return dir;
            why = $"'{refFile}' points at '{hash}', but '{dir}' does not exist (a download that did not finish?).";
            return null;
        }

        string[] all = Directory.Exists(snapshots) ? Directory.GetDirectories(snapshots) : [];
        // No ref (e.g. downloaded with a pinned revision): take the only snapshot if there is exactly one.
        if (revision == "main" && all.Length == 1) return all[0];
        if (all.Length == 0)
            why = $"'{repoDir}' has no '{refFile}' and no snapshots.";
        else
        {
            string names = string.Join(", ", all.Select(Path.GetFileName).Order(StringComparer.Ordinal));
            string repoId = Path.GetFileName(Path.TrimEndingDirectorySeparator(repoDir))["models--".Length..].Replace("--", "/", StringComparison.Ordinal);
            why = $"there is no '{refFile}' to say which of its snapshots ({names}) is '{revision}'. " +
                  $"Pick one with {repoId}@<snapshot>.";
        }
        return null;
    }

    private static string ExpandHome(string path, Func<string, string?>? environment)
    {
        if (path == "~") return Home(environment);
        if (path.StartsWith("~/", StringComparison.Ordinal)) return Path.Combine(Home(environment), path[2..]);
        return path;
    }

    private static string Home(Func<string, string?>? environment)
    {
        string? home = (environment ?? Environment.GetEnvironmentVariable)("HOME");
        return !string.IsNullOrEmpty(home) ? home : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
    }
}

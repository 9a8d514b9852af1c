using System.Reflection;
using System.Security.Cryptography;

namespace QwQ.Cuda.Presets;

/// <summary>
/// The tokenizer and generation files of a built-in preset, embedded in the library so that
/// <c>--synthetic qwq-32b</c> runs with nothing but the executable: no checkpoint, no tokenizer download.
/// </summary>
public static class PresetFiles
{
    private const string Prefix = "presets/";

    /// <summary>
    /// A directory holding the preset's files (tokenizer.json.gz, tokenizer_config.json, generation_config.json),
    /// extracted once into a per-user cache keyed by content hash; null when the preset embeds no files.
    /// Files are written to a temporary name and moved into place, so a crash never leaves a half-written one.
    /// </summary>
    public static string? Extract(string preset)
    {
        var asm = typeof(PresetFiles).Assembly;
        string prefix = $"{Prefix}{preset}/";
        var names = asm.GetManifestResourceNames().Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Order().ToArray();
        if (names.Length == 0) return null;

        string hash = ContentHash(asm, names);
        string root = Environment.GetEnvironmentVariable("QWQ_CACHE_DIR")
                      ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "qwq-cuda");
        if (string.IsNullOrEmpty(root)) root = Path.Combine(Path.GetTempPath(), "qwq-cuda");
        string dir = Path.Combine(root, "presets", $"{preset}-{hash}");
        Directory.CreateDirectory(dir);
        foreach (string name in names)
        {
            string target = Path.Combine(dir, name[prefix.Length..]);
            if (File.Exists(target)) continue;
            string tmp = $"{target}.{Environment.ProcessId}.tmp";
            using (var src = asm.GetManifestResourceStream(name)!)
            using (var dst = File.Create(tmp))
                src.CopyTo(dst);
            File.Move(tmp, target, overwrite: true);
        }
        return dir;
    }

    private static string ContentHash(Assembly asm, string[] names)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (string name in names)
        {
            using var s = asm.GetManifestResourceStream(name)!;
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(name));
            var buffer = new byte[81920];
            int n;
            while ((n = s.Read(buffer)) > 0) sha.AppendData(buffer.AsSpan(0, n));
        }
        return Convert.ToHexString(sha.GetHashAndReset())[..12].ToLowerInvariant();
    }
}

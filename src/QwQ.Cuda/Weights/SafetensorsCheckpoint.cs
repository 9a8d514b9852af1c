using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// A Hugging Face checkpoint directory: one <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (its "weight_map" maps tensor name → shard file). All files are
/// memory-mapped on open and stay mapped until <see cref="Dispose"/>; reads convert dtypes on the fly.
/// </summary>
public sealed unsafe class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, SafetensorsFile> _filesByPath;

    public string Directory { get; }
    public IReadOnlyList<SafetensorsFile> Files { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    private SafetensorsCheckpoint(string directory, List<SafetensorsFile> files, Dictionary<string, TensorInfo> tensors)
    {
        Directory = directory;
        Files = files;
        Tensors = tensors;
        _filesByPath = files.ToDictionary(f => f.FilePath, StringComparer.Ordinal);
    }

    public static SafetensorsCheckpoint Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory))
            throw new WeightsException($"{directory}: checkpoint directory not found");

        string indexPath = Path.Combine(directory, IndexFileName);
        string singlePath = Path.Combine(directory, SingleFileName);
        if (File.Exists(indexPath)) return OpenSharded(directory, indexPath);
        if (File.Exists(singlePath)) return OpenFiles(directory, [singlePath], null);

        // Some exports use other names without an index; take every .safetensors file there is.
        var any = System.IO.Directory.GetFiles(directory, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (any.Length == 0)
            throw new WeightsException($"{directory}: no safetensors weights found (expected {SingleFileName} or {IndexFileName})");
        return OpenFiles(directory, any, null);
    }

    private static SafetensorsCheckpoint OpenSharded(string directory, string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var shardPaths = new List<string>();
        foreach (var shard in shardNames)
        {
            string p = Path.Combine(directory, shard);
            if (!File.Exists(p))
                throw new WeightsException($"{indexPath}: shard '{shard}' is listed in the index but missing from {directory}");
            shardPaths.Add(p);
        }
        return OpenFiles(directory, shardPaths, (indexPath, weightMap));
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(indexPath));
            if (doc.RootElement.ValueKind != JsonValueKind.Object ||
                !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new WeightsException($"{indexPath}: index has no \"weight_map\" object");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new WeightsException($"{indexPath}: weight_map entry '{p.Name}' is not a file name");
                string file = p.Value.GetString()!;
                if (file.Length == 0 || Path.IsPathRooted(file) || file.Contains(".."))
                    throw new WeightsException($"{indexPath}: weight_map entry '{p.Name}' names an invalid shard '{file}'");
                result[p.Name] = file;
            }
            return result;
        }
        catch (JsonException e)
        {
            throw new WeightsException($"{indexPath}: malformed JSON at line {(e.LineNumber ?? 0) + 1}");
        }
        catch (IOException e)
        {
            throw new WeightsException($"{indexPath}: cannot read index: {e.Message}");
        }
    }

    private static SafetensorsCheckpoint OpenFiles(string directory, IReadOnlyList<string> paths,
                                                  (string Path, Dictionary<string, string> Map)? index)
    {
        var files = new List<SafetensorsFile>();
        try
        {
            var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            foreach (var path in paths)
            {
                var file = SafetensorsFile.Open(path);
                files.Add(file);
                foreach (var (name, t) in file.Tensors)
                {
                    if (tensors.TryGetValue(name, out var other))
                        throw new WeightsException($"{directory}: tensor '{name}' is in both {other.FilePath} and {t.FilePath}");
                    tensors.Add(name, t);
                }
            }

            if (index is var (indexPath, map))
            {
                foreach (var (name, shard) in map)
                {
                    if (!tensors.TryGetValue(name, out var t))
                        throw new WeightsException($"{indexPath}: tensor '{name}' is mapped to shard '{shard}' but that file does not contain it");
                    if (Path.GetFileName(t.FilePath) != shard)
                        throw new WeightsException($"{indexPath}: tensor '{name}' is mapped to shard '{shard}' but found in {t.FilePath}");
                }
            }
            return new SafetensorsCheckpoint(directory, files, tensors);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>The named tensor; a missing one names the checkpoint directory.</summary>
    public TensorInfo Get(string name) =>
        Tensors.TryGetValue(name, out var t) ? t : throw new WeightsException($"{Directory}: checkpoint has no tensor '{name}'");

    private SafetensorsFile FileOf(TensorInfo t) =>
        _filesByPath.TryGetValue(t.FilePath, out var f) ? f
            : throw new ArgumentException($"tensor {t.Name} does not belong to checkpoint {Directory}", nameof(t));

    /// <summary>Raw bytes of a tensor (at most 2 GiB; use <see cref="GetPointer"/> beyond).</summary>
    public ReadOnlySpan<byte> GetBytes(TensorInfo t) => FileOf(t).GetBytes(t);

    /// <summary>Pointer to a tensor's raw bytes, valid until the checkpoint is disposed (for streaming uploads).</summary>
    public byte* GetPointer(TensorInfo t) => FileOf(t).GetPointer(t);

    /// <summary>The whole tensor as fp32 (converted from bf16/f16).</summary>
    public float[] ReadFloat32(string name)
    {
        var t = Get(name);
        if (t.ElementCount > Array.MaxLength)
            throw new InvalidOperationException($"{name} has {t.ElementCount} elements, too many for one array");
        var result = new float[t.ElementCount];
        ReadFloat32(t, result, 0);
        return result;
    }

    /// <summary>Elements [elementOffset, elementOffset + dst.Length) of <paramref name="t"/> as fp32.</summary>
    public void ReadFloat32(TensorInfo t, Span<float> dst, long elementOffset)
    {
        byte* src = SliceStart(t, dst.Length, elementOffset);
        ElementConversion.ToFloat32(t.DType, new ReadOnlySpan<byte>(src, dst.Length * t.DType.ElementSize()), dst);
    }

    /// <summary>
    /// Elements [elementOffset, elementOffset + dst.Length) of <paramref name="t"/> as bf16 bit patterns:
    /// a copy for bf16 tensors, round-to-nearest-even for f32/f16. Lets callers stream a tensor in chunks.
    /// </summary>
    public void CopyAsBf16(TensorInfo t, Span<ushort> dst, long elementOffset)
    {
        byte* src = SliceStart(t, dst.Length, elementOffset);
        ElementConversion.ToBf16(t.DType, new ReadOnlySpan<byte>(src, dst.Length * t.DType.ElementSize()), dst);
    }

    private byte* SliceStart(TensorInfo t, int count, long elementOffset)
    {
        if (elementOffset < 0 || count < 0 || elementOffset + count > t.ElementCount)
            throw new ArgumentOutOfRangeException(nameof(elementOffset),
                $"elements [{elementOffset}, {elementOffset + count}) are outside {t.Name} ({t.ElementCount} elements)");
        return GetPointer(t) + elementOffset * t.DType.ElementSize();
    }

    public void Dispose()
    {
        foreach (var f in Files) f.Dispose();
    }
}

using System.Buffers;
using System.Runtime.InteropServices;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// A Hugging Face checkpoint directory: one <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (its "weight_map" maps tensor name → shard file). Every file is opened and
/// its header checked on open; files stay open until <see cref="Dispose"/>. Reads go straight into the caller's
/// buffer and convert dtypes on the way. Files may be symbolic links (the HF cache's snapshots are).
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>Raw bytes read per step when a read converts dtypes: large enough to read at page-cache speed.</summary>
    private const int ConversionChunkBytes = 8 << 20;

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
        if (Present(indexPath)) return OpenSharded(directory, indexPath, Present(singlePath) ? singlePath : null);
        if (Present(singlePath)) return OpenFiles(directory, [singlePath], null);

        // Some exports use other names without an index; take every .safetensors file there is.
        var any = System.IO.Directory.GetFiles(directory, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (any.Length == 0)
            throw new WeightsException($"{directory}: no safetensors weights found (expected {SingleFileName} or {IndexFileName})");
        return OpenFiles(directory, any, null);
    }

    /// <summary>A file, or a link to one even when its target is gone (opening it then says so, instead of "no weights").</summary>
    private static bool Present(string path) => File.Exists(path) || new FileInfo(path).LinkTarget is not null;

    private static SafetensorsCheckpoint OpenSharded(string directory, string indexPath, string? singlePath)
    {
        var weightMap = ReadWeightMap(directory, indexPath);
        var shards = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var missing = shards.Where(shard => !Present(Path.Combine(directory, shard))).ToList();
        // transformers' save_pretrained, writing one model.safetensors where a sharded save was, deletes the old shards
        // but leaves their index behind (and loads the single file): an index none of whose shards exist, beside a
        // model.safetensors, is that leftover. With some shards present it is not, and the single file is not guessed at.
        if (singlePath is not null && missing.Count == shards.Count)
            return OpenFiles(directory, [singlePath], null);
        if (missing.Count > 0)
            throw new WeightsException(
                $"{indexPath}: {missing.Count} of the {shards.Count} shards it lists {(missing.Count == 1 ? "is" : "are")} missing from {directory}: " +
                string.Join(", ", missing.Take(5).Select(m => $"'{m}'")) + (missing.Count > 5 ? $" and {missing.Count - 5} more" : "") +
                ". The download is incomplete: fetch the missing shards (e.g. `huggingface-cli download <repo>` resumes where it stopped)");
        return OpenFiles(directory, [.. shards.Select(shard => Path.Combine(directory, shard))], (indexPath, weightMap));
    }

    /// <summary>The index's tensor → shard map, every shard a relative path that stays inside <paramref name="directory"/>.</summary>
    private static Dictionary<string, string> ReadWeightMap(string directory, string indexPath)
    {
        string shown = SafetensorsFile.ShownPath(indexPath);
        byte[] bytes;
        try { bytes = File.ReadAllBytes(indexPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{shown}: cannot read index: {e.Message}");
        }
        using var doc = StrictJson.Parse(bytes, shown, "index");
        JsonElement map = default;
        if (doc.RootElement.ValueKind == JsonValueKind.Object)
            foreach (var (key, value) in StrictJson.Properties(doc.RootElement, shown, "index"))
                if (key == "weight_map") map = value;
        if (map.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{shown}: index has no \"weight_map\" object");

        string root = Path.GetFullPath(directory);
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (tensor, value) in StrictJson.Properties(map, shown, "\"weight_map\""))
        {
            string shard = StrictJson.String(value, shown, $"weight_map entry '{tensor}'")
                ?? throw new WeightsException($"{shown}: weight_map entry '{tensor}' is {value.ValueKind}, not a shard file name");
            if (!NamesFileInside(root, shard))
                throw new WeightsException($"{shown}: weight_map entry '{tensor}' names shard '{shard}', which is not a file inside {directory}");
            result.Add(tensor, shard);
        }
        return result;
    }

    /// <summary>
    /// Whether <paramref name="shard"/> is a relative path to a file inside <paramref name="root"/>, judged on the
    /// text before anything is opened. (The shard itself may be a link that leads outside: the HF cache's snapshots
    /// link into its blobs folder.)
    /// </summary>
    private static bool NamesFileInside(string root, string shard)
    {
        if (shard.Length == 0 || shard.Contains('\0') || Path.IsPathRooted(shard)) return false;
        string relative = Path.GetRelativePath(root, Path.GetFullPath(shard, root));
        return relative != "." && relative != ".." &&
               !relative.StartsWith(".." + Path.DirectorySeparatorChar, StringComparison.Ordinal);
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
                        throw new WeightsException($"{directory}: tensor '{name}' is in both {other.FilePath} and {t.FilePath}; a checkpoint holds each tensor once");
                    tensors.Add(name, t);
                }
            }

            if (index is var (indexPath, map))
            {
                foreach (var (name, shard) in map)
                {
                    if (!tensors.TryGetValue(name, out var t) || t.FilePath != Path.Combine(directory, shard))
                        throw new WeightsException($"{indexPath}: tensor '{name}' is mapped to shard '{shard}' but that file does not contain it" +
                                                   (t is null ? "" : $" (it is in {t.FilePath})"));
                }
                // The other direction: a tensor the index does not list is one the exporter did not mean to publish,
                // or the index belongs to another checkpoint.
                foreach (var t in tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal))
                {
                    if (!map.ContainsKey(t.Name))
                        throw new WeightsException($"{indexPath}: tensor '{t.Name}' in {t.FilePath} is not listed in the index's weight_map; " +
                                                   "the index and its shards disagree");
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

    /// <summary>Raw bytes [byteOffset, byteOffset + destination.Length) of a tensor (see <see cref="SafetensorsFile.Read"/>).</summary>
    public void Read(TensorInfo t, long byteOffset, Span<byte> destination) => FileOf(t).Read(t, byteOffset, destination);

    /// <summary>The whole tensor as fp32 (converted from bf16/f16).</summary>
    public float[] ReadFloat32(string name)
    {
        var t = Get(name);
        if (t.ElementCount > Array.MaxLength)
            throw new WeightsException($"{t.FilePath}: tensor '{name}' has {t.ElementCount} elements, too many for one fp32 array " +
                                       "(the CPU reference is meant for small models)");
        var result = new float[t.ElementCount];
        ReadFloat32(t, result, 0);
        return result;
    }

    /// <summary>
    /// A linear layer's weight as fp32 in the Hugging Face layout, [out, in], whatever its stored layout: a plain
    /// float weight converted, an FP8 one times its scales, an AWQ one unpacked, less its zero points, times its
    /// scales. <paramref name="linear"/> comes from <see cref="QuantizedTensorNames.Linear"/>; its tensors' dtypes and
    /// shapes are checked first.
    /// </summary>
    public float[] ReadDequantizedLinear(Quantization.LinearTensors linear) => Quantization.LinearDequantizer.Read(this, linear);

    /// <summary>Elements [elementOffset, elementOffset + dst.Length) of <paramref name="t"/> as fp32.</summary>
    public void ReadFloat32(TensorInfo t, Span<float> dst, long elementOffset) =>
        ReadAs(t, dst, elementOffset, DType.F32, ElementConversion.ToFloat32);

    /// <summary>
    /// Elements [elementOffset, elementOffset + dst.Length) of <paramref name="t"/> as bf16 bit patterns:
    /// a copy for bf16 tensors, round-to-nearest-even for f32/f16. Lets callers stream a tensor in chunks.
    /// </summary>
    public void CopyAsBf16(TensorInfo t, Span<ushort> dst, long elementOffset) =>
        ReadAs(t, dst, elementOffset, DType.BF16, ElementConversion.ToBf16);

    private delegate void Converter<T>(DType source, ReadOnlySpan<byte> raw, Span<T> dst);

    /// <summary>
    /// Reads elements of <paramref name="t"/> into <paramref name="dst"/> as <paramref name="target"/>: straight into
    /// <paramref name="dst"/> when the file already holds that dtype, else in chunks through a pooled buffer.
    /// </summary>
    private void ReadAs<T>(TensorInfo t, Span<T> dst, long elementOffset, DType target, Converter<T> convert) where T : unmanaged
    {
        if (!t.DType.IsPlainFloat())
            throw new WeightsException($"{t.FilePath}: tensor '{t.Name}' is {t.DType}, which does not convert to {target} on its own: " +
                                       (t.DType == DType.F8_E4M3
                                           ? "fp8 values mean something only multiplied by their scale. "
                                           : "its int32 elements pack AWQ 4-bit values, which need their zero points and scales. ") +
                                       $"Read a quantized linear layer with {nameof(ReadDequantizedLinear)}, or its raw bytes with {nameof(Read)}");
        if (elementOffset < 0 || elementOffset > t.ElementCount || dst.Length > t.ElementCount - elementOffset)
            throw new ArgumentOutOfRangeException(nameof(elementOffset),
                $"elements [{elementOffset}, {elementOffset + dst.Length}) are outside {t.Name} ({t.ElementCount} elements)");
        int size = t.DType.ElementSize();
        if (t.DType == target)
        {
            Read(t, elementOffset * size, MemoryMarshal.AsBytes(dst));
            return;
        }
        byte[] chunk = ArrayPool<byte>.Shared.Rent((int)Math.Min(ConversionChunkBytes, (long)dst.Length * size));
        try
        {
            int perChunk = Math.Min(chunk.Length, ConversionChunkBytes) / size;
            for (int done = 0; done < dst.Length;)
            {
                int n = Math.Min(perChunk, dst.Length - done);
                var raw = chunk.AsSpan(0, n * size);
                Read(t, (elementOffset + done) * size, raw);
                convert(t.DType, raw, dst.Slice(done, n));
                done += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }

    public void Dispose()
    {
        foreach (var f in Files) f.Dispose();
    }
}

using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// One .safetensors file, read with positional reads. Layout: an 8-byte little-endian header length N, N bytes
/// of JSON header ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the data;
/// offsets are relative to the start of the data. The header is checked on open as strictly as the reference
/// reader (huggingface/safetensors) does, so a truncated or corrupt file fails here, naming the file and the
/// tensor, not later on the GPU or as wrong weights.
/// </summary>
/// <remarks>
/// No memory map: a mapped file that shrinks while it is read kills the process with SIGBUS. A positional read of
/// a shrunken file just comes back short, which <see cref="Read"/> turns into a <see cref="WeightsException"/>.
/// Reads of 8 MiB and more from the page cache are as fast as copying out of a mapping.
/// </remarks>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>The reference reader's limit (MAX_HEADER_SIZE); a longer header is corruption or an attack.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly SafeFileHandle _handle;
    /// <summary>The path for messages: <see cref="FilePath"/>, plus the file it resolves to when it is a link (HF cache blobs).</summary>
    private readonly string _shown;

    /// <summary>The path as opened (a link in the Hugging Face cache; <see cref="FileLength"/> is its target's).</summary>
    public string FilePath { get; }
    public long FileLength { get; }
    /// <summary>Absolute offset of the first data byte (8 + header length).</summary>
    public long DataStart { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    /// <summary>The header's optional "__metadata__" string map.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafetensorsFile(string path, string shown, SafeFileHandle handle)
    {
        FilePath = path;
        _shown = shown;
        _handle = handle;
        // The length of what was opened: for a symbolic link that is its target, not the link (FileInfo.Length is the link's).
        FileLength = RandomAccess.GetLength(handle);
        (DataStart, Tensors, Metadata) = ParseHeader();
    }

    public static SafetensorsFile Open(string path)
    {
        string shown = ShownPath(path);
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new WeightsException($"{shown}: safetensors file not found" +
                                       (shown != path ? " (the link's target is missing: an incomplete download?)" : ""));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{shown}: cannot open safetensors file: {e.Message}");
        }
        try
        {
            return new SafetensorsFile(path, shown, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary><paramref name="path"/>, followed by its final target when it is a symbolic link.</summary>
    internal static string ShownPath(string path)
    {
        try
        {
            var target = File.ResolveLinkTarget(path, returnFinalTarget: true);
            return target is null ? path : $"{path} (link to {target.FullName})";
        }
        catch (IOException)
        {
            return path; // a link loop: opening it fails with its own message
        }
    }

    /// <summary>
    /// Reads bytes [<paramref name="byteOffset"/>, <paramref name="byteOffset"/> + destination.Length) of
    /// <paramref name="t"/> into <paramref name="destination"/> (any memory: a managed array, a pinned staging buffer).
    /// Throws a <see cref="WeightsException"/> when the file shrank since it was opened; never returns partial data.
    /// </summary>
    public void Read(TensorInfo t, long byteOffset, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
        if (t.FilePath != FilePath || !Tensors.TryGetValue(t.Name, out var own) ||
            own.DataOffset != t.DataOffset || own.ByteLength != t.ByteLength)
            throw new ArgumentException($"tensor {t.Name} does not belong to {FilePath}", nameof(t));
        if (byteOffset < 0 || byteOffset > t.ByteLength || destination.Length > t.ByteLength - byteOffset)
            throw new ArgumentOutOfRangeException(nameof(byteOffset),
                $"bytes [{byteOffset}, {byteOffset + destination.Length}) are outside {t.Name} ({t.ByteLength} bytes)");
        ReadExactly(t.DataOffset + byteOffset, destination, $"tensor '{t.Name}'");
    }

    private void ReadExactly(long fileOffset, Span<byte> destination, string what)
    {
        try
        {
            while (!destination.IsEmpty)
            {
                int n = RandomAccess.Read(_handle, destination, fileOffset);
                if (n == 0)
                    throw new WeightsException($"{_shown}: {what}: file shrank while loading: it was {FileLength} bytes when opened " +
                                               $"and ends at byte {RandomAccess.GetLength(_handle)} now. Was it replaced or truncated " +
                                               "during the load? Load again once the file is complete.");
                destination = destination[n..];
                fileOffset += n;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{_shown}: {what}: read failed: {e.Message}");
        }
    }

    private (long, IReadOnlyDictionary<string, TensorInfo>, IReadOnlyDictionary<string, string>) ParseHeader()
    {
        if (FileLength < 8)
            throw new WeightsException($"{_shown}: file is {FileLength} bytes, too short to be safetensors (truncated?)");
        Span<byte> prefix = stackalloc byte[8];
        ReadExactly(0, prefix, "header length");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > MaxHeaderBytes)
            throw new WeightsException($"{_shown}: header length {headerLength} exceeds the format's limit of {MaxHeaderBytes} bytes; " +
                                       "the file is not safetensors or is corrupt");
        if (8 + (long)headerLength > FileLength)
            throw new WeightsException($"{_shown}: header length {headerLength} runs past the end of the {FileLength}-byte file (truncated?)");

        long dataStart = 8 + (long)headerLength;
        long dataLength = FileLength - dataStart;
        var header = new byte[headerLength];
        ReadExactly(8, header, "header");

        using var doc = StrictJson.Parse(header, _shown, "header");
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{_shown}: header must be a JSON object, not {doc.RootElement.ValueKind}: the file is corrupt");

        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in StrictJson.Properties(doc.RootElement, _shown, "header"))
        {
            if (name == "__metadata__") ParseMetadata(value, metadata);
            else tensors.Add(name, ParseEntry(name, value, dataStart, dataLength));
        }
        CheckTiling(tensors.Values, dataStart);
        return (dataStart, tensors, metadata);
    }

    private void ParseMetadata(JsonElement e, Dictionary<string, string> metadata)
    {
        if (e.ValueKind == JsonValueKind.Null) return;   // serde's Option: null is "no metadata"
        if (e.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{_shown}: \"__metadata__\" must be an object of strings, not {e.ValueKind}: the file is corrupt");
        foreach (var (key, value) in StrictJson.Properties(e, _shown, "\"__metadata__\""))
            metadata[key] = StrictJson.String(value, _shown, $"\"__metadata__\" entry '{key}'")
                ?? throw new WeightsException($"{_shown}: \"__metadata__\" entry '{key}' is {value.ValueKind}, but metadata values must be strings: the file is corrupt");
    }

    private TensorInfo ParseEntry(string name, JsonElement e, long dataStart, long dataLength)
    {
        WeightsException Bad(string what) => new($"{_shown}: tensor '{name}': {what}");

        if (e.ValueKind != JsonValueKind.Object) throw Bad($"header entry is {e.ValueKind}, not an object");
        JsonElement? dtypeEl = null, shapeEl = null, offsetsEl = null;
        foreach (var (field, value) in StrictJson.Properties(e, _shown, $"tensor '{name}'"))
        {
            // Unknown fields are ignored, as the reference reader does.
            if (field == "dtype") dtypeEl = value;
            else if (field == "shape") shapeEl = value;
            else if (field == "data_offsets") offsetsEl = value;
        }

        string dtypeName = (dtypeEl is { } d ? StrictJson.String(d, _shown, $"tensor '{name}'") : null)
            ?? throw Bad("missing 'dtype' string");
        DType dtype = DTypeExtensions.ParseSafetensors(dtypeName)
            ?? throw Bad($"unsupported dtype \"{dtypeName}\" (supported: {DTypeExtensions.SupportedNames})");

        if (shapeEl is not { ValueKind: JsonValueKind.Array } shapeArray) throw Bad("missing 'shape' list");
        var shape = new long[shapeArray.GetArrayLength()];
        long elements = 1;
        int k = 0;
        foreach (var dim in shapeArray.EnumerateArray())
        {
            shape[k] = NonNegativeInteger(dim) ?? throw Bad($"shape {shapeArray.GetRawText()} is not a list of non-negative integers");
            elements = MultiplyOrNull(elements, shape[k++]) ?? throw Bad($"shape {shapeArray.GetRawText()} has more elements than a 64-bit count holds");
        }

        if (offsetsEl is not { ValueKind: JsonValueKind.Array } offsets || offsets.GetArrayLength() != 2 ||
            NonNegativeInteger(offsets[0]) is not { } begin || NonNegativeInteger(offsets[1]) is not { } end || end < begin)
            throw Bad($"data_offsets {offsetsEl?.GetRawText() ?? "(missing)"} is not a [begin, end] pair of integers with 0 <= begin <= end");
        if (end > dataLength)
            throw Bad($"data_offsets [{begin}, {end}] run past the end of the file's {dataLength} data bytes (truncated?)");

        long expected = MultiplyOrNull(elements, dtype.ElementSize())
            ?? throw Bad($"{dtypeName}{TensorInfo.FormatShape(shape)} has more bytes than a 64-bit count holds");
        if (end - begin != expected)
            throw Bad($"data_offsets [{begin}, {end}] hold {end - begin} bytes but {dtypeName}{TensorInfo.FormatShape(shape)} needs {expected}");

        return new TensorInfo(name, dtype, shape, FilePath, dataStart + begin, end - begin);
    }

    /// <summary>A JSON integer ≥ 0 that fits a long; null for anything else (strings, 4.0, 4e0, negatives).</summary>
    private static long? NonNegativeInteger(JsonElement e) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) && v >= 0 ? v : null;

    private static long? MultiplyOrNull(long a, long b)
    {
        try { return checked(a * b); }
        catch (OverflowException) { return null; }
    }

    /// <summary>
    /// The reference reader's rule: sorted by offset, each tensor begins where the previous one ended and the last
    /// ends at the end of the file. So no two tensors share bytes (an lm_head.weight pointing at the embedding's
    /// bytes), and a header length off by a few bytes, which moves every tensor, cannot go unnoticed.
    /// </summary>
    private void CheckTiling(IEnumerable<TensorInfo> tensors, long dataStart)
    {
        string Range(TensorInfo t) => $"data_offsets [{t.DataOffset - dataStart}, {t.DataOffset - dataStart + t.ByteLength}]";

        long next = dataStart;
        TensorInfo? previous = null;
        foreach (var t in tensors.OrderBy(t => t.DataOffset).ThenBy(t => t.ByteLength))
        {
            if (t.DataOffset < next)
                throw new WeightsException($"{_shown}: tensor '{t.Name}' ({Range(t)}) overlaps tensor '{previous!.Name}' ({Range(previous)}); " +
                                           "every tensor needs bytes of its own: the file is corrupt");
            if (t.DataOffset > next)
                throw new WeightsException($"{_shown}: tensor '{t.Name}' ({Range(t)}) leaves {t.DataOffset - next} bytes unused before it " +
                                           (previous is null ? "at the start of the data" : $"after tensor '{previous.Name}' ({Range(previous)})") +
                                           ": the offsets do not cover the data section, so the file is corrupt");
            next = t.DataOffset + t.ByteLength;
            previous = t;
        }
        if (next != FileLength)
            throw new WeightsException(previous is null
                ? $"{_shown}: {FileLength - next} bytes of data, but the header lists no tensors: the file is corrupt"
                : $"{_shown}: {FileLength - next} bytes follow the end of the last tensor '{previous.Name}' ({Range(previous)}): " +
                  "the file should end there; a wrong header length or an appended tail means it is corrupt");
    }

    public void Dispose() => _handle.Dispose();
}

using System.IO.MemoryMappedFiles;
using System.Text.Json;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Weights;

/// <summary>
/// One .safetensors file, memory-mapped read-only. Layout: an 8-byte little-endian header length N,
/// N bytes of JSON header ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}),
/// then the data; offsets are relative to the start of the data. Everything is checked on open so a
/// truncated or corrupt file fails here, naming the file and the tensor, not later on the GPU.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The format caps headers at 100 MB; anything bigger is corruption.</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _base;

    public string FilePath { get; }
    public long FileLength { get; }
    /// <summary>Absolute offset of the first data byte (8 + header length).</summary>
    public long DataStart { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    /// <summary>The header's optional "__metadata__" string map.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafetensorsFile(string path, long length, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePtr)
    {
        FilePath = path;
        FileLength = length;
        _map = map;
        _view = view;
        _base = basePtr;
        try
        {
            (DataStart, Tensors, Metadata) = ParseHeader();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public static SafetensorsFile Open(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new WeightsException($"{path}: safetensors file not found");
        long length = info.Length;
        if (length < 8)
            throw new WeightsException($"{path}: file is {length} bytes, too short to be safetensors (truncated?)");

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            p += view.PointerOffset;
            return new SafetensorsFile(path, length, map, view, p);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose();
            map?.Dispose();
            throw new WeightsException($"{path}: cannot map file: {e.Message}");
        }
    }

    /// <summary>The tensor's bytes. Tensors over 2 GiB must be read through <see cref="GetPointer"/>.</summary>
    public ReadOnlySpan<byte> GetBytes(TensorInfo t)
    {
        CheckOwned(t);
        if (t.ByteLength > int.MaxValue)
            throw new InvalidOperationException($"{t.Name} is {t.ByteLength} bytes; use GetPointer for tensors over 2 GiB");
        return new ReadOnlySpan<byte>(_base + t.DataOffset, (int)t.ByteLength);
    }

    /// <summary>Pointer to the tensor's first byte, valid until this file is disposed.</summary>
    public byte* GetPointer(TensorInfo t)
    {
        CheckOwned(t);
        return _base + t.DataOffset;
    }

    private void CheckOwned(TensorInfo t)
    {
        ObjectDisposedException.ThrowIf(_base == null, this);
        if (t.FilePath != FilePath || t.DataOffset < DataStart || t.DataOffset + t.ByteLength > FileLength)
            throw new ArgumentException($"tensor {t.Name} does not belong to {FilePath}", nameof(t));
    }

    private (long, IReadOnlyDictionary<string, TensorInfo>, IReadOnlyDictionary<string, string>) ParseHeader()
    {
        ulong headerLength = *(ulong*)_base; // safetensors is little-endian; so are all our targets
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian hosts are not supported");
        if (headerLength == 0 || headerLength > MaxHeaderBytes)
            throw new WeightsException($"{FilePath}: header length {headerLength} is not sane (must be 1..{MaxHeaderBytes} bytes); " +
                                       "the file is not safetensors or is corrupt");
        if (8 + (long)headerLength > FileLength)
            throw new WeightsException($"{FilePath}: header length {headerLength} runs past the end of the {FileLength}-byte file (truncated?)");

        long dataStart = 8 + (long)headerLength;
        long dataLength = FileLength - dataStart;
        var headerBytes = new ReadOnlySpan<byte>(_base + 8, (int)headerLength);

        JsonDocument doc;
        try
        {
            // Writers may pad the header with trailing spaces; JSON allows that.
            var reader = new Utf8JsonReader(headerBytes, new JsonReaderOptions { AllowTrailingCommas = false });
            doc = JsonDocument.ParseValue(ref reader);
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            throw new WeightsException($"{FilePath}: header is not valid JSON (line {((e as JsonException)?.LineNumber ?? 0) + 1}): corrupt safetensors file");
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new WeightsException($"{FilePath}: header must be a JSON object");

            var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                TensorInfo t;
                try { t = ParseEntry(prop.Name, prop.Value, dataStart, dataLength); }
                catch (OverflowException) { throw new WeightsException($"{FilePath}: tensor '{prop.Name}': shape is too large"); }
                if (!tensors.TryAdd(t.Name, t))
                    throw new WeightsException($"{FilePath}: tensor '{t.Name}' appears twice in the header");
            }
            return (dataStart, tensors, metadata);
        }
    }

    private TensorInfo ParseEntry(string name, JsonElement e, long dataStart, long dataLength)
    {
        WeightsException Bad(string what) => new($"{FilePath}: tensor '{name}': {what}");

        if (e.ValueKind != JsonValueKind.Object) throw Bad("header entry is not an object");

        if (!e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
            throw Bad("missing 'dtype'");
        string dtypeName = dtypeEl.GetString()!;
        DType dtype = DTypeExtensions.ParseSafetensors(dtypeName)
            ?? throw Bad($"unsupported dtype {dtypeName} (supported: BF16, F16, F32)");

        if (!e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
            throw Bad("missing 'shape'");
        var shape = new long[shapeEl.GetArrayLength()];
        long elements = 1;
        int k = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Bad($"shape {shapeEl.GetRawText()} is not a list of non-negative integers");
            shape[k++] = dim;
            elements = checked(elements * dim);
        }

        if (!e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw Bad("missing 'data_offsets' [begin, end]");
        if (!offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw Bad($"data_offsets {offEl.GetRawText()} are not a valid [begin, end] range");
        if (end > dataLength)
            throw Bad($"data_offsets {offEl.GetRawText()} run past the end of the file's {dataLength} data bytes (truncated?)");

        long expected = checked(elements * dtype.ElementSize());
        if (end - begin != expected)
            throw Bad($"holds {end - begin} bytes but {dtypeName}{TensorInfo.FormatShape(shape)} needs {expected}");

        return new TensorInfo(name, dtype, shape, FilePath, dataStart + begin, end - begin);
    }

    public void Dispose()
    {
        if (_base != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _base = null;
        }
        _view.Dispose();
        _map.Dispose();
    }
}

using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>Writes small safetensors files (and corrupt variants) for reader tests.</summary>
internal static class SafetensorsTestFiles
{
    public sealed record Entry(string Name, string DType, long[] Shape, byte[] Data);

    /// <summary>Opening <paramref name="path"/> fails with a WeightsException that names the file.</summary>
    public static WeightsException OpenFails(string path)
    {
        var e = Assert.Throws<WeightsException>(() => SafetensorsFile.Open(path).Dispose())!;
        Assert.That(e.Message, Does.Contain(path));
        return e;
    }

    public static Entry F32(string name, long[] shape, params float[] values) =>
        new(name, "F32", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    public static Entry Bf16(string name, long[] shape, params ushort[] values) =>
        new(name, "BF16", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    public static Entry F16(string name, long[] shape, params Half[] values) =>
        new(name, "F16", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());

    /// <summary>The JSON header for <paramref name="entries"/>, data laid out back to back.</summary>
    public static string Header(IEnumerable<Entry> entries, Dictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        if (metadata is not null) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var e in entries)
        {
            header[e.Name] = new { dtype = e.DType, shape = e.Shape, data_offsets = new[] { offset, offset + e.Data.Length } };
            offset += e.Data.Length;
        }
        return JsonSerializer.Serialize(header);
    }

    public static void Write(string path, IEnumerable<Entry> entries, Dictionary<string, string>? metadata = null)
    {
        var list = entries.ToList();
        WriteRaw(path, Header(list, metadata), list.SelectMany(e => e.Data).ToArray());
    }

    /// <summary>A file with the given header text and data bytes (header padded to 8 bytes like real writers).</summary>
    public static void WriteRaw(string path, string header, byte[] data, ulong? headerLengthOverride = null) =>
        File.WriteAllBytes(path, Bytes(Encoding.UTF8.GetBytes(header), data, headerLengthOverride));

    /// <summary>
    /// A safetensors file's bytes from raw header bytes (which may be invalid UTF-8) and data: the header is padded
    /// with spaces to a multiple of 8, as real writers do, and its length written in front unless overridden.
    /// </summary>
    public static byte[] Bytes(byte[] header, byte[] data, ulong? headerLengthOverride = null)
    {
        int pad = (8 - header.Length % 8) % 8;
        var file = new byte[8 + header.Length + pad + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, headerLengthOverride ?? (ulong)(header.Length + pad));
        header.CopyTo(file, 8);
        file.AsSpan(8 + header.Length, pad).Fill((byte)' ');
        data.CopyTo(file, 8 + header.Length + pad);
        return file;
    }

    /// <summary>A well-formed file's header text (padding included) and data section, parsed independently of the reader under test.</summary>
    public static (string Header, byte[] Data) Split(byte[] file)
    {
        int n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        return (Encoding.UTF8.GetString(file, 8, n), file[(8 + n)..]);
    }

    /// <summary>The tensors of a well-formed file as entries, in data order (for rewriting it as shards).</summary>
    public static List<Entry> Entries(byte[] file)
    {
        var (header, data) = Split(file);
        using var doc = JsonDocument.Parse(header);
        return doc.RootElement.EnumerateObject()
            .Where(p => p.Name != "__metadata__")
            .Select(p => (Tensor: p.Value, Name: p.Name, Offsets: p.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt32()).ToArray()))
            .OrderBy(t => t.Offsets[0])
            .Select(t => new Entry(t.Name, t.Tensor.GetProperty("dtype").GetString()!,
                                   t.Tensor.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(),
                                   data[t.Offsets[0]..t.Offsets[1]]))
            .ToList();
    }
}

/// <summary>A fresh temporary directory deleted at dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("qwq-weights-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

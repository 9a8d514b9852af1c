using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>Writes small safetensors files (and corrupt variants) for reader tests.</summary>
internal static class SafetensorsTestFiles
{
    public sealed record Entry(string Name, string DType, long[] Shape, byte[] Data);

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
    public static void WriteRaw(string path, string header, byte[] data, ulong? headerLengthOverride = null)
    {
        var hb = Encoding.UTF8.GetBytes(header);
        int pad = (8 - hb.Length % 8) % 8;
        hb = hb.Concat(Enumerable.Repeat((byte)' ', pad)).ToArray();
        var len = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, headerLengthOverride ?? (ulong)hb.Length);
        using var f = File.Create(path);
        f.Write(len);
        f.Write(hb);
        f.Write(data);
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

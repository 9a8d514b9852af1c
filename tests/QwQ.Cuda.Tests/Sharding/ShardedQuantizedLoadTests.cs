using System.Runtime.InteropServices;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Quantized;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Sharding;

/// <summary>
/// The host side of loading a GPU's windows of packed tensors (tensor parallel over FP8 and AWQ checkpoints):
/// <see cref="WeightUploader.ReadWindow"/> and <see cref="WeightUploader.ReadSliceCodes"/> against windows cut from the
/// whole tensors read plainly.
/// </summary>
public class ShardedQuantizedLoadTests
{
    private static (SafetensorsCheckpoint Ck, TestModels.TempDir Dir) Checkpoint(System.Text.Json.Nodes.JsonObject quantization, int seed)
    {
        var dir = new TestModels.TempDir();
        // hidden 256 (8 AWQ int32 columns per 64 outputs), 4 heads, I 512: every window below is whole groups of 64
        var config = QuantizedConfigs.Parse(quantization, hidden: 256, intermediate: 512, layers: 1);
        QuantizedCheckpoints.Write(dir.Path, QuantizedCheckpoints.Entries(config, seed, "BF16"));
        return (SafetensorsCheckpoint.Open(dir.Path), dir);
    }

    private static T[] Window<T>(T[] whole, int width, ShardRange rows, ShardRange columns)
    {
        var w = new T[rows.Count * columns.Count];
        for (int r = 0; r < rows.Count; r++)
            Array.Copy(whole, (rows.Start + r) * width + columns.Start, w, r * columns.Count, columns.Count);
        return w;
    }

    [Test]
    public void AwqWindowsAreTheWholeTensorsCut()
    {
        var (ck, dir) = Checkpoint(QuantizedConfigs.Awq(groupSize: 64), seed: 3);
        using var _ = dir;
        using var __ = ck;
        foreach (string name in new[] { "model.layers.0.self_attn.q_proj.qweight", "model.layers.0.mlp.down_proj.qweight", "model.layers.0.mlp.up_proj.qzeros" })
        {
            TensorInfo t = ck.Get(name);
            int rows = (int)t.Shape[0], width = (int)t.Shape[1];
            int[] whole = QuantizedCheckpoints.Raw<int>(ck, name);
            // an output window (AWQ columns), an input window (rows), and both
            foreach (var (r, c) in new[] { (new ShardRange(0, rows), new ShardRange(width / 2, width / 2)), (new ShardRange(rows / 2, rows / 2), new ShardRange(0, width)),
                                           (new ShardRange(rows / 4, rows / 2), new ShardRange(width / 4, width / 4)) })
            {
                var got = new int[r.Count * c.Count];
                WeightUploader.ReadWindow(ck, t, r, c, MemoryMarshal.AsBytes(got.AsSpan()));
                Assert.That(got, Is.EqualTo(Window(whole, width, r, c)), $"{name} rows {r} columns {c}");
            }
        }
    }

    [Test]
    public void Fp8ColumnAndRowSlicesInChunksAreTheWholeTensorCut()
    {
        var (ck, dir) = Checkpoint(QuantizedConfigs.Fp8(), seed: 5);
        using var _ = dir;
        using var __ = ck;
        TensorInfo t = ck.Get("model.layers.0.mlp.down_proj.weight"); // [256, 512] e4m3
        int rows = (int)t.Shape[0], width = (int)t.Shape[1];
        byte[] whole = QuantizedCheckpoints.Raw<byte>(ck, t.Name);
        var columns = new ShardRange(width / 4, width / 4);
        var slice = new WeightUploader.Slice(columns, Columns: true);
        var got = new byte[rows * columns.Count];
        int chunk = 37 * columns.Count; // whole rows per chunk, and a short last one
        for (int off = 0; off < got.Length; off += chunk)
            WeightUploader.ReadSliceCodes(ck, t, slice, off, got.AsSpan(off), Math.Min(chunk, got.Length - off));
        Assert.That(got, Is.EqualTo(Window(whole, width, new ShardRange(0, rows), columns)));

        var rowRange = new ShardRange(rows / 2, rows / 4);
        var rowsGot = new byte[rowRange.Count * width];
        WeightUploader.ReadSliceCodes(ck, t, new WeightUploader.Slice(rowRange), 0, rowsGot, rowsGot.Length);
        Assert.That(rowsGot, Is.EqualTo(Window(whole, width, rowRange, new ShardRange(0, width))));
    }

    [Test]
    public void AWindowOutsideTheTensorNamesIt()
    {
        var (ck, dir) = Checkpoint(QuantizedConfigs.Awq(groupSize: 64), seed: 7);
        using var _ = dir;
        using var __ = ck;
        TensorInfo t = ck.Get("model.layers.0.self_attn.o_proj.qweight");
        var e = Assert.Throws<WeightsException>(() => WeightUploader.ReadWindow(ck, t, new ShardRange(0, (int)t.Shape[0] + 1), new ShardRange(0, 1), new byte[4 * ((int)t.Shape[0] + 1)]))!;
        Assert.That(e.Message, Does.Contain("o_proj.qweight"));
        Assert.Throws<InvalidOperationException>(() =>
            WeightUploader.ReadSliceCodes(ck, ck.Get("model.layers.0.mlp.down_proj.qweight"), new WeightUploader.Slice(new ShardRange(0, 8), Columns: true), 0, new byte[12], 12),
            "a column-slice chunk must be whole rows");
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Weights;
using QwQ.Cuda.Weights.Quantization;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Streams a safetensors checkpoint to the device: each tensor is read from the file with positional reads straight
/// into one of two pinned staging buffers (bf16 as stored; fp16/fp32 read in chunks and converted) while the other
/// is copied to the GPU, so disk reads overlap host→device copies. Host memory stays at 2 × 64 MiB, however large the
/// model. A file that shrinks during the load fails with a WeightsException naming file and tensor, never uploads
/// garbage. q/k/v and gate/up land side by side in their fused device matrices. When the model's linear weights are
/// fp8, plain rows (--quantize fp8, or a layer an FP8 checkpoint left unquantized) go through a device bf16 scratch
/// and are quantized on the GPU into place, and an FP8 checkpoint's codes are repacked there into the kernels' tile
/// layout with their scales beside. int4 works the same way: plain rows (--quantize int4) are quantized on the GPU, and
/// an AWQ layer's qweight, qzeros and scales are staged whole in the device scratch and repacked into the int4 layout.
/// No full-size copy exists anywhere. With tensor parallel each GPU loads only its slice of every sharded tensor
/// (<see cref="Slice"/>): row slices are read as they lie in the file; column slices (o_proj, down_proj) are read a few
/// whole rows at a time and compacted in the pinned buffer before the copy.
/// </summary>
internal static class WeightUploader
{
    private const int StagingBytes = 64 << 20;

    /// <summary>
    /// Where a checkpoint tensor goes: <see cref="Dst"/> for bf16 data, or rows from <see cref="Row"/> of a
    /// quantized <see cref="Linear"/> (its weight and scales at that row).
    /// </summary>
    /// <see cref="Awq"/>: the layer's AWQ tensors, when the checkpoint stores it so (then <see cref="Name"/> is not in it).
    /// <see cref="Slice"/>: the part of the tensor this GPU holds (tensor parallel), or null for all of it.
    internal readonly record struct Place(string Name, ulong Dst, LinearWeight? Linear = null, int Row = 0, AwqLinearTensors? Awq = null,
        Slice? Slice = null);

    /// <summary>
    /// A tensor-parallel rank's part of a checkpoint tensor: rows [Start, Start + Count) of its first dimension (for a
    /// 1-D tensor, its elements), or with <see cref="Columns"/> those columns of every row of a 2-D tensor.
    /// </summary>
    internal readonly record struct Slice(ShardRange Range, bool Columns = false);

    /// <summary>Kernels that write quantized weights: one per quantized kind the model has, else null.</summary>
    internal readonly record struct Quantizers(Fp8Ops? Fp8, Int4Ops? Int4);

    /// <summary>Where each checkpoint tensor goes on the device, in checkpoint load order.</summary>
    internal static List<Place> Placement(ModelConfig c, ModelWeights w) => Placement(c, w, plan: null, rank: 0);

    /// <summary>
    /// Where each checkpoint tensor goes on rank <paramref name="rank"/>'s device: with a <paramref name="plan"/> only
    /// the rank's slices (<see cref="TensorParallelPlan"/>), into the rank's smaller fused matrices.
    /// </summary>
    internal static List<Place> Placement(ModelConfig c, ModelWeights w, TensorParallelPlan? plan, int rank)
    {
        ModelConfig shard = plan?.Shape.Config ?? c;
        int q = shard.QDim, kv = shard.KvDim, inter = shard.IntermediateSize;
        Slice? RowsOf(ShardRange range) => plan is null ? null : new Slice(range);
        Slice? ColumnsOf(ShardRange range) => plan is null ? null : new Slice(range, Columns: true);
        Slice? qRows = RowsOf(plan?.QRows(rank) ?? default), kvRows = RowsOf(plan?.KvRows(rank) ?? default);
        Slice? mlpRows = RowsOf(plan?.Intermediate(rank) ?? default);
        Slice? oColumns = ColumnsOf(plan?.QRows(rank) ?? default), downColumns = ColumnsOf(plan?.Intermediate(rank) ?? default);
        // AWQ layers by their .weight name, which the checkpoint does not have (it has .qweight, .qzeros, .scales).
        var awq = QuantizedTensorNames.Linears(c).OfType<AwqLinearTensors>().ToDictionary(l => TensorNames.Weight(l.Module));
        // Row r of a linear weight: a byte offset for bf16; for a quantized kind the rows are quantized into place.
        Place Rows(string name, LinearWeight lw, int row, Slice? slice) =>
            lw.Kind == WeightKind.Bf16 ? new Place(name, lw.Weight + (ulong)(2L * row * lw.In), Slice: slice)
                                       : new Place(name, 0, lw, row, awq.GetValueOrDefault(name), slice);
        Place Vector(string name, ulong dst, Slice? slice = null) => new(name, dst, Slice: slice);
        var list = new List<Place> { Vector(TensorNames.Embedding, w.Embedding) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            LayerWeights l = w.Layers[i];
            list.Add(Vector(TensorNames.InputNorm(i), l.InputNorm));
            list.Add(Rows(TensorNames.QWeight(i), l.Qkv, 0, qRows));
            list.Add(Rows(TensorNames.KWeight(i), l.Qkv, q, kvRows));
            list.Add(Rows(TensorNames.VWeight(i), l.Qkv, q + kv, kvRows));
            list.Add(Vector(TensorNames.QBias(i), l.QkvBias, qRows));
            list.Add(Vector(TensorNames.KBias(i), l.QkvBias + (ulong)(2L * q), kvRows));
            list.Add(Vector(TensorNames.VBias(i), l.QkvBias + (ulong)(2L * (q + kv)), kvRows));
            list.Add(Rows(TensorNames.OWeight(i), l.O, 0, oColumns));
            list.Add(Vector(TensorNames.PostAttentionNorm(i), l.PostNorm));
            list.Add(Rows(TensorNames.GateWeight(i), l.GateUp, 0, mlpRows));
            list.Add(Rows(TensorNames.UpWeight(i), l.GateUp, inter, mlpRows));
            list.Add(Rows(TensorNames.DownWeight(i), l.Down, 0, downColumns));
        }
        list.Add(Vector(TensorNames.FinalNorm, w.FinalNorm));
        // A rank's vocabulary rows of lm_head (of the embedding, when tied); the last rank's padding rows stay zero.
        if (plan is not null) list.Add(Rows(c.TieWordEmbeddings ? TensorNames.Embedding : TensorNames.LmHead, w.LmHead, 0, RowsOf(plan.Vocab(rank))));
        else if (!c.TieWordEmbeddings) list.Add(Rows(TensorNames.LmHead, w.LmHead, 0, null));
        return list;
    }

    public static void Upload(SafetensorsCheckpoint ck, ModelConfig c, ModelWeights w, CudaStream stream,
        Quantizers quantizers, DeviceBuffer? scratch, IProgress<LoadProgress>? progress, CancellationToken ct,
        TensorParallelPlan? plan = null, int rank = 0)
    {
        var placement = Placement(c, w, plan, rank);
        Fp8Ops? fp8 = quantizers.Fp8;
        // Progress counts bf16-equivalent bytes, so every kind of checkpoint reports the same total.
        long Elements(Place p)
        {
            if (p.Awq is not { } a) return SliceElements(ck.Get(p.Name), p.Slice);
            var (outs, ins) = AwqWindow(p, a);
            return (long)outs.Count * ins.Count;
        }
        long total = placement.Sum(p => Elements(p) * 2), done = 0;
        using var stageA = PinnedHostBuffer.Allocate(StagingBytes);
        using var stageB = PinnedHostBuffer.Allocate(StagingBytes);
        using var freeA = CudaEvent.Create(timing: false);
        using var freeB = CudaEvent.Create(timing: false);
        freeA.Record(stream);
        freeB.Record(stream);
        int slot = 0;
        // The two pinned buffers take turns: one is filled from disk while the GPU copies out of the other.
        PinnedHostBuffer Acquire()
        {
            (slot == 0 ? freeA : freeB).Synchronize(); // the GPU has finished copying out of this buffer
            return slot == 0 ? stageA : stageB;
        }
        void Release()
        {
            (slot == 0 ? freeA : freeB).Record(stream);
            slot ^= 1;
        }
        // Copies the window [rows] × [columns] of a 2-D tensor's raw elements, compacted, to the device scratch at
        // byteOffset through the staging buffers, as many whole rows at a time as fit one.
        void StageWindow(TensorInfo t, ShardRange rows, ShardRange columns, long byteOffset)
        {
            int size = t.DType.ElementSize();
            long rowBytes = (long)columns.Count * size;
            int perChunk = (int)Math.Max(1, StagingBytes / rowBytes);
            for (int r = 0; r < rows.Count; r += perChunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(perChunk, rows.Count - r);
                var stage = Acquire();
                ReadWindow(ck, t, new ShardRange(rows.Start + r, n), columns, stage.AsSpan<byte>()[..(int)(n * rowBytes)]);
                scratch!.CopyFromHostAsync(stage.Ptr, n * rowBytes, byteOffset + r * rowBytes, stream);
                Release();
            }
        }
        foreach (Place place in placement)
        {
            if (place.Awq is { } awqLayer)
            {
                // qweight, qzeros and scales (as fp16) side by side in the scratch, then repacked into the layer's rows.
                // With tensor parallel only this GPU's window of each: its outputs are AWQ's columns (8 per int32 of
                // qweight and qzeros), its inputs AWQ's rows (whole groups of them for qzeros and scales).
                LinearWeight int4 = place.Linear!.Value;
                int group = awqLayer.GroupSize;
                var (outs, ins) = AwqWindow(place, awqLayer);
                if (outs.Start % 8 != 0 || outs.Count % 8 != 0 || ins.Start % group != 0 || ins.Count % group != 0)
                    throw new InvalidOperationException($"{awqLayer.Module}: outputs {outs} and inputs {ins} do not fall on AWQ's packing and groups");
                ShardRange words = new(outs.Start / 8, outs.Count / 8), groups = new(ins.Start / group, ins.Count / group);
                TensorInfo qweight = ck.Get(awqLayer.QWeight), qzeros = ck.Get(awqLayer.QZeros);
                long zerosAt = Align(4L * ins.Count * words.Count), scalesAt = zerosAt + Align(4L * groups.Count * words.Count);
                float[] scales32 = ck.ReadFloat32(awqLayer.Scales); // [groups, out]: fp16 in AutoAWQ's files, bf16/fp32 accepted
                int scaleCount = groups.Count * outs.Count;
                if (scratch is null || scalesAt + 2L * scaleCount > scratch.Bytes || 2L * scaleCount > StagingBytes)
                    throw new InvalidOperationException($"the AWQ tensors of {awqLayer.Module} do not fit the staging buffers");
                StageWindow(qweight, ins, words, 0);
                StageWindow(qzeros, groups, words, zerosAt);
                var stage = Acquire();
                Span<Half> scales16 = stage.AsSpan<Half>()[..scaleCount];
                for (int g = 0; g < groups.Count; g++)
                    for (int col = 0; col < outs.Count; col++)
                        scales16[g * outs.Count + col] = (Half)scales32[(groups.Start + g) * awqLayer.OutFeatures + outs.Start + col]; // exact for fp16 files
                scratch.CopyFromHostAsync(stage.Ptr, 2L * scaleCount, scalesAt, stream);
                Release();
                quantizers.Int4!.RepackAwq(stream, scratch.Ptr, scratch.Ptr + (ulong)zerosAt, scratch.Ptr + (ulong)scalesAt, int4.Weight, int4.Scales,
                    place.Row, outs.Count, int4.Out, int4.In, group);
                done += 2L * outs.Count * ins.Count;
                progress?.Report(new LoadProgress("weights", done, total, awqLayer.Module));
                continue;
            }
            TensorInfo t = ck.Get(place.Name);
            long elements = SliceElements(t, place.Slice);
            // Quantized rows are staged whole, as many as fit the pinned buffer and the device scratch.
            int size = t.DType == DType.F8_E4M3 ? 1 : 2; // bytes per element in the staging buffers
            if (size == 1 && place.Linear is not { Kind: WeightKind.Fp8 })
                throw new WeightsException($"{t.FilePath}: tensor '{place.Name}' is F8_E4M3 but this engine stores it as {place.Linear?.Kind.ToString() ?? "bf16"}");
            long step = place.Linear is { } lw ? Math.Min(StagingBytes, scratch?.Bytes ?? 0) / size / lw.In * lw.In : StagingBytes / 2;
            // A column slice is read as whole rows and compacted in the stage: a step is whole rows that fit it in full.
            long fullRow = t.Shape.Length == 2 ? t.Shape[1] : 1;
            if (place.Slice is { Columns: true } cols) step = Math.Min(step / cols.Range.Count, StagingBytes / size / fullRow) * cols.Range.Count;
            if (step <= 0) throw new InvalidOperationException($"a row of {place.Name} does not fit the staging buffers");
            for (long off = 0; off < elements; off += step)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(step, elements - off);
                var stage = Acquire();
                if (t.DType == DType.F8_E4M3) ReadSliceCodes(ck, t, place.Slice, off, stage.AsSpan<byte>(), n); // fp8 codes as stored
                else ReadSliceAsBf16(ck, t, place.Slice, off, stage.AsSpan<ushort>(), n); // disk/page cache → pinned, bf16
                if (place.Linear is { } coded && t.DType == DType.F8_E4M3)
                {
                    // an FP8 checkpoint's codes: pinned → device scratch (row-major) → repacked into the tile layout
                    scratch!.CopyFromHostAsync(stage.Ptr, n, 0, stream);
                    fp8!.RepackRows(stream, scratch.Ptr, coded.Weight, place.Row + (int)(off / coded.In), n / coded.In, coded.In);
                }
                else if (place.Linear is { } linear)
                {
                    // pinned → device scratch (bf16 rows) → quantized into the weight's rows, with their scales
                    scratch!.CopyFromHostAsync(stage.Ptr, 2L * n, 0, stream);
                    int row = place.Row + (int)(off / linear.In), rows = n / linear.In;
                    QuantizeRows(quantizers, stream, linear, scratch.Ptr, row, rows);
                }
                else
                {
                    w.CopyFromHostAsync(place.Dst + (ulong)(2 * off), stage.Ptr, 2L * n, stream);
                }
                Release();
                done += 2L * n;
                progress?.Report(new LoadProgress("weights", done, total, place.Name));
            }
            if (t.DType == DType.F8_E4M3 && place.Linear is { } scaled)
            {
                // its scales: one per output row ([out, 1]), or one for the whole tensor ([1] or []), as fp32; this
                // GPU's rows of them (a column slice keeps every row, and each row's scale)
                string scaleName = QuantizedTensorNames.WeightScale(place.Name[..^TensorNames.WeightSuffix.Length]);
                int rows = (int)(elements / scaled.In), firstRow = place.Slice is { Columns: false } rowSlice ? rowSlice.Range.Start : 0;
                float[] file = ck.ReadFloat32(scaleName);
                var stage = Acquire();
                Span<float> scales = stage.AsSpan<float>()[..rows];
                if (file.Length == t.Shape[0]) file.AsSpan(firstRow, rows).CopyTo(scales);
                else scales.Fill(file[0]);
                w.CopyFromHostAsync(scaled.Scales + (ulong)(4L * place.Row), stage.Ptr, 4L * rows, stream);
                Release();
            }
        }
        stream.Synchronize();
    }

    private static long Align(long bytes) => (bytes + 255) / 256 * 256;

    /// <summary>The outputs (a row slice) and inputs (a column slice) of an AWQ layer this GPU holds; all of either by default.</summary>
    private static (ShardRange Outputs, ShardRange Inputs) AwqWindow(Place place, AwqLinearTensors awq) =>
        (place.Slice is { Columns: false } o ? o.Range : new ShardRange(0, awq.OutFeatures),
         place.Slice is { Columns: true } i ? i.Range : new ShardRange(0, awq.InFeatures));

    /// <summary>The first element of a row slice of <paramref name="t"/>: its first row times the elements per row.</summary>
    private static long RowSliceStart(TensorInfo t, Slice rows) => rows.Range.Start * (t.ElementCount / t.Shape[0]);

    /// <summary>Elements of <paramref name="t"/> in <paramref name="slice"/> (all of them without one).</summary>
    internal static long SliceElements(TensorInfo t, Slice? slice)
    {
        if (slice is not { } sl) return t.ElementCount;
        if (sl.Columns)
        {
            if (t.Shape.Length != 2 || sl.Range.End > t.Shape[1])
                throw new WeightsException($"{t.FilePath}: tensor '{t.Name}' {t.ShapeText} has no columns {sl.Range} to shard");
            return t.Shape[0] * sl.Range.Count;
        }
        if (t.Shape.Length == 0 || sl.Range.End > t.Shape[0])
            throw new WeightsException($"{t.FilePath}: tensor '{t.Name}' {t.ShapeText} has no rows {sl.Range} to shard");
        return t.ElementCount / t.Shape[0] * sl.Range.Count;
    }

    /// <summary>
    /// The window [rows] × [columns] of the 2-D tensor <paramref name="t"/>, as stored, into <paramref name="dst"/>
    /// (rows.Count × columns.Count elements, row-major): one read when the window is whole rows, else one per row.
    /// </summary>
    internal static void ReadWindow(SafetensorsCheckpoint ck, TensorInfo t, ShardRange rows, ShardRange columns, Span<byte> dst)
    {
        if (t.Shape.Length != 2 || rows.End > t.Shape[0] || columns.End > t.Shape[1] || rows.Start < 0 || columns.Start < 0)
            throw new WeightsException($"{t.FilePath}: tensor '{t.Name}' {t.ShapeText} has no window of rows {rows} and columns {columns}");
        int size = t.DType.ElementSize();
        long width = t.Shape[1], rowBytes = (long)columns.Count * size;
        if (dst.Length != rows.Count * rowBytes) throw new ArgumentException($"the window needs {rows.Count * rowBytes} bytes, not {dst.Length}", nameof(dst));
        if (columns.Count == width)
        {
            ck.Read(t, rows.Start * width * size, dst);
            return;
        }
        for (int r = 0; r < rows.Count; r++)
            ck.Read(t, ((rows.Start + r) * width + columns.Start) * size, dst.Slice((int)(r * rowBytes), (int)rowBytes));
    }

    /// <summary>Elements [<paramref name="off"/>, off + <paramref name="n"/>) of the slice of a 1-byte tensor (fp8 codes) into <paramref name="stage"/>.</summary>
    internal static void ReadSliceCodes(SafetensorsCheckpoint ck, TensorInfo t, Slice? slice, long off, Span<byte> stage, int n)
    {
        switch (slice)
        {
            case null:
                ck.Read(t, off, stage[..n]);
                break;
            case { Columns: false } rows:
                ck.Read(t, RowSliceStart(t, rows) + off, stage[..n]);
                break;
            case { Columns: true } cols:
                int count = cols.Range.Count;
                if (n % count != 0 || off % count != 0) throw new InvalidOperationException($"{t.Name}: a column-slice chunk must be whole rows");
                ReadWindow(ck, t, new ShardRange((int)(off / count), n / count), cols.Range, stage[..n]);
                break;
        }
    }

    /// <summary>
    /// Elements [<paramref name="off"/>, off + <paramref name="n"/>) of the slice of <paramref name="t"/>, as bf16, into
    /// the start of <paramref name="stage"/>. A column slice's chunk is whole rows: they are read in full, then each row's
    /// columns are moved down over the rest (left to right, so nothing is overwritten before it is moved).
    /// </summary>
    internal static void ReadSliceAsBf16(SafetensorsCheckpoint ck, TensorInfo t, Slice? slice, long off, Span<ushort> stage, int n)
    {
        switch (slice)
        {
            case null:
                ck.CopyAsBf16(t, stage[..n], off);
                break;
            case { Columns: false } rows:
                ck.CopyAsBf16(t, stage[..n], RowSliceStart(t, rows) + off);
                break;
            case { Columns: true } cols:
                int count = cols.Range.Count, full = (int)t.Shape[1], rowCount = n / count;
                if ((long)rowCount * count != n) throw new InvalidOperationException($"{t.Name}: a column-slice chunk must be whole rows");
                ck.CopyAsBf16(t, stage[..(rowCount * full)], off / count * full);
                for (int r = 0; r < rowCount; r++) stage.Slice(r * full + cols.Range.Start, count).CopyTo(stage.Slice(r * count, count));
                break;
        }
    }

    /// <summary>bf16 rows [rows, In] at <paramref name="src"/> → rows [row, row + rows) of a quantized weight.</summary>
    internal static void QuantizeRows(Quantizers q, CudaStream s, LinearWeight w, ulong src, int row, int rows)
    {
        switch (w.Kind)
        {
            case WeightKind.Fp8 when q.Fp8 is not null:
                q.Fp8.QuantizeRows(s, src, w.Weight, w.Scales, row, rows, w.In);
                break;
            case WeightKind.Int4Awq when q.Int4 is not null:
                q.Int4.QuantizeRows(s, src, w.Weight, w.Scales, row, rows, w.Out, w.In, w.Group);
                break;
            default:
                throw new NotSupportedException($"no quantizer for {w.Kind} weights");
        }
    }
}

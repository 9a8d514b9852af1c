using QwQ.Cuda.Config;
using QwQ.Cuda.Native;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Streams a safetensors checkpoint to the device: each tensor is read from the file with positional reads straight
/// into one of two pinned staging buffers (bf16 as stored; fp16/fp32 read in chunks and converted) while the other
/// is copied to the GPU, so disk reads overlap host→device copies. Host memory stays at 2 × 64 MiB, however large the
/// model. A file that shrinks during the load fails with a WeightsException naming file and tensor, never uploads
/// garbage. q/k/v and gate/up land side by side in their fused device matrices.
/// </summary>
internal static class WeightUploader
{
    private const int StagingBytes = 64 << 20;

    /// <summary>Where each checkpoint tensor goes on the device, in checkpoint load order.</summary>
    internal static List<(string Name, ulong Dst)> Placement(ModelConfig c, ModelWeights w)
    {
        long h = c.HiddenSize, q = c.QDim, kv = c.KvDim, inter = c.IntermediateSize;
        var list = new List<(string, ulong)> { (TensorNames.Embedding, w.Embedding) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            LayerWeights l = w.Layers[i];
            list.Add((TensorNames.InputNorm(i), l.InputNorm));
            list.Add((TensorNames.QWeight(i), l.Qkv.Weight));
            list.Add((TensorNames.KWeight(i), l.Qkv.Weight + (ulong)(2 * q * h)));
            list.Add((TensorNames.VWeight(i), l.Qkv.Weight + (ulong)(2 * (q + kv) * h)));
            list.Add((TensorNames.QBias(i), l.QkvBias));
            list.Add((TensorNames.KBias(i), l.QkvBias + (ulong)(2 * q)));
            list.Add((TensorNames.VBias(i), l.QkvBias + (ulong)(2 * (q + kv))));
            list.Add((TensorNames.OWeight(i), l.O.Weight));
            list.Add((TensorNames.PostAttentionNorm(i), l.PostNorm));
            list.Add((TensorNames.GateWeight(i), l.GateUp.Weight));
            list.Add((TensorNames.UpWeight(i), l.GateUp.Weight + (ulong)(2 * inter * h)));
            list.Add((TensorNames.DownWeight(i), l.Down.Weight));
        }
        list.Add((TensorNames.FinalNorm, w.FinalNorm));
        if (!c.TieWordEmbeddings) list.Add((TensorNames.LmHead, w.LmHead.Weight));
        return list;
    }

    public static void Upload(SafetensorsCheckpoint ck, ModelConfig c, ModelWeights w, CudaStream stream,
        IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        var placement = Placement(c, w);
        long total = placement.Sum(p => ck.Get(p.Name).ElementCount * 2), done = 0;
        using var stageA = PinnedHostBuffer.Allocate(StagingBytes);
        using var stageB = PinnedHostBuffer.Allocate(StagingBytes);
        using var freeA = CudaEvent.Create(timing: false);
        using var freeB = CudaEvent.Create(timing: false);
        freeA.Record(stream);
        freeB.Record(stream);
        int slot = 0;
        foreach (var (name, dst) in placement)
        {
            TensorInfo t = ck.Get(name);
            long elements = t.ElementCount;
            for (long off = 0; off < elements; off += StagingBytes / 2)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(StagingBytes / 2, elements - off);
                var (stage, free) = slot == 0 ? (stageA, freeA) : (stageB, freeB);
                free.Synchronize();                              // the GPU has finished copying out of this buffer
                ck.CopyAsBf16(t, stage.AsSpan<ushort>()[..n], off); // disk/page cache → pinned: bf16 in one read, fp16/fp32 converted in chunks
                w.CopyFromHostAsync(dst + (ulong)(2 * off), stage.Ptr, 2L * n, stream);
                free.Record(stream);
                slot ^= 1;
                done += 2L * n;
                progress?.Report(new LoadProgress("weights", done, total, name));
            }
        }
        stream.Synchronize();
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sharding;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Random weights generated on the GPU, so any config — the full QwQ-32B included — runs and is benchmarked
/// without its 65.5 GB checkpoint. Seeded and at a realistic scale: matrices and biases N(0, 0.02) (the
/// release's initializer_range), norm weights N(1, 0.02). Generation runs at device bandwidth (~1 s at 32B).
/// </summary>
internal static class SyntheticWeights
{
    private const float Std = 0.02f;

    /// <summary>
    /// Fills every weight. Quantized linear weights are generated in bf16 into <paramref name="scratch"/> (the same
    /// values a bf16 model with this seed gets) and quantized into place, so quantized and bf16 runs compare weight for weight.
    /// With a tensor-parallel <paramref name="plan"/>, rank <paramref name="rank"/> generates exactly its slices of the
    /// tensors one GPU would generate with this seed (each tensor is a pure function of its seed and element index), so
    /// sharded and single-GPU runs compare logit for logit.
    /// </summary>
    public static void Fill(ModelWeights w, ModelConfig c, InitOps init, WeightUploader.Quantizers quantizers, DeviceBuffer? scratch, CudaStream s, ulong seed,
        IProgress<LoadProgress>? progress, CancellationToken ct, TensorParallelPlan? plan = null, int rank = 0)
    {
        long total = w.Bytes, done = 0;
        ulong next = 0;
        ulong Seed(ulong index) => unchecked(seed * 0x9E3779B97F4A7C15UL + index);
        void Report(long elements, string what)
        {
            done += 2 * elements;
            progress?.Report(new LoadProgress("synthetic", Math.Min(done, total), total, what));
        }
        void Normal(ulong ptr, long count, float mean, string what)
        {
            init.FillNormalBf16(s, ptr, count, Seed(next++), mean, Std);
            Report(count, what);
        }
        // One tensor of [rows, cols] on one GPU: all of it; on a rank, its row blocks (in order) or its column block.
        void Tensor(ulong dst, int rows, int cols, float mean, string what, ShardRange[]? rowBlocks = null, ShardRange? columns = null)
        {
            if (rowBlocks is null && columns is null)
            {
                Normal(dst, (long)rows * cols, mean, what);
                return;
            }
            ulong tensorSeed = Seed(next++);
            if (columns is { } c0)
            {
                init.FillNormalWindowBf16(s, dst, rows, c0.Count, cols, 0, c0.Start, tensorSeed, mean, Std);
                Report((long)rows * c0.Count, what);
                return;
            }
            foreach (ShardRange block in rowBlocks!)
            {
                init.FillNormalWindowBf16(s, dst, block.Count, cols, cols, block.Start, 0, tensorSeed, mean, Std);
                dst += (ulong)(2L * block.Count * cols);
                Report((long)block.Count * cols, what);
            }
        }
        void Linear(LinearWeight lw, int fullOut, int fullIn, string what, ShardRange[]? rowBlocks = null, ShardRange? columns = null)
        {
            if (lw.Kind == WeightKind.Bf16)
            {
                Tensor(lw.Weight, fullOut, fullIn, 0, what, rowBlocks, columns);
                return;
            }
            Tensor(scratch!.Ptr, fullOut, fullIn, 0, what, rowBlocks, columns);
            WeightUploader.QuantizeRows(quantizers, s, lw, scratch.Ptr, 0, lw.Out);
        }

        int h = c.HiddenSize, d = c.HeadDim, nq = c.NumAttentionHeads, nkv = c.NumKeyValueHeads, inter = c.IntermediateSize;
        // A rank's rows of the fused q|k|v and gate|up tensors, and its columns of o_proj and down_proj (null: all).
        ShardRange[]? qkvRows = null, gateUpRows = null;
        ShardRange? oColumns = null, downColumns = null, vocabRows = null;
        if (plan is not null)
        {
            ShardRange q = plan.QRows(rank), kv = plan.KvRows(rank), mlp = plan.Intermediate(rank);
            qkvRows = [q, kv with { Start = nq * d + kv.Start }, kv with { Start = (nq + nkv) * d + kv.Start }];
            gateUpRows = [mlp, mlp with { Start = inter + mlp.Start }];
            (oColumns, downColumns, vocabRows) = (q, mlp, plan.Vocab(rank));
        }

        ulong embeddingSeedIndex = next;
        Normal(w.Embedding, (long)c.VocabSize * h, 0, "embed_tokens");
        for (int i = 0; i < w.Layers.Length; i++)
        {
            ct.ThrowIfCancellationRequested();
            LayerWeights l = w.Layers[i];
            string layer = $"layer {i}";
            Normal(l.InputNorm, h, 1, layer);
            Linear(l.Qkv, c.QkvDim, h, layer, qkvRows);
            Tensor(l.QkvBias, c.QkvDim, 1, 0, layer, qkvRows);
            Linear(l.O, h, c.QDim, layer, columns: oColumns);
            Normal(l.PostNorm, h, 1, layer);
            Linear(l.GateUp, 2 * inter, h, layer, gateUpRows);
            Linear(l.Down, h, inter, layer, columns: downColumns);
            s.Synchronize(); // bounded queue, and progress that means something
        }
        Normal(w.FinalNorm, h, 1, "norm");
        if (vocabRows is { } vocab)
        {
            // a rank's vocabulary rows of lm_head (of the embedding, when tied); the caller zeroes the last rank's padding rows
            if (c.TieWordEmbeddings) next = embeddingSeedIndex;
            Tensor(w.LmHead.Weight, c.VocabSize, h, 0, "lm_head", [vocab]);
        }
        else if (!c.TieWordEmbeddings) Linear(w.LmHead, c.VocabSize, h, "lm_head");
        s.Synchronize();
        progress?.Report(new LoadProgress("synthetic", total, total));
    }
}

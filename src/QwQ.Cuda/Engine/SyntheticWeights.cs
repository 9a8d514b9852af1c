using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

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
    /// </summary>
    public static void Fill(ModelWeights w, ModelConfig c, InitOps init, WeightUploader.Quantizers quantizers, DeviceBuffer? scratch, CudaStream s, ulong seed,
        IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        long total = w.Bytes, done = 0;
        ulong next = 0;
        void Normal(ulong ptr, long count, float mean, string what)
        {
            init.FillNormalBf16(s, ptr, count, unchecked(seed * 0x9E3779B97F4A7C15UL + next++), mean, Std);
            done += 2 * count;
            progress?.Report(new LoadProgress("synthetic", Math.Min(done, total), total, what));
        }

        void Linear(LinearWeight lw, string what)
        {
            if (lw.Kind == WeightKind.Bf16)
            {
                Normal(lw.Weight, (long)lw.Out * lw.In, 0, what);
                return;
            }
            Normal(scratch!.Ptr, (long)lw.Out * lw.In, 0, what);
            WeightUploader.QuantizeRows(quantizers, s, lw, scratch.Ptr, 0, lw.Out);
        }

        Normal(w.Embedding, (long)c.VocabSize * c.HiddenSize, 0, "embed_tokens");
        for (int i = 0; i < w.Layers.Length; i++)
        {
            ct.ThrowIfCancellationRequested();
            LayerWeights l = w.Layers[i];
            string layer = $"layer {i}";
            Normal(l.InputNorm, c.HiddenSize, 1, layer);
            Linear(l.Qkv, layer);
            Normal(l.QkvBias, c.QkvDim, 0, layer);
            Linear(l.O, layer);
            Normal(l.PostNorm, c.HiddenSize, 1, layer);
            Linear(l.GateUp, layer);
            Linear(l.Down, layer);
            s.Synchronize(); // bounded queue, and progress that means something
        }
        Normal(w.FinalNorm, c.HiddenSize, 1, "norm");
        if (!c.TieWordEmbeddings) Linear(w.LmHead, "lm_head");
        s.Synchronize();
        progress?.Report(new LoadProgress("synthetic", total, total));
    }
}

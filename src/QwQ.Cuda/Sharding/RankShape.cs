using QwQ.Cuda.Config;

namespace QwQ.Cuda.Sharding;

/// <summary>
/// What one GPU holds of the model. <see cref="Config"/> is the model as the GPU sees it: with tensor parallel its
/// query and KV heads and its slice of the MLP (<c>TensorParallelPlan.Shape</c>); everything else, the embedding's full
/// vocabulary included, as the model has it. <see cref="LmHeadRows"/>: its lm_head rows, the width of its logits
/// (⌈vocab / ranks⌉; the whole vocabulary on one GPU). The device buffers of the engine are sized from this alone.
/// </summary>
internal sealed record RankShape(ModelConfig Config, int Ranks, int LmHeadRows)
{
    /// <summary>The whole model on one GPU.</summary>
    public static RankShape Whole(ModelConfig c) => new(c, 1, c.VocabSize);

    public bool IsSharded => Ranks > 1;
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;

namespace QwQ.Cuda.Tests.Reference;

/// <summary>
/// What the adaptive-YaRN tests of both backends compare with: the tiny-yarn fixture (original_max_position_embeddings
/// 16, so sequences cross the switch within a few dozen tokens) and its two fp32 references, with the config's YaRN at
/// every position and built without rope_scaling (the model as trained before YaRN).
/// </summary>
internal static class AdaptiveYarnReferences
{
    public const string FixtureName = "tiny-yarn";
    public const int Switch = 16; // tiny-yarn's original_max_position_embeddings

    public static (ModelConfig Config, CpuWeights Weights) Fixture => ModelFixtures.Load(FixtureName);

    /// <summary>Reference with the config's YaRN at every position.</summary>
    public static readonly Lazy<Qwen2CpuModel> StaticYarn = new(() => new Qwen2CpuModel(Fixture.Config, Fixture.Weights));

    /// <summary>Reference built without rope_scaling.</summary>
    public static readonly Lazy<Qwen2CpuModel> NoYarn = new(() => new Qwen2CpuModel(Fixture.Config with { RopeScaling = null }, Fixture.Weights));

    /// <summary>The reference's logits of the last of <paramref name="tokens"/>, over the whole sequence from position 0.</summary>
    public static float[] LastLogits(Qwen2CpuModel model, ReadOnlySpan<int> tokens)
    {
        int v = model.Config.VocabSize;
        return model.Forward(tokens).AsSpan((tokens.Length - 1) * v, v).ToArray();
    }

    /// <summary>A sequence's logits of its last position.</summary>
    public static float[] Last(ISequence s)
    {
        var l = new float[Fixture.Config.VocabSize];
        s.CopyLastLogits(l);
        return l;
    }
}

using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>The tiny-gqa fixture model (vocab 256, 256 positions) on the CPU backend, and reference runs of one sequence alone.</summary>
internal static class BatchingFixtures
{
    public const string Model = "tiny-gqa";

    public static CpuReferenceBackend Backend(int? kvPoolPositions = null)
    {
        var (config, weights) = ModelFixtures.Load(Model);
        return new CpuReferenceBackend(config, weights, samplerSeed: 11, kvPoolPositions: kvPoolPositions);
    }

    public static Qwen2CpuModel CpuModel()
    {
        var (config, weights) = ModelFixtures.Load(Model);
        return new Qwen2CpuModel(config, weights);
    }

    public static int[] Tokens(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => rng.Next(256))];
    }

    public static float[] Logits(ISequence s)
    {
        var l = new float[ModelFixtures.Load(Model).Config.VocabSize];
        s.CopyLastLogits(l);
        return l;
    }

    /// <summary>‖actual − reference‖ / ‖reference‖ in double; fails on a zero or non-finite reference.</summary>
    public static double RelErr(ReadOnlySpan<float> actual, ReadOnlySpan<float> reference)
    {
        Assert.That(actual.Length, Is.EqualTo(reference.Length));
        double diff = 0, norm = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            double d = (double)actual[i] - reference[i];
            diff += d * d;
            norm += (double)reference[i] * reference[i];
        }
        Assert.That(norm, Is.GreaterThan(0).And.LessThan(double.PositiveInfinity), "reference logits must be finite and non-zero");
        double rel = Math.Sqrt(diff / norm);
        Assert.That(double.IsNaN(rel), Is.False, "NaN in the compared logits");
        return rel;
    }

    /// <summary>
    /// What the scheduler does for one request, on a fresh sequence alone: append the prompt, then sample (step =
    /// tokens sampled so far) and append until eos, the token limit or a full sequence.
    /// </summary>
    public static List<int> GenerateAlone(IModelBackend backend, int[] prompt, SamplingOptions sampling, int maxNew, int[] eos)
    {
        using var seq = backend.CreateSequence();
        seq.ResetPenalties();
        seq.Append(prompt);
        var tokens = new List<int>();
        while (true)
        {
            int t = seq.Sample(sampling, tokens.Count);
            tokens.Add(t);
            if (eos.Contains(t) || tokens.Count >= maxNew || seq.Length >= seq.Capacity) return tokens;
            seq.Append([t]);
        }
    }
}

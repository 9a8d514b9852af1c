using QwQ.Cuda.Batching;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Reference;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>
/// A sequence whose logits hold no number (NaN weights, here reached through one token's embedding, so the other
/// sequences of the same model stay sound) has no token to sample. The GPU sampler used to pick id 0 (greedy) or a
/// uniform draw over the vocabulary (sampling) without a word. Now, on both backends, a batched sample gives that row
/// <see cref="-1"/> and counts nothing, the other rows are sampled exactly as alone, the sequence's
/// own Sample says the model's logits are NaN, and the scheduler fails that request alone.
/// </summary>
[NonParallelizable]
public class NoTokenLeftTests
{
    private const int Poisoned = 13; // its embedding row is NaN

    private static readonly SamplingOptions Greedy = SamplingOptions.Greedy;
    private static readonly SamplingOptions Sampled = new() { Temperature = 0.6f, TopP = 0.95f, TopK = 40, Seed = 5 };
    private static readonly SamplingOptions Penalised = Greedy with { PresencePenalty = 1.5f, FrequencyPenalty = 0.5f };

    private static (ModelConfig Config, CpuWeights Weights) PoisonedModel()
    {
        var (config, weights) = ModelFixtures.Load(BatchingFixtures.Model);
        var embedding = (float[])weights.Embedding.Clone(); // the fixture's arrays are shared: never write them
        Array.Fill(embedding, float.NaN, Poisoned * config.HiddenSize, config.HiddenSize);
        return (config, new CpuWeights
        {
            Config = weights.Config, Embedding = embedding, Layers = weights.Layers, FinalNorm = weights.FinalNorm, LmHead = weights.LmHead,
        });
    }

    private static IModelBackend Load(bool gpu, TestModels.TempDir tmp)
    {
        var (config, weights) = PoisonedModel();
        if (!gpu) return new CpuReferenceBackend(config, weights, samplerSeed: 11);
        if (!QwQ.Cuda.Native.Cuda.IsAvailable(out _)) Assert.Ignore("no CUDA device");
        File.Copy(ModelFixtures.Dir(Path.Combine(BatchingFixtures.Model, "config.json")), tmp.Combine("config.json"));
        TestModels.WriteSafetensors(tmp.Combine("model.safetensors"), config, weights);
        return CudaBackend.Load(config, tmp.Path, new EngineOptions { MaxContext = 256 });
    }

    private static int[] Clean(int n, int seed) => [.. Tokens(n, seed).Select(t => t == Poisoned ? Poisoned + 1 : t)];

    private static void AssertTheModelIsBlamed(Exception e)
    {
        Assert.That(e, Is.InstanceOf<QwqException>().And.Not.InstanceOf<OptionException>(), "not the caller's options");
        Assert.That(e.Message, Does.Contain("no token can be sampled").And.Contain("NaN").And.Not.Contain("logit_bias"));
    }

    [TestCase(false), TestCase(true)]
    public void ABatchedSampleLeavesThatRowEmptyAndSamplesTheOthersAsAlone(bool gpu)
    {
        using var tmp = new TestModels.TempDir();
        using var backend = Load(gpu, tmp);
        SamplingOptions[] options = [Greedy, Greedy, Sampled, Sampled, Penalised, Penalised];
        var seqs = new List<ISequence>();
        var twins = new List<ISequence>();
        try
        {
            for (int i = 0; i < options.Length; i++)
            {
                var s = backend.CreateSequence();
                seqs.Add(s);
                s.ResetPenalties();
                int[] prompt = Clean(20 + i, seed: 700 + i);
                if (i % 2 == 1) prompt[3] = Poisoned; // every later position attends to a NaN key and value
                s.Append(prompt);
                twins.Add(s.Fork()); // same logits and penalty counts
            }
            var logits = new float[backend.Config.VocabSize];
            seqs[1].CopyLastLogits(logits);
            Assert.That(logits.All(float.IsNaN), "the poisoned prompt's logits are NaN");

            for (int step = 0; step < 2; step++)
            {
                var tokens = new int[options.Length];
                backend.Sample(seqs.Select((s, i) => new SampleRequest(s, options[i], step)).ToArray(), tokens);
                for (int i = 0; i < options.Length; i++)
                {
                    if (i % 2 == 1)
                    {
                        Assert.That(tokens[i], Is.EqualTo(SampleRequest.NoToken), $"row {i}, step {step}: a guess");
                        AssertTheModelIsBlamed(Assert.Throws<QwqException>(() => seqs[i].Sample(options[i], step))!);
                        continue;
                    }
                    // The twin counts its token alone; the next step's penalties would differ if the batch counted twice.
                    Assert.That(tokens[i], Is.EqualTo(twins[i].Sample(options[i], step)), $"row {i}, step {step}");
                    Assert.That(tokens[i], Is.Not.EqualTo(Poisoned), "the test needs the sound rows to stay sound");
                    seqs[i].Append([tokens[i]]);
                    twins[i].Append([tokens[i]]);
                }
            }
        }
        finally
        {
            foreach (var s in seqs.Concat(twins)) s.Dispose();
        }
    }

    [TestCase(false), TestCase(true)]
    public async Task TheSchedulerFailsThatRequestAloneWithTheReason(bool gpu)
    {
        using var tmp = new TestModels.TempDir();
        using var backend = Load(gpu, tmp);
        using var scheduler = new BatchScheduler(backend);
        int[] soundPrompt = Clean(30, seed: 710), poisonedPrompt = Clean(30, seed: 711);
        poisonedPrompt[5] = Poisoned;
        var expected = GenerateAlone(backend, soundPrompt, Penalised, 12, []);
        Assert.That(expected, Does.Not.Contain(Poisoned), "the test needs the sound request to stay sound");

        using var sound = backend.CreateSequence();
        using var bad = backend.CreateSequence();
        var hs = scheduler.Submit(new GenerationRequest(sound, soundPrompt, Penalised, 12, []));
        var hb = scheduler.Submit(new GenerationRequest(bad, poisonedPrompt, Penalised, 12, []));

        var e = Assert.ThrowsAsync<QwqException>(async () => await hb.Completion)!;
        AssertTheModelIsBlamed(e);
        var streamed = new List<int>();
        await foreach (int t in hs.Tokens.ReadAllAsync()) streamed.Add(t);
        Assert.That(await hs.Completion, Is.EqualTo(FinishReason.MaxTokens));
        Assert.That(streamed, Is.EqualTo(expected), "the sound request beside it gets what it gets alone");
    }
}

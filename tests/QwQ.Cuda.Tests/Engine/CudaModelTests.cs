using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Reference;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// The whole CUDA engine against transformers' goldens and against the float32 CPU reference. bf16 weights and
/// activations against an fp32 reference: logits within ‖Δ‖/‖ref‖ ≤ 2e-2.
/// </summary>
public class CudaModelTests
{
    private static readonly SamplingOptions Greedy = new() { Temperature = 0 };

    private static void RequireGpu()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
    }

    /// <summary>
    /// Mean over positions of KL(reference ‖ other) in nats between the next-token distributions of two logit tables
    /// ([positions, vocab] each, softmax of every row).
    /// </summary>
    internal static double MeanKl(ReadOnlySpan<float> reference, ReadOnlySpan<float> other, int vocab)
    {
        int positions = reference.Length / vocab;
        double kl = 0;
        for (int t = 0; t < positions; t++)
        {
            var p = reference.Slice(t * vocab, vocab);
            var q = other.Slice(t * vocab, vocab);
            double mp = double.MinValue, mq = double.MinValue;
            foreach (float x in p) mp = Math.Max(mp, x);
            foreach (float x in q) mq = Math.Max(mq, x);
            double zp = 0, zq = 0;
            for (int i = 0; i < vocab; i++) { zp += Math.Exp(p[i] - mp); zq += Math.Exp(q[i] - mq); }
            double lzp = Math.Log(zp) + mp, lzq = Math.Log(zq) + mq, sum = 0;
            for (int i = 0; i < vocab; i++)
            {
                double lp = p[i] - lzp, lq = q[i] - lzq;
                sum += Math.Exp(lp) * (lp - lq);
            }
            kl += sum / positions;
        }
        return kl;
    }

    internal static double RelErr(ReadOnlySpan<float> got, ReadOnlySpan<float> want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < want.Length; i++)
        {
            Assert.That(float.IsFinite(got[i]), $"element {i} is {got[i]}");
            double d = got[i] - want[i];
            num += d * d;
            den += (double)want[i] * want[i];
        }
        return Math.Sqrt(num / den);
    }

    internal static void WriteCheckpoint(string dir, ModelConfig config, CpuWeights weights, string configJson, string? skipTensor = null)
    {
        TestModels.WriteSafetensors(Path.Combine(dir, "model.safetensors"), config, weights, skipTensor);
        File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
    }

    /// <summary>A tiny Qwen2 config with QwQ's head ratio scaled down (10 query / 2 KV heads, head_dim 32).</summary>
    internal static string TinyConfigJson(string? ropeScaling = null) => $$"""
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":320,"intermediate_size":384,
         "num_hidden_layers":2,"num_attention_heads":10,"num_key_value_heads":2,"vocab_size":256,
         "rms_norm_eps":1e-5,"rope_theta":1000000.0,"max_position_embeddings":4096,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16","use_sliding_window":false{{(ropeScaling is null ? "" : ",\"rope_scaling\":" + ropeScaling)}}}
        """;

    private static CudaBackend LoadFixture(string model, EngineOptions? options = null)
    {
        string dir = ModelFixtures.Dir(model);
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        // static: the goldens are transformers' static YaRN (tiny-yarn would switch at 16 by default)
        return CudaBackend.Load(config, dir, options ?? new EngineOptions { MaxContext = 256, RopeScaling = RopeScalingMode.Static });
    }

    [TestCaseSource(typeof(ModelFixtures), nameof(ModelFixtures.Models))]
    public void LogitsAtEveryPositionMatchTransformers(string model)
    {
        RequireGpu();
        var goldens = ModelFixtures.ReadGoldens(model);
        using var backend = LoadFixture(model);
        foreach (var p in goldens.Prompts)
        {
            using var seq = (CudaSequence)backend.CreateSequence();
            float[] got = seq.AppendWithLogits(p.Ids, Enumerable.Range(0, p.Ids.Length).ToArray());
            float[] want = p.Logits.SelectMany(r => r).ToArray();
            double err = RelErr(got, want);
            TestContext.Out.WriteLine($"{model} prompt of {p.Ids.Length}: ‖Δ‖/‖ref‖ = {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(2e-2));
        }
    }

    [TestCaseSource(typeof(ModelFixtures), nameof(ModelFixtures.Models))]
    public void GreedyContinuationsMatchTransformers(string model)
    {
        RequireGpu();
        var goldens = ModelFixtures.ReadGoldens(model);
        using var backend = LoadFixture(model);
        foreach (var p in goldens.Prompts)
        {
            using var seq = backend.CreateSequence();
            seq.Append(p.Ids);
            var got = new List<int>();
            for (int i = 0; i < p.Greedy.Length; i++)
            {
                int tok = seq.Sample(Greedy, i);
                got.Add(tok);
                seq.Append([tok]);
            }
            TestContext.Out.WriteLine($"{model}: got  {string.Join(",", got)}\n{model}: want {string.Join(",", p.Greedy)}");
            int compared = Goldens.TokensBeforeFirstTie(p.GreedyMargins);
            Assert.That(got.Take(compared), Is.EqualTo(p.Greedy.Take(compared)), $"the {compared} greedy tokens before the first near-tie");
        }
    }

    /// <summary>
    /// A prompt on fresh random weights against the CPU reference: 67 rows run the decode batches' products (our GEMVs
    /// and the tuned cuBLASLt plans, up to 128 rows), 200 rows the prefill GEMM (cuBLAS).
    /// </summary>
    [Test]
    public void MatchesCpuReferenceOnFreshRandomWeights([Values(null, """{"type":"yarn","factor":4.0,"original_max_position_embeddings":16}""")] string? yarn,
        [Values(67, 200)] int length)
    {
        RequireGpu();
        int seed = Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        using var tmp = new TestModels.TempDir();
        string json = TinyConfigJson(ropeScaling: yarn);
        var config = ModelConfig.Parse(json, "config.json");
        var weights = CpuWeights.Random(config, seed, bf16Exact: true);
        WriteCheckpoint(tmp.Path, config, weights, json);
        var cpu = new Qwen2CpuModel(config, weights);

        using var backend = CudaBackend.Load(config, tmp.Path, new EngineOptions { MaxContext = 512 });
        var rng = new Random(seed);
        int[] tokens = Enumerable.Range(0, length).Select(_ => rng.Next(config.VocabSize)).ToArray();
        using var seq = (CudaSequence)backend.CreateSequence();
        float[] got = seq.AppendWithLogits(tokens, Enumerable.Range(0, tokens.Length).ToArray());
        float[] want = cpu.Forward(tokens);
        double err = RelErr(got, want);
        TestContext.Out.WriteLine($"‖Δ‖/‖ref‖ = {err:E2}");
        Assert.That(err, Is.LessThanOrEqualTo(2e-2));
    }

    [Test]
    public void DecodeThroughTheKvCacheEqualsFullRecompute([Values(true, false)] bool cudaGraphs)
    {
        RequireGpu();
        using var backend = LoadFixture("tiny-gqa", new EngineOptions { MaxContext = 256, UseCudaGraphs = cudaGraphs });
        var rng = new Random(Random.Shared.Next());
        int vocab = backend.Config.VocabSize;
        int[] prompt = Enumerable.Range(0, 19).Select(_ => rng.Next(vocab)).ToArray();
        int[] continuation = Enumerable.Range(0, 24).Select(_ => rng.Next(vocab)).ToArray();

        // decode: prefill the prompt, then one token at a time (graph replays); record each step's logits
        using var decode = backend.CreateSequence();
        decode.Append(prompt);
        var stepLogits = new float[continuation.Length * vocab];
        for (int i = 0; i < continuation.Length; i++)
        {
            decode.Append([continuation[i]]);
            decode.CopyLastLogits(stepLogits.AsSpan(i * vocab, vocab));
        }

        // recompute: the whole sequence in one prefill, logits at the same positions
        using var full = (CudaSequence)backend.CreateSequence();
        int[] all = [.. prompt, .. continuation];
        float[] want = full.AppendWithLogits(all, Enumerable.Range(prompt.Length, continuation.Length).ToArray());
        double err = RelErr(stepLogits, want);
        TestContext.Out.WriteLine($"decode vs recompute ‖Δ‖/‖ref‖ = {err:E2}");
        Assert.That(err, Is.LessThanOrEqualTo(1e-2));
        Assert.That(decode.Length, Is.EqualTo(all.Length));
    }

    [Test]
    public void CublasLtPrefillMatchesCublasAndTheGoldens()
    {
        RequireGpu();
        var p = ModelFixtures.ReadGoldens("tiny-gqa").Prompts[^1];
        float[] Logits(PrefillGemm gemm)
        {
            using var backend = LoadFixture("tiny-gqa", new EngineOptions { MaxContext = 256, PrefillGemm = gemm });
            using var seq = (CudaSequence)backend.CreateSequence();
            return seq.AppendWithLogits(p.Ids, Enumerable.Range(0, p.Ids.Length).ToArray());
        }
        float[] lt = Logits(PrefillGemm.CublasLt);
        Assert.That(RelErr(lt, Logits(PrefillGemm.Cublas)), Is.LessThanOrEqualTo(1e-2));
        Assert.That(RelErr(lt, p.Logits.SelectMany(r => r).ToArray()), Is.LessThanOrEqualTo(2e-2));
    }

    [Test]
    public void ModelsLoadedThroughTheFactoryNeverSamplePastTheTokenizersVocabulary()
    {
        RequireGpu();
        string dir = ModelFixtures.Dir("tiny-gqa");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        int[] prompt = [5, 17, 42, 99];
        int top;
        using (var all = LoadFixture("tiny-gqa"))
        using (var seq = all.CreateSequence())
        {
            seq.Append(prompt);
            var logits = new float[config.VocabSize];
            seq.CopyLastLogits(logits);
            top = Array.IndexOf(logits, logits.Max());
        }
        Assume.That(top, Is.GreaterThan(0), "the unrestricted argmax must be excludable");
        // a "tokenizer" of `top` ids: the best row is padding now and must never come out
        using var backend = QwQ.Cuda.Hosting.BackendFactory.Create(BackendKind.Cuda, config, dir,
            new EngineOptions { MaxContext = 64 }, validVocab: top, progress: null, default);
        using var restricted = backend.CreateSequence();
        restricted.Append(prompt);
        Assert.That(restricted.Sample(Greedy, 0), Is.LessThan(top));
        for (int step = 1; step <= 50; step++)
            Assert.That(restricted.Sample(new SamplingOptions { Temperature = 1.5f, Seed = 9 }, step), Is.LessThan(top));
    }

    /// <summary>
    /// PrefillGemm.CublasLtTuned: the algorithms timed fastest at the chunk's row count compute the same prefill as
    /// cublasGemmEx, for bf16 weights and for int4 ones on their dequantized copy; the prompt is exactly one chunk of more
    /// than 128 rows (fewer run the decode batches' plans), so the tuned plans run, and the backend names them.
    /// </summary>
    [TestCase("tiny-gqa", 200, "bf16 cuBLASLt, tuned at 200 rows")]
    [TestCase("tiny-awq", 200, "dequantized to bf16 cuBLASLt, tuned at 200 rows")]
    public void TunedCublasLtPrefillMatchesCublas(string model, int chunk, string path)
    {
        RequireGpu();
        int vocab = ModelConfig.Load(Path.Combine(ModelFixtures.Dir(model), "config.json")).VocabSize;
        int[] tokens = Enumerable.Range(0, chunk).Select(_ => Random.Shared.Next(vocab)).ToArray();
        float[] Logits(PrefillGemm gemm, out string ran)
        {
            using var backend = LoadFixture(model, new EngineOptions { MaxContext = 256, PrefillChunk = chunk, PrefillGemm = gemm });
            ran = backend.PrefillGemmPath;
            using var seq = (CudaSequence)backend.CreateSequence();
            return seq.AppendWithLogits(tokens, Enumerable.Range(0, chunk).ToArray());
        }
        float[] tuned = Logits(PrefillGemm.CublasLtTuned, out string tunedPath);
        Assert.That(tunedPath, Is.EqualTo(path));
        Assert.That(RelErr(tuned, Logits(PrefillGemm.Cublas, out _)), Is.LessThanOrEqualTo(1e-2));
    }

    [Test]
    public void ChunkedPrefillEqualsOnePass()
    {
        RequireGpu();
        int[] tokens = Enumerable.Range(0, 45).Select(_ => Random.Shared.Next(256)).ToArray();
        float[] Last(int chunk)
        {
            using var backend = LoadFixture("tiny-gqa", new EngineOptions { MaxContext = 256, PrefillChunk = chunk });
            using var seq = backend.CreateSequence();
            seq.Append(tokens[..20]);
            seq.Append(tokens[20..]); // a second prefill on top of the cache
            var logits = new float[backend.Config.VocabSize];
            seq.CopyLastLogits(logits);
            return logits;
        }
        double err = RelErr(Last(7), Last(4096));
        Assert.That(err, Is.LessThanOrEqualTo(1e-2));
    }

    [Test]
    public void SyntheticQwq32bRunsAPrefillOf512AndDecodesAt64Steps()
    {
        RequireGpu();
        var config = ModelPresets.Get("qwq-32b");
        using var backend = CudaBackend.Load(config, null, new EngineOptions { MaxContext = 4096, SampleableVocab = 151669 });
        TestContext.Out.WriteLine($"{backend.DeviceDescription}; plan: {backend.Plan}");
        using var seq = backend.CreateSequence();
        var rng = new Random(7);
        seq.Append(Enumerable.Range(0, 512).Select(_ => rng.Next(151643)).ToArray());
        var logits = new float[config.VocabSize];
        seq.CopyLastLogits(logits);
        Assert.That(logits.All(float.IsFinite), "prefill logits are finite");
        Assert.That(logits.Distinct().Count(), Is.GreaterThan(1000), "prefill logits are not constant");
        for (int i = 0; i < 64; i++)
        {
            int tok = seq.Sample(new SamplingOptions { Temperature = 0.6f, TopP = 0.95f, TopK = 40, Seed = 1 }, i);
            Assert.That(tok, Is.InRange(0, 151668));
            seq.Append([tok]);
        }
        seq.CopyLastLogits(logits);
        Assert.That(logits.All(float.IsFinite), "decode logits are finite");
        Assert.That(seq.Length, Is.EqualTo(576));
    }

    [Test]
    public void ThirtyTwoSessionsOfQwq32bGrowTogetherUntilThePoolIsFull()
    {
        RequireGpu();
        var config = ModelPresets.Get("qwq-32b");
        using var backend = CudaBackend.Load(config, null, new EngineOptions { SampleableVocab = 151669 });
        TestContext.Out.WriteLine($"{backend.DeviceDescription}; pool {backend.Plan.KvPoolPositions} positions");
        Assert.That(backend.Plan.KvPoolPositions, Is.GreaterThanOrEqualTo(40 * 1024), "the H100 pool holds at least 40k positions");
        var sessions = Enumerable.Range(0, 32).Select(_ => backend.CreateSequence()).ToArray();
        try
        {
            Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(backend.KvPool.TotalBlocks), "opening sessions takes no KV");
            var rng = new Random(3);
            var e = Assert.Throws<global::QwQ.Cuda.Batching.KvPoolExhaustedException>(() =>
            {
                while (true) // all 32 grow by 256 positions a step until the pool cannot back the next step
                    backend.Step(sessions.Select(s => new global::QwQ.Cuda.Inference.SequenceChunk(s, Enumerable.Range(0, 256).Select(_ => rng.Next(151643)).ToArray())).ToArray());
            })!;
            long held = sessions.Sum(s => (long)s.Length);
            TestContext.Out.WriteLine($"{held} positions held by 32 sessions when the pool filled: {e.Message}");
            Assert.That(held, Is.GreaterThanOrEqualTo(backend.Plan.KvPoolPositions - 32 * 256), "the sessions filled the pool");
            var logits = new float[config.VocabSize];
            sessions[31].CopyLastLogits(logits);
            Assert.That(logits.All(float.IsFinite));
        }
        finally
        {
            foreach (var s in sessions) s.Dispose();
        }
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(backend.KvPool.TotalBlocks), "disposed sessions give every block back");
    }

    [Test]
    public void GreedyAtBatch32EqualsBatch1ExceptAtNearTies()
    {
        RequireGpu();
        int seed = Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var config = ModelConfig.Parse(TinyConfigJson(), "config.json");
        using var tmp = new TestModels.TempDir();
        WriteCheckpoint(tmp.Path, config, CpuWeights.Random(config, seed, bf16Exact: true), TinyConfigJson());
        using var backend = CudaBackend.Load(config, tmp.Path, new EngineOptions { MaxContext = 1024 });
        var rng = new Random(seed);
        const int batch = 32, steps = 24;
        var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, rng.Next(5, 200)).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray();

        // batch 32: one step for all, one batched sample
        var seqs = prompts.Select(p => { var s = backend.CreateSequence(); s.Append(p); return s; }).ToArray();
        var batched = new int[batch][];
        for (int b = 0; b < batch; b++) batched[b] = new int[steps];
        var next = new int[batch];
        for (int t = 0; t < steps; t++)
        {
            backend.Sample(seqs.Select(s => new global::QwQ.Cuda.Inference.SampleRequest(s, Greedy, t)).ToArray(), next);
            for (int b = 0; b < batch; b++) batched[b][t] = next[b];
            backend.Step(seqs.Select((s, b) => new global::QwQ.Cuda.Inference.SequenceChunk(s, new[] { next[b] })).ToArray());
        }
        foreach (var s in seqs) s.Dispose();

        // batch 1, each alone: equal token for token up to the first step whose top-1/top-2 gap is within the
        // noise between the two runs' logits (bf16 products over 1 vs 32 rows round differently)
        int ties = 0;
        var logits = new float[config.VocabSize];
        for (int b = 0; b < batch; b++)
        {
            using var alone = backend.CreateSequence();
            alone.Append(prompts[b]);
            for (int t = 0; t < steps; t++)
            {
                alone.CopyLastLogits(logits);
                var top = logits.Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(2).ToArray();
                int tok = alone.Sample(Greedy, t);
                if (tok != batched[b][t])
                {
                    double margin = top[0].v - top[1].v, scale = logits.Max(Math.Abs);
                    TestContext.Out.WriteLine($"sequence {b} parts at step {t}: top-1/top-2 gap {margin:E2} of max |logit| {scale:E2}");
                    Assert.That(margin, Is.LessThan(2e-2 * scale), $"sequence {b}, step {t}: not a near-tie");
                    ties++;
                    break;
                }
                alone.Append([tok]);
            }
        }
        TestContext.Out.WriteLine($"{batch - ties} of {batch} sequences identical for {steps} steps; {ties} parted at near-ties");
        Assert.That(ties, Is.LessThanOrEqualTo(batch / 4), "near-ties are rare");
    }

    [Test]
    public void MissingTensorIsReportedBeforeTheGpuIsTouched()
    {
        // Runs without a GPU: the checkpoint is validated first.
        using var tmp = new TestModels.TempDir();
        string json = TinyConfigJson();
        var config = ModelConfig.Parse(json, "config.json");
        WriteCheckpoint(tmp.Path, config, CpuWeights.Random(config, 1), json, skipTensor: TensorNames.UpWeight(1));
        var e = Assert.Throws<WeightsException>(() => CudaBackend.Load(config, tmp.Path, new EngineOptions()));
        Assert.That(e!.Message, Does.Contain(TensorNames.UpWeight(1)));
    }

    [Test]
    public void SequenceRejectsMoreTokensThanItsCache()
    {
        RequireGpu();
        using var backend = LoadFixture("tiny-gqa", new EngineOptions { MaxContext = 32 });
        using var seq = backend.CreateSequence();
        seq.Append(new int[30]);
        var e = Assert.Throws<OptionException>(() => seq.Append(new int[3]));
        Assert.That(e!.Message, Does.Contain("32"));
        Assert.That(seq.Length, Is.EqualTo(30), "a rejected append changes nothing");
    }
}


/// <summary>
/// QwQ-32B's full 131072-position context (YaRN) at full size. Needs ~100 GB of device memory: runs on the H200
/// (device tool kind nvidia-h200), is ignored on smaller GPUs and without one.
/// </summary>
public class FullContextTests
{
    [Test]
    public void AllOf131072PositionsWorkWithYarn()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        var config = ModelPresets.Get("qwq-32b-yarn");
        long need = ModelWeights.DeviceBytes(config) + 131072L * config.KvBytesPerToken + (4L << 30);
        using (var probe = global::QwQ.Cuda.Native.CudaContext.Create())
            if (probe.GetMemoryInfo().Free < need)
                Assert.Ignore($"needs {need / 1e9:F0} GB of free device memory for 131072 positions (an H200); this GPU has {probe.GetMemoryInfo().Free / 1e9:F0} GB");

        using var backend = CudaBackend.Load(config, null, new EngineOptions { MaxContext = 131072, SampleableVocab = 151669 });
        FillEveryPosition(backend);
    }

    /// <summary>
    /// The long-context issue's target: all 131,072 positions on one 80 GB H100, with FP8 weights (34 GB) and the FP8 KV
    /// cache (132 KiB a position: 17.7 GB), where bf16 weights and KV leave room for 40,960.
    /// </summary>
    [Test]
    public void AllOf131072PositionsWorkWithFp8WeightsAndFp8KvOnOneH100()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        var config = ModelPresets.Get("qwq-32b-yarn");
        long need = ModelWeights.DeviceBytes(config, WeightKind.Fp8) + 131072L * KvPool.BytesPerToken(config, KvCacheKind.Fp8) + (4L << 30);
        using (var probe = global::QwQ.Cuda.Native.CudaContext.Create())
            if (probe.GetMemoryInfo().Free < need)
                Assert.Ignore($"needs {need / 1e9:F0} GB of free device memory; this GPU has {probe.GetMemoryInfo().Free / 1e9:F0} GB");

        using var backend = CudaBackend.Load(config, null, new EngineOptions
        {
            MaxContext = 131072, SampleableVocab = 151669, Quantize = QuantizeMode.Fp8, KvCache = KvCacheKind.Fp8,
        });
        Assert.That(backend.KvCache, Is.EqualTo(KvCacheKind.Fp8));
        FillEveryPosition(backend);
    }

    /// <summary>Prefill to the last position but one, decode at the last, and no position past it: finite logits throughout.</summary>
    internal static void FillEveryPosition(CudaBackend backend)
    {
        using var seq = backend.CreateSequence();
        var rng = new Random(3);
        seq.Append(Enumerable.Range(0, 131071).Select(_ => rng.Next(151643)).ToArray());
        var logits = new float[backend.Config.VocabSize];
        seq.CopyLastLogits(logits);
        Assert.That(logits.All(float.IsFinite), "prefill of 131071 tokens: finite logits");
        int tok = seq.Sample(new SamplingOptions { Temperature = 0 }, 0);
        seq.Append([tok]); // position 131071: the last one
        seq.CopyLastLogits(logits);
        Assert.That(logits.All(float.IsFinite), "decode at the last position: finite logits");
        Assert.That(seq.Length, Is.EqualTo(131072));
        Assert.Throws<OptionException>(() => seq.Append([tok]), "position 131072 does not exist");
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Kernels;
using QwQ.Cuda.Tests.Reference;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// <c>--quantize fp8</c> end to end: a bf16 checkpoint quantized on the GPU while it loads, against the fp32 CPU
/// reference running the same weights quantized here on the CPU (per output row, scale amax / 448, codes rounded to
/// nearest even: <see cref="Fp8KernelTests.Encode"/>). Every kernel path of the fp8 kind is crossed: prefill (in
/// 32-row tensor-core slices, and past 128 rows dequantized to bf16 for the GEMM), decode at 1, 3, 8 and 20 rows
/// (the tensor-core GEMV's 8-, 16- and 32-row variants), eager and replayed as graphs. bf16 activations: ‖Δ‖/‖ref‖ ≤ 2e-2.
/// </summary>
public sealed class Fp8EngineTests
{
    private static readonly string ConfigJson = QuantizedOnLoad.ConfigJson(hidden: 320, heads: 10);

    /// <summary>Each row of [rows, cols] quantized to e4m3 with its own scale, then dequantized: what the GPU computes with.</summary>
    internal static float[] QuantizeRows(float[] w, int rows, int cols)
    {
        var r = new float[w.Length];
        for (int i = 0; i < rows; i++)
        {
            float amax = 0;
            for (int j = 0; j < cols; j++) amax = Math.Max(amax, Math.Abs(w[i * cols + j]));
            float scale = amax > 0 ? amax / 448f : 1f;
            for (int j = 0; j < cols; j++) r[i * cols + j] = Fp8KernelTests.Decode(Fp8KernelTests.Encode(w[i * cols + j] / scale)) * scale;
        }
        return r;
    }

    [Test]
    public void QuantizedOnLoadMatchesCpuReferenceOnTheSameFp8Weights([Values(true, false)] bool cudaGraphs) =>
        QuantizedOnLoad.MatchesCpuReference(ConfigJson, QuantizeMode.Fp8, WeightKind.Fp8, QuantizeRows, cudaGraphs);

    /// <summary>
    /// The same checks with the tuner held to the fp16 route (plain or wide) wherever it serves (9–32 rows: decode at 20
    /// rows, and the 32-row slices of the 67-row prefill), so the engine runs it end to end; the tuner's choices must
    /// show it.
    /// </summary>
    [Test]
    public void TheFp16RouteMatchesCpuReferenceOnTheSameFp8Weights([Values(false, true)] bool wide) =>
        QuantizedOnLoad.MatchesCpuReference(ConfigJson, QuantizeMode.Fp8, WeightKind.Fp8, QuantizeRows, cudaGraphs: true,
            only: wide ? global::QwQ.Cuda.Kernels.TensorCoreVariant.HalfWide : global::QwQ.Cuda.Kernels.TensorCoreVariant.Half);

    /// <summary>
    /// The same checks with the tuner held to the sm_90a warpgroup builds (wgmma; plain at 9–32 rows, deep at 17–32),
    /// end to end through the engine, eager and replayed. Compute capability 9.0 with the sm_90a PTX only.
    /// </summary>
    [Test]
    public void TheWarpgroupRouteMatchesCpuReferenceOnTheSameFp8Weights([Values(false, true)] bool deep) =>
        QuantizedOnLoad.MatchesCpuReference(ConfigJson, QuantizeMode.Fp8, WeightKind.Fp8, QuantizeRows, cudaGraphs: true,
            only: deep ? global::QwQ.Cuda.Kernels.TensorCoreVariant.WarpgroupDeep : global::QwQ.Cuda.Kernels.TensorCoreVariant.Warpgroup);

    /// <summary>
    /// The FP8 prefill GEMM (what <see cref="Fp8PrefillGemm.Auto"/> runs on sm_90) against the bf16 detour on the very same
    /// fp8 weights, prefill of 150 and 300 rows (both above the 128 rows where the engine switches to it), every sampled
    /// position's logits; and both against the fp32 CPU reference on the dequantized weights. The GEMM also rounds the
    /// activations to e4m3 per token (about 2.5% rms per product input, a bf16 detour rounds them to 0.2%), so the bound
    /// is that rounding's, not bf16's: measured values are printed (tighten them after the first GPU run).
    /// </summary>
    [Test]
    public void Fp8PrefillGemmStaysCloseToTheBf16DetourOnTheSameWeights()
    {
        using var checkpoint = QuantizedOnLoad.RandomCheckpoint(ConfigJson, QuantizeRows);
        var (config, tmp, cpu, seed) = (checkpoint.Config, checkpoint.Directory, checkpoint.Reference, checkpoint.Seed);
        var rng = new Random(seed);
        int[][] prompts = [.. new[] { 150, 300 }.Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize)).ToArray())];
        int[] Positions(int n) => Enumerable.Range(0, Math.Min(n, 128)).Select(i => i * n / Math.Min(n, 128)).ToArray();
        float[][]? Logits(Fp8PrefillGemm mode)
        {
            using var backend = CudaBackend.Load(config, tmp.Path, new EngineOptions { MaxContext = 512, Quantize = QuantizeMode.Fp8, Fp8Prefill = mode, TuneDecodeGemm = false });
            TestContext.Out.WriteLine($"{mode}: prefill products on {backend.PrefillGemmPath}");
            if (mode == Fp8PrefillGemm.Auto && !backend.PrefillGemmPath.StartsWith("fp8", StringComparison.Ordinal)) return null;
            return [.. prompts.Select(p =>
            {
                using var seq = (CudaSequence)backend.CreateSequence();
                return seq.AppendWithLogits(p, Positions(p.Length));
            })];
        }
        float[][] fp8 = Logits(Fp8PrefillGemm.Auto) ?? throw new IgnoreException("Auto takes the bf16 detour on this GPU (the FP8 GEMM needs sm_90)");
        float[][] detour = Logits(Fp8PrefillGemm.Dequantize)!;
        for (int i = 0; i < prompts.Length; i++)
        {
            float[] all = cpu.Forward(prompts[i]);
            float[] want = [.. Positions(prompts[i].Length).SelectMany(p => all.AsSpan(p * config.VocabSize, config.VocabSize).ToArray())];
            double vsDetour = CudaModelTests.RelErr(fp8[i], detour[i]), vsCpu = CudaModelTests.RelErr(fp8[i], want), detourVsCpu = CudaModelTests.RelErr(detour[i], want);
            TestContext.Out.WriteLine($"prefill of {prompts[i].Length}: FP8 GEMM against the bf16 detour {vsDetour:E2}, against fp32 {vsCpu:E2} (the detour against fp32: {detourVsCpu:E2})");
            Assert.That(vsDetour, Is.LessThanOrEqualTo(5e-2), $"prefill of {prompts[i].Length}: against the detour");
            Assert.That(vsCpu, Is.LessThanOrEqualTo(6e-2), $"prefill of {prompts[i].Length}: against fp32");
        }
    }

    /// <summary>
    /// Where down_proj runs on the FP8 GEMM (a prefill step of 200 rows on sm_90), SiLU·mul hands it its e4m3 input
    /// directly (<c>quantize_fp8_silu_mul_rows</c>, one launch a layer), no bf16 SiLU·mul runs, and only the other three
    /// products quantize their input; <see cref="Fp8PrefillGemmStaysCloseToTheBf16DetourOnTheSameWeights"/> checks the
    /// logits of that path.
    /// </summary>
    [Test]
    public void Fp8PrefillHandsDownProjItsInputStraightFromSiluMul()
    {
        using var checkpoint = QuantizedOnLoad.RandomCheckpoint(ConfigJson, QuantizeRows);
        using var backend = CudaBackend.Load(checkpoint.Config, checkpoint.Directory.Path,
            new EngineOptions { MaxContext = 512, Quantize = QuantizeMode.Fp8, TuneDecodeGemm = false });
        if (!backend.PrefillGemmPath.StartsWith("fp8", StringComparison.Ordinal))
            Assert.Ignore($"prefill products run on {backend.PrefillGemmPath} here (the FP8 GEMM needs sm_90)");
        using var seq = backend.CreateSequence();
        int[] prompt = [.. Enumerable.Range(0, 200).Select(i => i * 7 % checkpoint.Config.VocabSize)];
        var launches = backend.ProfileStep([new SequenceChunk(seq, prompt)]);
        string[] kernels = [.. launches[0].Select(l => l.Kernel)];
        int layers = checkpoint.Config.NumHiddenLayers;
        Assert.That(kernels.Count(k => k == "quantize_fp8_silu_mul_rows"), Is.EqualTo(layers));
        Assert.That(kernels, Has.None.EqualTo("silu_mul_bf16_bf16").And.None.EqualTo("silu_mul_f32_bf16"));
        Assert.That(kernels.Count(k => k == "quantize_fp8_act_rows"), Is.EqualTo(3 * layers), "qkv, o and gate_up quantize their bf16 input");
    }

    [Test]
    public void Fp8WeightsTakeAboutHalfTheBytes()
    {
        var c = ModelPresets.Get("qwq-32b");
        long bf16 = ModelWeights.DeviceBytes(c), fp8 = ModelWeights.DeviceBytes(c, WeightKind.Fp8);
        long linear = 64L * ((long)c.QkvDim * c.HiddenSize + (long)c.HiddenSize * c.QDim + 3L * c.IntermediateSize * c.HiddenSize);
        // every layer weight loses one byte of two; scales add 4 bytes per output row
        Assert.That(bf16 - fp8, Is.InRange(linear - 64L * 4 * (c.QkvDim + c.HiddenSize * 2 + 2 * c.IntermediateSize) - (1 << 20), linear));
        TestContext.Out.WriteLine($"QwQ-32B weights: bf16 {bf16 / 1e9:F1} GB, fp8 {fp8 / 1e9:F1} GB");
    }
}

/// <summary>Quantized checkpoints on the GPU engine: the FP8 fixture against the CPU reference; what is refused, without a GPU.</summary>
public sealed class QuantizedCheckpointEngineTests
{
    [Test]
    public void Fp8CheckpointMatchesCpuReference()
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        string dir = ModelFixtures.Dir("tiny-fp8");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        using var checkpoint = global::QwQ.Cuda.Weights.SafetensorsCheckpoint.Open(dir);
        var cpu = new Qwen2CpuModel(config, CpuWeights.Load(checkpoint, config));
        // the checkpoint's weights at the bf16-activation tolerance: prefill of 150 on the bf16 detour, not the FP8 GEMM
        using var backend = CudaBackend.Load(config, dir, new EngineOptions { MaxContext = 256, Fp8Prefill = Fp8PrefillGemm.Dequantize });
        Assert.That(backend.Weights.LinearKind, Is.EqualTo(WeightKind.Fp8));
        var rng = new Random(7);
        foreach (int length in new[] { 5, 40, 150 })
        {
            int[] tokens = Enumerable.Range(0, length).Select(_ => rng.Next(config.VocabSize)).ToArray();
            using var seq = (CudaSequence)backend.CreateSequence();
            int[] positions = Enumerable.Range(0, Math.Min(length, 64)).Select(i => i * length / Math.Min(length, 64)).ToArray();
            float[] all = cpu.Forward(tokens);
            float[] want = positions.SelectMany(p => all.AsSpan(p * config.VocabSize, config.VocabSize).ToArray()).ToArray();
            double err = CudaModelTests.RelErr(seq.AppendWithLogits(tokens, positions), want);
            TestContext.Out.WriteLine($"tiny-fp8, {length} tokens: ‖Δ‖/‖ref‖ = {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(2e-2));
        }
    }

    /// <summary>A one-layer model with 4 query / 2 KV heads and the given hidden size.</summary>
    private static ModelConfig Tiny(int hidden) => ModelConfig.Parse($$"""
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":{{hidden}},"intermediate_size":128,
         "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,
         "rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":256,"tie_word_embeddings":false}
        """, "config.json");

    [Test]
    public void QuantizeFp8OnAnAwqCheckpointIsRefused()
    {
        string dir = ModelFixtures.Dir("tiny-awq");
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var e = Assert.Throws<Errors.OptionException>(() => CudaBackend.Load(config, dir, new EngineOptions { MaxContext = 64, Quantize = QuantizeMode.Fp8 }).Dispose());
        Assert.That(e!.Message, Does.Contain("already INT4").And.Contain("drop --quantize"));
    }

    [Test]
    public void QuantizeInt4NeedsInputSizesThatAreMultiplesOf128()
    {
        var config = Tiny(hidden: 64);
        var e = Assert.Throws<Errors.OptionException>(() => CudaBackend.Load(config, null, new EngineOptions { Quantize = QuantizeMode.Int4 }).Dispose());
        Assert.That(e!.Message, Does.Contain("multiple of its group size, 128").And.Contain("64"));
    }

    [Test]
    public void QuantizeFp8NeedsInputSizesThatAreMultiplesOf64()
    {
        var config = Tiny(hidden: 96);
        var e = Assert.Throws<Errors.OptionException>(() => CudaBackend.Load(config, null, new EngineOptions { Quantize = QuantizeMode.Fp8 }).Dispose());
        Assert.That(e!.Message, Does.Contain("multiple of 64").And.Contain("96"));
    }

    [Test]
    public void CpuReferenceQuantizesLikeTheGpu()
    {
        // --backend cpu --quantize fp8 runs the weights the GPU would hold: per-row e4m3, dequantized
        var config = Tiny(hidden: 64);
        var w = CpuWeights.Random(config, 3);
        var q = CpuReferenceBackend.QuantizeFp8(w);
        float[] expected = Fp8EngineTests.QuantizeRows(w.Layers[0].GateWeight, 128, 64);
        Assert.That(q.Layers[0].GateWeight, Is.EqualTo(expected));
        Assert.That(q.Layers[0].GateWeight, Is.Not.EqualTo(w.Layers[0].GateWeight));
        Assert.That(q.LmHead, Is.SameAs(w.LmHead));
    }
}

/// <summary>
/// How far fp8 and int4 weights move the model, measured (not a correctness tolerance): a full-width 2-layer QwQ (hidden 5120,
/// 40/8 heads, intermediate 27648, vocabulary 152064) with synthetic weights, once in bf16 and once quantized on load
/// from the very same bf16 values, over the same tokens. Reports the mean KL divergence of the next-token
/// distributions and the relative logit difference; the bounds only catch a broken quantizer (a quantized model that
/// is a different model).
/// </summary>
public sealed class Fp8DivergenceTests
{
    [TestCase(QuantizeMode.Fp8, TestName = "Fp8AgainstBf16OnTheSameSyntheticWeights")]
    [TestCase(QuantizeMode.Int4, TestName = "Int4AgainstBf16OnTheSameSyntheticWeights")]
    public void QuantizedAgainstBf16OnTheSameSyntheticWeights(QuantizeMode quantized)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        var config = ModelPresets.Get("qwq-32b") with { NumHiddenLayers = 2 };
        var rng = new Random(11);
        int[] tokens = Enumerable.Range(0, 48).Select(_ => rng.Next(151643)).ToArray();
        int[] positions = Enumerable.Range(0, tokens.Length).ToArray();
        float[] Logits(QuantizeMode mode)
        {
            using var backend = CudaBackend.Load(config, null, new EngineOptions { MaxContext = 256, Quantize = mode, TuneDecodeGemm = false });
            using var seq = (CudaSequence)backend.CreateSequence();
            return seq.AppendWithLogits(tokens, positions);
        }
        float[] bf16 = Logits(QuantizeMode.None), fp8 = Logits(quantized);
        double kl = CudaModelTests.MeanKl(bf16, fp8, config.VocabSize);
        double rel = CudaModelTests.RelErr(fp8, bf16);
        TestContext.Out.WriteLine($"full-width 2-layer QwQ, synthetic weights, {tokens.Length} positions: mean KL(bf16 ‖ {quantized}) = {kl:E3} nats, ‖Δlogits‖/‖logits‖ = {rel:E2}");
        // fp8, measured on the H100: KL 1.68e-2 nats, ‖Δ‖/‖ref‖ 0.128 (e4m3 keeps 3 mantissa bits: ~3.6% rms per weight,
        // compounding over five products per layer); the bounds are twice or three times that.
        // int4 (round-to-nearest, group 128: 16 levels over a group's range, ~10% rms per weight), measured on the H100:
        // KL 0.225 nats, ‖Δ‖/‖ref‖ 0.468; the bounds are about twice that (unrelated logits are ~1.4 apart).
        var (klMax, relMax) = quantized == QuantizeMode.Fp8 ? (0.05, 0.25) : (0.5, 0.8);
        Assert.That(kl, Is.GreaterThan(0).And.LessThan(klMax));
        Assert.That(rel, Is.LessThan(relMax));
    }
}

/// <summary>
/// A bf16 checkpoint quantized on the GPU while it loads, against the fp32 CPU reference running the same weights
/// quantized by <c>quantize</c>: prefill at 67 rows (tensor-core GEMV in 32-row slices) and 150 (expanded to bf16 for
/// the GEMM), every position's logits; batched decode at 1, 3, 8 and 20 rows (the 8-, 16- and 32-row variants), each
/// sequence against the reference over its whole prefix. bf16 activations: ‖Δ‖/‖ref‖ ≤ 2e-2.
/// </summary>
internal static class QuantizedOnLoad
{
    /// <summary>A 2-layer model with heads of 32, 2 KV heads, intermediate 384 and a 256-token vocabulary.</summary>
    public static string ConfigJson(int hidden, int heads) => $$"""
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":{{hidden}},"intermediate_size":384,
         "num_hidden_layers":2,"num_attention_heads":{{heads}},"num_key_value_heads":2,"vocab_size":256,
         "rms_norm_eps":1e-5,"rope_theta":1000000.0,"max_position_embeddings":4096,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16","use_sliding_window":false}
        """;

    /// <summary>
    /// A random bf16-exact checkpoint of <paramref name="configJson"/> written to a temporary directory (deleted on
    /// dispose), and the fp32 CPU reference over the same weights with every layer linear passed through
    /// <paramref name="quantize"/> (what the GPU holds after quantizing on load). Ignores the test without a GPU.
    /// </summary>
    public static RandomQuantizedCheckpoint RandomCheckpoint(string configJson, Func<float[], int, int, float[]> quantize)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        int seed = Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var config = ModelConfig.Parse(configJson, "config.json");
        var weights = CpuWeights.Random(config, seed, bf16Exact: true);
        var dir = new TestModels.TempDir();
        TestModels.WriteSafetensors(Path.Combine(dir.Path, "model.safetensors"), config, weights);
        File.WriteAllText(Path.Combine(dir.Path, "config.json"), configJson);
        return new RandomQuantizedCheckpoint(config, dir, new Qwen2CpuModel(config, weights.WithLayerLinears(quantize)), seed);
    }

    public static void MatchesCpuReference(string configJson, QuantizeMode mode, WeightKind kind, Func<float[], int, int, float[]> quantize, bool cudaGraphs,
        global::QwQ.Cuda.Kernels.TensorCoreVariant? only = null)
    {
        using var checkpoint = RandomCheckpoint(configJson, quantize);
        var (config, tmp, cpu, seed) = (checkpoint.Config, checkpoint.Directory, checkpoint.Reference, checkpoint.Seed);
        // The weights' paths against the reference at its bf16-activation tolerance: prefill on the bf16 detour (the FP8
        // GEMM, which also rounds activations to e4m3, has its own test against it).
        using var backend = CudaBackend.Load(config, tmp.Path, new EngineOptions
            { MaxContext = 512, Quantize = mode, UseCudaGraphs = cudaGraphs, Fp8Prefill = Fp8PrefillGemm.Dequantize, OnlyTensorCoreVariant = only });
        Assert.That(backend.Weights.LinearKind, Is.EqualTo(kind));
        if (only is { } held && !backend.Linear.Loads(held))
            Assert.Ignore($"this GPU has no {held} build (the warpgroup builds run on compute capability 9.0 with sm_90a PTX that has them)");
        if (only is { } v)
        {
            string[] choices = [.. backend.DescribeKernelChoices()];
            TestContext.Out.WriteLine(string.Join("\n", choices));
            Assert.That(choices, Has.Some.Contains($"({v.ToString().ToLowerInvariant()})"), $"the tuner never took {v}");
        }
        var rng = new Random(seed);

        // prefill: every position's logits, at 67 rows (tensor-core GEMV in 32-row slices) and 150 rows (dequantized
        // to bf16 for the GEMM)
        foreach (int length in new[] { 67, 150 })
        {
            int[] prompt = Enumerable.Range(0, length).Select(_ => rng.Next(config.VocabSize)).ToArray();
            using var seq = (CudaSequence)backend.CreateSequence();
            int[] positions = Enumerable.Range(0, Math.Min(length, 128)).Select(i => i * length / Math.Min(length, 128)).ToArray();
            float[] want = cpu.Forward(prompt);
            float[] wanted = positions.SelectMany(p => want.AsSpan(p * config.VocabSize, config.VocabSize).ToArray()).ToArray();
            double err = CudaModelTests.RelErr(seq.AppendWithLogits(prompt, positions), wanted);
            TestContext.Out.WriteLine($"prefill of {length}: ‖Δ‖/‖ref‖ = {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(2e-2), $"prefill of {length}");
        }

        // batched decode at 1, 3, 8 and 20 rows: each sequence's logits after
        // every step against the reference over its whole prefix
        foreach (int batch in new[] { 1, 3, 8, 20 })
        {
            var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, rng.Next(3, 40)).Select(_ => rng.Next(config.VocabSize)).ToArray()).ToArray();
            var seqs = prompts.Select(p => { var s = backend.CreateSequence(); s.Append(p); return s; }).ToArray();
            var history = prompts.Select(p => p.ToList()).ToArray();
            double worst = 0;
            var logits = new float[config.VocabSize];
            for (int step = 0; step < 4; step++)
            {
                int[] next = Enumerable.Range(0, batch).Select(_ => rng.Next(config.VocabSize)).ToArray();
                backend.Step(seqs.Select((s, b) => new SequenceChunk(s, new[] { next[b] })).ToArray());
                for (int b = 0; b < batch; b++)
                {
                    history[b].Add(next[b]);
                    seqs[b].CopyLastLogits(logits);
                    float[] all = cpu.Forward(history[b].ToArray());
                    worst = Math.Max(worst, CudaModelTests.RelErr(logits, all.AsSpan(all.Length - config.VocabSize)));
                }
            }
            foreach (var s in seqs) s.Dispose();
            TestContext.Out.WriteLine($"decode at batch {batch}: worst ‖Δ‖/‖ref‖ = {worst:E2}");
            Assert.That(worst, Is.LessThanOrEqualTo(2e-2), $"batch {batch}");
        }
    }
}

/// <summary>See <see cref="QuantizedOnLoad.RandomCheckpoint"/>: the checkpoint's directory goes with it.</summary>
internal sealed record RandomQuantizedCheckpoint(ModelConfig Config, TestModels.TempDir Directory, Qwen2CpuModel Reference, int Seed) : IDisposable
{
    public void Dispose() => Directory.Dispose();
}

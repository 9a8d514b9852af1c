using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Engine;

using Cuda = global::QwQ.Cuda.Native.Cuda;

/// <summary>
/// The four prefill attention paths through the whole engine: the sm_90a kernel's ping-pong entry (the default on
/// compute capability 9.0), its plain TMA entry (<see cref="EngineOptions.HopperPingPong"/> off), its cp.async entry
/// (<see cref="EngineOptions.HopperTma"/> off) and the portable kernel
/// (<see cref="EngineOptions.HopperAttention"/> off), each against the float32 CPU reference on fresh random weights,
/// at head_dim 128 (the only one the Hopper kernel takes) with QwQ's group of 5 query heads a KV head. The prompt is
/// prefilled in two chunks, 300 rows (two whole 128-row blocks of the TMA entry and a partial one) then 77 on top of
/// them (a diagonal off the key tiles), so both the first and a later chunk run each path.
/// </summary>
public class HopperPrefillPathTests
{
    private const string ConfigJson = """
        {"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":640,"intermediate_size":384,
         "num_hidden_layers":2,"num_attention_heads":5,"num_key_value_heads":1,"vocab_size":256,
         "rms_norm_eps":1e-5,"rope_theta":1000000.0,"max_position_embeddings":4096,"tie_word_embeddings":false,
         "torch_dtype":"bfloat16","use_sliding_window":false}
        """;

    private static IEnumerable<TestCaseData> Paths()
    {
        yield return new TestCaseData(new EngineOptions { MaxContext = 512 }, "wgmma+TMA ping-pong sm_90a").SetName("PingPongEntry");
        yield return new TestCaseData(new EngineOptions { MaxContext = 512, HopperPingPong = false }, "wgmma+TMA sm_90a").SetName("TmaEntry");
        yield return new TestCaseData(new EngineOptions { MaxContext = 512, HopperTma = false }, "wgmma sm_90a").SetName("CpAsyncEntry");
        yield return new TestCaseData(new EngineOptions { MaxContext = 512, HopperAttention = false }, "mma.sync").SetName("PortableKernel");
    }

    [TestCaseSource(nameof(Paths))]
    public void EachPrefillAttentionPathMatchesTheCpuReference(EngineOptions options, string hopperPath)
    {
        if (!Cuda.IsAvailable(out string reason)) Assert.Ignore($"no CUDA device ({reason})");
        int seed = Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        using var tmp = new TestModels.TempDir();
        var config = ModelConfig.Parse(ConfigJson, "config.json");
        Assert.That(config.HeadDim, Is.EqualTo(128));
        var weights = CpuWeights.Random(config, seed, bf16Exact: true);
        CudaModelTests.WriteCheckpoint(tmp.Path, config, weights, ConfigJson);

        using var backend = CudaBackend.Load(config, tmp.Path, options);
        // the path this GPU runs: the asked one on compute capability 9.0 with the sm_90a PTX embedded, else the portable
        bool hopper = PtxLibrary.LoadsArchSpecific(backend.Context.ComputeCapability, requested: true, embedded: PtxLibrary.EmbeddedArchSpecificPtx().Count > 0);
        string expected = hopper ? hopperPath : "mma.sync";
        Assert.That(backend.PrefillAttentionPath, Is.EqualTo(expected));
        if (!hopper && hopperPath != "mma.sync")
            TestContext.Out.WriteLine($"{backend.Context.DeviceName}: no sm_90a path here, so this case runs the portable kernel");

        var rng = new Random(seed);
        int[] tokens = Enumerable.Range(0, 377).Select(_ => rng.Next(config.VocabSize)).ToArray();
        using var seq = (CudaSequence)backend.CreateSequence();
        float[] first = seq.AppendWithLogits(tokens.AsSpan(0, 300), Enumerable.Range(0, 300).ToArray());
        float[] second = seq.AppendWithLogits(tokens.AsSpan(300), Enumerable.Range(0, 77).ToArray());
        float[] want = new Qwen2CpuModel(config, weights).Forward(tokens);
        int vocab = config.VocabSize;
        double errFirst = CudaModelTests.RelErr(first, want.AsSpan(0, 300 * vocab));
        double errSecond = CudaModelTests.RelErr(second, want.AsSpan(300 * vocab));
        TestContext.Out.WriteLine($"{expected}: ‖Δ‖/‖ref‖ first chunk {errFirst:E2}, second chunk {errSecond:E2}");
        Assert.That(errFirst, Is.LessThanOrEqualTo(2e-2), "rows 0..299");
        Assert.That(errSecond, Is.LessThanOrEqualTo(2e-2), "rows 300..376, on top of the first chunk's cache");
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Model.Reference;

/// <summary>One decoder layer's weights, fp32, HF layouts (Linear weights are [out, in]).</summary>
public sealed class CpuLayerWeights
{
    public required float[] InputNorm { get; init; }          // [hidden]
    public required float[] QWeight { get; init; }            // [nq*D, hidden]
    public required float[] QBias { get; init; }              // [nq*D]
    public required float[] KWeight { get; init; }            // [nkv*D, hidden]
    public required float[] KBias { get; init; }              // [nkv*D]
    public required float[] VWeight { get; init; }            // [nkv*D, hidden]
    public required float[] VBias { get; init; }              // [nkv*D]
    public required float[] OWeight { get; init; }            // [hidden, nq*D]
    public required float[] PostAttentionNorm { get; init; }  // [hidden]
    public required float[] GateWeight { get; init; }         // [I, hidden]
    public required float[] UpWeight { get; init; }           // [I, hidden]
    public required float[] DownWeight { get; init; }         // [hidden, I]
}

/// <summary>All weights of a Qwen2 model as fp32 arrays, for the CPU reference.</summary>
public sealed class CpuWeights
{
    public required ModelConfig Config { get; init; }
    public required float[] Embedding { get; init; }          // [vocab, hidden]
    public required CpuLayerWeights[] Layers { get; init; }
    public required float[] FinalNorm { get; init; }          // [hidden]
    /// <summary>[vocab, hidden]; the same array as <see cref="Embedding"/> when tied.</summary>
    public required float[] LmHead { get; init; }

    /// <summary>
    /// Validates the checkpoint against the config, then reads every tensor as fp32. Quantized linear layers (FP8,
    /// AWQ INT4: see <see cref="ModelConfig.Quantization"/>) are dequantized on the way, so the reference computes
    /// with exactly the weights the quantized checkpoint stands for.
    /// </summary>
    public static CpuWeights Load(SafetensorsCheckpoint checkpoint, ModelConfig config)
    {
        CheckpointValidator.Validate(checkpoint, config);
        float[] Read(string name) => checkpoint.ReadFloat32(name);
        float[] Linear(int layer, Projection p) => checkpoint.ReadDequantizedLinear(QuantizedTensorNames.Linear(config, layer, p));

        var embedding = Read(TensorNames.Embedding);
        var layers = new CpuLayerWeights[config.NumHiddenLayers];
        for (int i = 0; i < layers.Length; i++)
        {
            layers[i] = new CpuLayerWeights
            {
                InputNorm = Read(TensorNames.InputNorm(i)),
                QWeight = Linear(i, Projection.Q),
                QBias = Read(TensorNames.QBias(i)),
                KWeight = Linear(i, Projection.K),
                KBias = Read(TensorNames.KBias(i)),
                VWeight = Linear(i, Projection.V),
                VBias = Read(TensorNames.VBias(i)),
                OWeight = Linear(i, Projection.O),
                PostAttentionNorm = Read(TensorNames.PostAttentionNorm(i)),
                GateWeight = Linear(i, Projection.Gate),
                UpWeight = Linear(i, Projection.Up),
                DownWeight = Linear(i, Projection.Down),
            };
        }
        return new CpuWeights
        {
            Config = config,
            Embedding = embedding,
            Layers = layers,
            FinalNorm = Read(TensorNames.FinalNorm),
            LmHead = QuantizedTensorNames.OutputProjection(config) is { } lmHead ? checkpoint.ReadDequantizedLinear(lmHead) : embedding,
        };
    }

    /// <summary>
    /// Deterministic random weights: N(0, 0.02) matrices, N(0, 0.1) biases, norms 1 + N(0, 0.1).
    /// With <paramref name="bf16Exact"/> every value is rounded to bf16 first, so a bf16 GPU engine given
    /// the same values holds exactly the weights the fp32 reference uses.
    /// </summary>
    public static CpuWeights Random(ModelConfig config, int seed, bool bf16Exact = true)
    {
        var rng = new Random(seed);
        float[] Normal(long count, double mean, double std)
        {
            var a = new float[count];
            for (long i = 0; i < count; i++)
            {
                // Box–Muller; 1 - NextDouble() is in (0, 1] so the log is finite.
                double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
                double z = Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
                float value = (float)(mean + std * z);
                a[i] = bf16Exact ? ElementConversion.Bf16ToFloat(ElementConversion.FloatToBf16(value)) : value;
            }
            return a;
        }

        long h = config.HiddenSize, q = config.QDim, kv = config.KvDim, inter = config.IntermediateSize;
        var embedding = Normal(config.VocabSize * h, 0, 0.02);
        var layers = new CpuLayerWeights[config.NumHiddenLayers];
        for (int i = 0; i < layers.Length; i++)
        {
            layers[i] = new CpuLayerWeights
            {
                InputNorm = Normal(h, 1, 0.1),
                QWeight = Normal(q * h, 0, 0.02),
                QBias = Normal(q, 0, 0.1),
                KWeight = Normal(kv * h, 0, 0.02),
                KBias = Normal(kv, 0, 0.1),
                VWeight = Normal(kv * h, 0, 0.02),
                VBias = Normal(kv, 0, 0.1),
                OWeight = Normal(h * q, 0, 0.02),
                PostAttentionNorm = Normal(h, 1, 0.1),
                GateWeight = Normal(inter * h, 0, 0.02),
                UpWeight = Normal(inter * h, 0, 0.02),
                DownWeight = Normal(h * inter, 0, 0.02),
            };
        }
        var finalNorm = Normal(h, 1, 0.1);
        return new CpuWeights
        {
            Config = config,
            Embedding = embedding,
            Layers = layers,
            FinalNorm = finalNorm,
            LmHead = config.TieWordEmbeddings ? embedding : Normal(config.VocabSize * h, 0, 0.02),
        };
    }

    /// <summary>
    /// A copy whose layers' linear weights are <paramref name="map"/>(weight [out, in], out, in); everything else
    /// (embedding, norms, biases, lm_head) is shared. How quantized variants of a model are made.
    /// </summary>
    public CpuWeights WithLayerLinears(Func<float[], int, int, float[]> map)
    {
        int h = Config.HiddenSize, q = Config.QDim, kv = Config.KvDim, inter = Config.IntermediateSize;
        return new CpuWeights
        {
            Config = Config,
            Embedding = Embedding,
            FinalNorm = FinalNorm,
            LmHead = LmHead,
            Layers = Layers.Select(l => new CpuLayerWeights
            {
                InputNorm = l.InputNorm,
                QWeight = map(l.QWeight, q, h),
                QBias = l.QBias,
                KWeight = map(l.KWeight, kv, h),
                KBias = l.KBias,
                VWeight = map(l.VWeight, kv, h),
                VBias = l.VBias,
                OWeight = map(l.OWeight, h, q),
                PostAttentionNorm = l.PostAttentionNorm,
                GateWeight = map(l.GateWeight, inter, h),
                UpWeight = map(l.UpWeight, inter, h),
                DownWeight = map(l.DownWeight, h, inter),
            }).ToArray(),
        };
    }
}

using QwQ.Cuda.Config;

namespace QwQ.Cuda.Weights.Quantization;

/// <summary>
/// Which tensors of a checkpoint hold one linear layer's weight, and how they encode it: the description a loader
/// needs to read the layer (raw bytes with <see cref="SafetensorsCheckpoint.Read"/>, or fp32 with
/// <see cref="SafetensorsCheckpoint.ReadDequantizedLinear"/>). Made by <see cref="QuantizedTensorNames.Linear"/>.
/// The weight it describes is always the Hugging Face one, [<see cref="OutFeatures"/>, <see cref="InFeatures"/>];
/// a bias, where the layer has one, is a separate plain tensor (<see cref="TensorNames.Bias"/>).
/// </summary>
/// <param name="Module">The layer's module path, e.g. "model.layers.0.self_attn.q_proj".</param>
public abstract record LinearTensors(string Module, int OutFeatures, int InFeatures)
{
    /// <summary>Every tensor of this layer's weight with its shape and dtypes, for the checkpoint validator.</summary>
    public abstract IReadOnlyList<ExpectedTensor> Expected();
}

/// <summary>An unquantized layer: <see cref="Weight"/> bf16, fp16 or fp32 [out, in].</summary>
public sealed record PlainLinearTensors(string Module, int OutFeatures, int InFeatures, string Weight)
    : LinearTensors(Module, OutFeatures, InFeatures)
{
    public override IReadOnlyList<ExpectedTensor> Expected() => [new(Weight, [OutFeatures, InFeatures])];
}

/// <summary>
/// compressed-tensors FP8: <see cref="Weight"/> F8_E4M3 [out, in] and <see cref="Scale"/> (bf16, fp16 or fp32)
/// [out, 1] per channel or [1] (older writers: []) per tensor. w[o, i] = fp8[o, i] · scale[o] (or · scale).
/// </summary>
/// <param name="InputScale">
/// The static input-activation scale [1] the checkpoint may hold beside the weight, or null when its activations
/// are dynamic. Accepted and ignored: activations stay bf16.
/// </param>
public sealed record Fp8LinearTensors(string Module, int OutFeatures, int InFeatures, string Weight, string Scale,
                                      Fp8ScaleStrategy Strategy, string? InputScale)
    : LinearTensors(Module, OutFeatures, InFeatures)
{
    /// <summary>Scales in the file: one per output feature per channel, 1 per tensor.</summary>
    public int ScaleCount => Strategy == Fp8ScaleStrategy.Channel ? OutFeatures : 1;

    public override IReadOnlyList<ExpectedTensor> Expected() =>
    [
        new(Weight, [OutFeatures, InFeatures]) { DTypes = [DType.F8_E4M3] },
        Strategy == Fp8ScaleStrategy.Channel
            ? new(Scale, [OutFeatures, 1])
            : new(Scale, [1]) { OtherShapes = [[]] },
    ];
}

/// <summary>
/// AutoAWQ INT4 "gemm" (see <see cref="AwqPacking"/>): <see cref="QWeight"/> I32 [in, out/8], <see cref="QZeros"/>
/// I32 [in/group, out/8], <see cref="Scales"/> [in/group, out] (fp16 in AutoAWQ's checkpoints; bf16 and fp32 read as
/// well). w[o, i] = (q[i, o] − z[i/group, o]) · s[i/group, o].
/// </summary>
public sealed record AwqLinearTensors(string Module, int OutFeatures, int InFeatures, string QWeight, string QZeros,
                                      string Scales, int GroupSize)
    : LinearTensors(Module, OutFeatures, InFeatures)
{
    public int Groups => InFeatures / GroupSize;

    public override IReadOnlyList<ExpectedTensor> Expected() =>
    [
        new(QWeight, [InFeatures, OutFeatures / AwqPacking.ValuesPerInt]) { DTypes = [DType.I32] },
        new(QZeros, [Groups, OutFeatures / AwqPacking.ValuesPerInt]) { DTypes = [DType.I32] },
        new(Scales, [Groups, OutFeatures]),
    ];
}

using System.Reflection;
using System.Runtime.InteropServices;
using QwQ.Cuda.Config;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Tests.Reference;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Weights;

/// <summary>
/// The tiny-gqa fixture checkpoint as the weights tests use it: its files, a full load the way the CPU backend
/// does it (open, validate, read every tensor), and a bitwise comparison of two loads.
/// </summary>
internal static class TinyGqaFixture
{
    public static string Dir => ModelFixtures.Dir("tiny-gqa");
    public static string ConfigPath => Path.Combine(Dir, "config.json");
    public static string WeightsPath => Path.Combine(Dir, SafetensorsCheckpoint.SingleFileName);

    public static ModelConfig Config => ModelConfig.Load(ConfigPath);

    /// <summary>Opens, validates and reads <paramref name="dir"/> (what every loader does before it runs the model).</summary>
    public static CpuWeights Load(string dir, ModelConfig config)
    {
        using var ck = SafetensorsCheckpoint.Open(dir);
        return CpuWeights.Load(ck, config);
    }

    /// <summary>The fixture loaded straight from its own directory: what every other load must equal.</summary>
    public static CpuWeights Reference => ModelFixtures.Load("tiny-gqa").Weights;

    /// <summary>
    /// Every fp32 array of <paramref name="w"/> with a name, found by reflection so a tensor added to
    /// <see cref="CpuWeights"/> is compared without anyone remembering to list it here.
    /// </summary>
    public static IEnumerable<(string Name, float[] Values)> Arrays(CpuWeights w)
    {
        foreach (var p in FloatArrays(typeof(CpuWeights)))
            yield return (p.Name, (float[])p.GetValue(w)!);
        for (int i = 0; i < w.Layers.Length; i++)
            foreach (var p in FloatArrays(typeof(CpuLayerWeights)))
                yield return ($"Layers[{i}].{p.Name}", (float[])p.GetValue(w.Layers[i])!);
    }

    private static IEnumerable<PropertyInfo> FloatArrays(Type t) =>
        t.GetProperties().Where(p => p.PropertyType == typeof(float[]));

    /// <summary>The first array whose bits differ, or null when every array is bit-identical (NaN payloads included).</summary>
    public static string? FirstDifference(CpuWeights expected, CpuWeights actual)
    {
        if (expected.Layers.Length != actual.Layers.Length)
            return $"{actual.Layers.Length} layers instead of {expected.Layers.Length}";
        foreach (var ((name, e), (_, a)) in Arrays(expected).Zip(Arrays(actual)))
            if (!MemoryMarshal.AsBytes(e.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(a.AsSpan())))
                return name;
        return null;
    }

    public static void AssertIdentical(CpuWeights expected, CpuWeights actual)
    {
        Assert.That(Arrays(actual).Count(), Is.EqualTo(3 + 12 * expected.Layers.Length), "tensors compared");
        Assert.That(FirstDifference(expected, actual), Is.Null, "first tensor whose bits differ");
    }
}

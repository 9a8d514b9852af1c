using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Presets;

public class ModelPresetTests
{
    [Test]
    public void YarnPresetIsQwqWithTheModelCardsRopeScaling()
    {
        var plain = ModelPresets.Get("qwq-32b");
        var yarn = ModelPresets.Get("qwq-32b-yarn");
        Assert.That(yarn with { RopeScaling = null }, Is.EqualTo(plain));
        Assert.That(yarn.RopeScaling!.Factor, Is.EqualTo(4.0));
        Assert.That(yarn.RopeScaling.OriginalMaxPositionEmbeddings, Is.EqualTo(32768));
        Assert.That(MemoryPlan.ModelMaxPositions(yarn), Is.EqualTo(131072));
        Assert.That(MemoryPlan.ModelMaxPositions(plain), Is.EqualTo(40960));
    }
}

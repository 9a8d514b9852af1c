using QwQ.Cuda.Config;
using QwQ.Cuda.Presets;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Presets;

public class PresetFilesTests
{
    [Test]
    public void Qwq32bCarriesItsTokenizerTemplateAndGenerationConfig()
    {
        string dir = PresetFiles.Extract("qwq-32b")!;
        Assert.That(dir, Is.Not.Null);
        var tok = QwenTokenizer.Load(dir);
        Assert.That(tok.VocabSize, Is.EqualTo(151669));
        Assert.That(tok.VocabSize, Is.LessThanOrEqualTo(ModelPresets.Get("qwq-32b").VocabSize));
        Assert.That(ChatTemplate.Load(dir, out string? warning), Is.Not.Null);
        Assert.That(warning, Is.Null, "the embedded template is QwQ's own");
        var gen = GenerationConfig.Load(Path.Combine(dir, "generation_config.json"));
        Assert.That(gen.EosTokenIds, Is.EquivalentTo(new[] { 151645, 151643 }));
        Assert.That(PresetFiles.Extract("qwq-32b"), Is.EqualTo(dir), "extracted once, then reused");
    }

    [Test]
    public void UnknownPresetHasNoFiles() => Assert.That(PresetFiles.Extract("no-such-preset"), Is.Null);
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Tests.Config;

public class GenerationConfigTests
{
    [Test]
    public void ParsesTheReleaseGenerationConfig()
    {
        var g = GenerationConfig.Load(Path.Combine(TestContext.CurrentContext.TestDirectory, "fixtures", "qwq-32b", "generation_config.json"));
        Assert.Multiple(() =>
        {
            Assert.That(g.EosTokenIds, Is.EqualTo(new[] { 151645, 151643 }));
            Assert.That(g.BosTokenId, Is.EqualTo(151643));
            Assert.That(g.PadTokenId, Is.EqualTo(151643));
            Assert.That(g.Temperature, Is.EqualTo(0.6));
            Assert.That(g.TopP, Is.EqualTo(0.95));
            Assert.That(g.TopK, Is.EqualTo(40));
            Assert.That(g.RepetitionPenalty, Is.EqualTo(1.0));
            Assert.That(g.DoSample, Is.True);
        });
    }

    [Test]
    public void SingleEosIdBecomesAList() =>
        Assert.That(GenerationConfig.Parse("""{"eos_token_id": 7}""", "g").EosTokenIds, Is.EqualTo(new[] { 7 }));

    [Test]
    public void MissingFileGivesDefaults() =>
        Assert.That(GenerationConfig.Load(Path.Combine(Path.GetTempPath(), "nope-qwq", "generation_config.json")),
                    Is.SameAs(GenerationConfig.Default));

    [Test]
    public void MissingFieldsTakeDefaults()
    {
        var g = GenerationConfig.Parse("{}", "g");
        Assert.That((g.Temperature, g.TopP, g.TopK, g.DoSample, g.EosTokenIds.Count), Is.EqualTo((1.0, 1.0, 50, false, 0)));
    }

    [Test]
    public void BadValuesAreNamed()
    {
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("""{"top_p": 1.5}""", "gen.json"))!.Message,
                    Is.EqualTo("gen.json: 'top_p' must be a number in (0, 1], got number 1.5"));
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("""{"eos_token_id": "x"}""", "gen.json"))!.Message,
                    Does.Contain("'eos_token_id'"));
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("""{"eos_token_id": [151645, -1]}""", "gen.json"))!.Message,
                    Is.EqualTo("gen.json: 'eos_token_id' must be an integer from 0 to 16777215 or a list of them, got number -1"));
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("""{"top_k": 1e300}""", "gen.json"))!.Message,
                    Does.Contain("'top_k' must be an integer from 0 to"));
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("""{"temperature": "NaN"}""", "gen.json"))!.Message,
                    Is.EqualTo("gen.json: 'temperature' must be a finite number of at least 0, got string \"NaN\""));
        Assert.That(Assert.Throws<ConfigException>(() => GenerationConfig.Parse("{", "gen.json"))!.Message,
                    Does.StartWith("gen.json: malformed JSON"));
    }
}

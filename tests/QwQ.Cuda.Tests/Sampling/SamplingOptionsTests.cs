using QwQ.Cuda.Errors;
using QwQ.Cuda.Sampling;

namespace QwQ.Cuda.Tests.Sampling;

public class SamplingOptionsTests
{
    private static string Fails(SamplingOptions o, int? vocab = 151669) =>
        Assert.Throws<OptionException>(() => o.Validate(vocab))!.Message;

    [Test]
    public void DefaultsAndGenerationConfigAreValid()
    {
        Assert.DoesNotThrow(() => new SamplingOptions().Validate(151669));
        Assert.DoesNotThrow(() => SamplingOptions.Greedy.Validate(151669));
        var q = SamplingOptions.FromGenerationConfig();
        Assert.Multiple(() =>
        {
            Assert.That(q.Temperature, Is.EqualTo(0.6f));
            Assert.That(q.TopP, Is.EqualTo(0.95f));
            Assert.That(q.TopK, Is.EqualTo(40));
            Assert.That(q.RepetitionPenalty, Is.EqualTo(1.0f));
        });
        var custom = SamplingOptions.FromGenerationConfig(0.7f, 0.8f, 20, 1.05f);
        Assert.That((custom.Temperature, custom.TopP, custom.TopK, custom.RepetitionPenalty), Is.EqualTo((0.7f, 0.8f, 20, 1.05f)));
    }

    [Test]
    public void TemperatureMustBeNonNegative()
    {
        Assert.That(Fails(new() { Temperature = -0.1f }), Does.Contain("temperature").And.Contain(">= 0"));
        Assert.That(Fails(new() { Temperature = float.NaN }), Does.Contain("temperature"));
    }

    [Test]
    public void TopPMustBeInHalfOpenUnitInterval()
    {
        foreach (float p in new[] { 0f, -0.5f, 1.01f, float.NaN })
            Assert.That(Fails(new() { TopP = p }), Does.Contain("top_p").And.Contain("(0, 1]"));
        Assert.DoesNotThrow(() => new SamplingOptions { TopP = 1f }.Validate(10));
        Assert.DoesNotThrow(() => new SamplingOptions { TopP = 1e-6f }.Validate(10));
    }

    [Test]
    public void TopKMustBeNonNegative() =>
        Assert.That(Fails(new() { TopK = -1 }), Does.Contain("top_k").And.Contain(">= 0"));

    [Test]
    public void MinPMustBeInUnitInterval()
    {
        foreach (float p in new[] { -0.01f, 1.5f, float.NaN })
            Assert.That(Fails(new() { MinP = p }), Does.Contain("min_p").And.Contain("[0, 1]"));
        Assert.DoesNotThrow(() => new SamplingOptions { MinP = 1f }.Validate(10));
    }

    [Test]
    public void RepetitionPenaltyMustBePositive()
    {
        foreach (float p in new[] { 0f, -1f, float.NaN })
            Assert.That(Fails(new() { RepetitionPenalty = p }), Does.Contain("repetition_penalty").And.Contain("> 0"));
    }

    [Test]
    public void PresenceAndFrequencyMustBeFinite()
    {
        Assert.That(Fails(new() { PresencePenalty = float.NaN }), Does.Contain("presence_penalty"));
        Assert.That(Fails(new() { FrequencyPenalty = float.PositiveInfinity }), Does.Contain("frequency_penalty"));
    }

    [Test]
    public void LogitBiasIdsMustBeInVocabulary()
    {
        Assert.That(Fails(new() { LogitBias = new Dictionary<int, float> { [151669] = 1f } }),
            Does.Contain("logit_bias").And.Contain("151669").And.Contain("[0, 151668]"));
        Assert.That(Fails(new() { LogitBias = new Dictionary<int, float> { [-1] = 1f } }, null), Does.Contain("logit_bias"));
        Assert.That(Fails(new() { LogitBias = new Dictionary<int, float> { [5] = float.NaN } }), Does.Contain("NaN"));
        Assert.DoesNotThrow(() => new SamplingOptions { LogitBias = new Dictionary<int, float> { [151668] = float.NegativeInfinity } }.Validate(151669));
    }

    [Test]
    public void SamplersValidateOptions()
    {
        var cpu = new CpuSampler(16, 10, 1);
        var logits = new float[16];
        Assert.Throws<OptionException>(() => cpu.Sample(logits, new SamplingOptions { TopP = 0f }, 0));
        Assert.Throws<OptionException>(() => cpu.Sample(logits, new SamplingOptions { LogitBias = new Dictionary<int, float> { [10] = 1f } }, 0));
    }
}

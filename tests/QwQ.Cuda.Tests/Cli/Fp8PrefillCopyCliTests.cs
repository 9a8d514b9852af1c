using QwQ.Cuda.Cli;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--fp8-prefill-copy auto|keep|untile</c> (<see cref="EngineOptions.Fp8PrefillCopy"/>): parsed by name in any case,
/// auto by default, bound into the engine options on every command that loads a model, and one clean error for
/// anything else. What each value plans is <c>Engine/Fp8PrefillCopyPlanTests</c>; the products, <c>Fp8GemmTests</c>.
/// </summary>
public class Fp8PrefillCopyCliTests
{
    [TestCase("keep", Fp8PrefillCopy.Keep)]
    [TestCase("Untile", Fp8PrefillCopy.Untile)]
    [TestCase("AUTO", Fp8PrefillCopy.Auto)]
    public void ParsesEachValueInAnyCase(string value, Fp8PrefillCopy copy) =>
        Assert.That(ModelFlags.Engine("--fp8-prefill-copy", value).Fp8PrefillCopy, Is.EqualTo(copy));

    [Test]
    public void DefaultsToAuto()
    {
        Assert.That(ModelFlags.Engine().Fp8PrefillCopy, Is.EqualTo(Fp8PrefillCopy.Auto));
        Assert.That(new EngineOptions().Fp8PrefillCopy, Is.EqualTo(Fp8PrefillCopy.Auto));
    }

    [Test]
    public void AnythingElseIsAParseErrorNamingTheValues() =>
        Assert.That(ModelFlags.Errors("--fp8-prefill-copy", "always"), Has.One.EqualTo("--fp8-prefill-copy expects one of auto, keep, untile, got 'always'"));

    [Test]
    public void EveryCommandThatLoadsAModelTakesIt()
    {
        var root = CliApp.CreateRootCommand(new CliHost(TextWriter.Null, TextWriter.Null));
        foreach (var name in new[] { "generate", "chat", "serve", "eval", "bench" })
            Assert.That(root.Subcommands.Single(c => c.Name == name).Options.Select(o => o.Name), Does.Contain("--fp8-prefill-copy"), name);
    }
}

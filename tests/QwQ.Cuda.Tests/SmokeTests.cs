using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Tests;

public class SmokeTests
{
    [Test]
    public void QwqExceptionKeepsMessage() =>
        Assert.That(new ConfigException("config.json: field 'x' missing").Message, Does.Contain("'x'"));
}

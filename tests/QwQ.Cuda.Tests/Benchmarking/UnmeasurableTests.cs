using QwQ.Cuda.Benchmarking;

namespace QwQ.Cuda.Tests.Benchmarking;

/// <summary>`qwq bench` names each length it cannot run and why, instead of dropping it ("where memory allows").</summary>
public class UnmeasurableTests
{
    [Test]
    public void LengthsPastWhatASequenceHoldsAreNamedWithTheLimit()
    {
        var settings = new BenchSettings { PrefillLengths = [16384, 32768], DecodeContexts = [32768, 65536, 131072], DecodeSteps = 32 };
        string[] lines = [.. ModelBenchmark.Unmeasurable(settings, capacity: 40960, maxContext: 40960)];
        Assert.That(lines, Has.Length.EqualTo(2));
        Assert.That(lines[0], Does.StartWith("decode at 65536: skipped").And.Contain("65568 positions").And.Contain("at most 40960"));
        Assert.That(lines[1], Does.StartWith("decode at 131072: skipped"));
    }

    [Test]
    public void ADecodeContextNeedsItsStepsOnTop()
    {
        // 40,960 positions hold a 40,960-token prefill, but not a decode at that context plus its steps.
        var settings = new BenchSettings { PrefillLengths = [40960, 40961], DecodeContexts = [40900, 40960], DecodeSteps = 64 };
        string[] lines = [.. ModelBenchmark.Unmeasurable(settings, capacity: 40960, maxContext: 40960)];
        Assert.That(lines, Is.EqualTo(new[]
        {
            "prefill 40961: skipped, a sequence holds at most 40960 positions here",
            "decode at 40900: skipped, it needs 40964 positions (64 steps on top) and a sequence holds at most 40960 here",
            "decode at 40960: skipped, it needs 41024 positions (64 steps on top) and a sequence holds at most 40960 here",
        }));
    }

    [Test]
    public void EverythingThatFitsIsMeasured() =>
        Assert.That(ModelBenchmark.Unmeasurable(new BenchSettings(), capacity: 131072 + 64, maxContext: 131072 + 64), Is.Empty);

    [Test]
    public void TheDefaultsFitQwqsOwnContext() =>
        // the default 128k decode ends at QwQ's last position: with the whole 131,072 it is measured, not skipped
        Assert.That(ModelBenchmark.Unmeasurable(new BenchSettings(), capacity: 131072, maxContext: 131072), Is.Empty);

    [Test]
    public void TheDefaultsAreTheLongContextLengthsAndBf16OnOneH100SkipsThePastFortyThousand()
    {
        // bf16 QwQ-32B leaves room for 40,960 positions on an 80 GB H100: the 64k and 128k decodes are named, not run.
        string[] lines = [.. ModelBenchmark.Unmeasurable(new BenchSettings(), capacity: 40960, maxContext: 40960)];
        Assert.That(lines, Has.Length.EqualTo(2));
        Assert.That(lines[0], Does.StartWith("decode at 65536"), string.Join("\n", lines));
        Assert.That(lines[1], Does.StartWith("decode at 131008"), string.Join("\n", lines));
    }
}

using QwQ.Cuda.Generation;

namespace QwQ.Cuda.Tests.Generation;

public class StopStringMatcherTests
{
    private static (string Emitted, bool Hit) Feed(StopStringMatcher m, params string[] deltas)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var d in deltas)
        {
            bool hit = m.Push(d, out string released);
            sb.Append(released);
            if (hit) return (sb.ToString(), true);
        }
        sb.Append(m.Flush());
        return (sb.ToString(), false);
    }

    [Test]
    public void NoStopsPassesTextThrough()
    {
        var m = new StopStringMatcher([]);
        Assert.That(m.Push("abc", out var r), Is.False);
        Assert.That(r, Is.EqualTo("abc"));
    }

    [Test]
    public void StopInsideOneDeltaReleasesTextBefore()
    {
        var (text, hit) = Feed(new StopStringMatcher(["END"]), "hello END world");
        Assert.That(hit, Is.True);
        Assert.That(text, Is.EqualTo("hello "));
    }

    [Test]
    public void StopSpanningSeveralDeltasIsFoundAndNeverEmitted()
    {
        var m = new StopStringMatcher(["</answer>"]);
        Assert.That(m.Push("42 </", out var r1), Is.False);
        Assert.That(r1, Is.EqualTo("42 "), "'</' could start the stop string and is held back");
        Assert.That(m.Push("ans", out var r2), Is.False);
        Assert.That(r2, Is.Empty);
        Assert.That(m.Push("wer> tail", out var r3), Is.True);
        Assert.That(r3, Is.Empty);
        Assert.That(m.Matched, Is.EqualTo("</answer>"));
    }

    [Test]
    public void HeldTextIsReleasedWhenItTurnsOutNotToBeAStop()
    {
        var m = new StopStringMatcher(["STOP"]);
        Assert.That(m.Push("ST", out var r1), Is.False);
        Assert.That(r1, Is.Empty);
        Assert.That(m.Push("ART", out var r2), Is.False);
        Assert.That(r2, Is.EqualTo("START"));
    }

    [Test]
    public void HeldPrefixIsFlushedAtTheEnd()
    {
        var (text, hit) = Feed(new StopStringMatcher(["###"]), "a#", "#");
        Assert.That(hit, Is.False);
        Assert.That(text, Is.EqualTo("a##"));
    }

    [Test]
    public void EarliestOfSeveralStopsWins()
    {
        var (text, hit) = Feed(new StopStringMatcher(["world", "lo w"]), "hel", "lo world");
        Assert.That(hit, Is.True);
        Assert.That(text, Is.EqualTo("hel"));
    }

    [Test]
    public void OneCharacterPerDeltaFindsTheStop()
    {
        var deltas = "abc<|stop|>def".Select(c => c.ToString()).ToArray();
        var (text, hit) = Feed(new StopStringMatcher(["<|stop|>"]), deltas);
        Assert.That(hit, Is.True);
        Assert.That(text, Is.EqualTo("abc"));
    }
}

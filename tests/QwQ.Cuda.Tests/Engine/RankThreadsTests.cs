using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>
/// The tensor-parallel engine's one thread per rank: every rank's part of a step runs once, all at the same time (an
/// NCCL collective waits on the host for every rank's call, so ranks run one after another would deadlock), errors
/// come back to the caller, and the threads end with <see cref="RankThreads.Dispose"/>.
/// </summary>
public sealed class RankThreadsTests
{
    /// <summary>How long a rank waits for the others: a deadlock becomes a failure instead of a hung test run.</summary>
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void EveryRankRunsExactlyOncePerRun(int ranks)
    {
        using var threads = new RankThreads(ranks);
        Assert.That(threads.Ranks, Is.EqualTo(ranks));
        var counts = new int[ranks];
        for (int run = 1; run <= 3; run++)
        {
            threads.Run(r => Interlocked.Increment(ref counts[r]));
            Assert.That(counts, Is.All.EqualTo(run), $"after run {run}");
        }
    }

    [TestCase(2)]
    [TestCase(4)]
    public void RankZeroRunsOnTheCallerAndEveryOtherRankOnItsOwnLongLivedThread(int ranks)
    {
        using var threads = new RankThreads(ranks);
        int[] ThreadIds()
        {
            var ids = new int[ranks];
            threads.Run(r => ids[r] = Environment.CurrentManagedThreadId);
            return ids;
        }
        int[] first = ThreadIds();
        Assert.That(first[0], Is.EqualTo(Environment.CurrentManagedThreadId), "rank 0 on the caller");
        Assert.That(first, Is.Unique, "one thread per rank");
        // Each rank captures its CUDA graphs on its thread (capture is thread-local): the next step must use the same ones.
        Assert.That(ThreadIds(), Is.EqualTo(first), "the same threads the next time");
    }

    [TestCase(2)]
    [TestCase(4)]
    [TestCase(8)]
    public void AllRanksRunAtTheSameTime(int ranks)
    {
        // Every rank waits at a barrier that opens only when all of them have reached it, as an NCCL collective does:
        // it opens only if the ranks run at once. Several runs, so each run's ranks meet again, not just the first's.
        using var threads = new RankThreads(ranks);
        using var barrier = new Barrier(ranks);
        for (int run = 0; run < 5; run++)
        {
            var met = new bool[ranks];
            threads.Run(r => met[r] = barrier.SignalAndWait(Patience));
            Assert.That(met, Is.All.True, $"run {run}: every rank passed the barrier");
        }
    }

    [Test]
    public void AnExceptionInAnyRankIsRethrownTheLowestRanksFirst()
    {
        using var threads = new RankThreads(4);
        var thrown = new Exception?[4];
        void FailIn(int rank, params int[] failing)
        {
            if (!failing.Contains(rank)) return;
            // The lower failing rank fails last, so "lowest rank" is not "first to fail".
            Thread.Sleep(50 * (4 - rank));
            throw thrown[rank] = new InvalidOperationException($"rank {rank} failed");
        }

        var e = Assert.Throws<InvalidOperationException>(() => threads.Run(r => FailIn(r, 2, 3)))!;
        Assert.That(e, Is.SameAs(thrown[2]), "rank 2's exception itself, not rank 3's");
        Assert.That(e.StackTrace, Does.Contain(nameof(FailIn)), "its stack trace is the rank's");

        e = Assert.Throws<InvalidOperationException>(() => threads.Run(r => FailIn(r, 0, 1, 3)))!;
        Assert.That(e, Is.SameAs(thrown[0]), "rank 0's, thrown on the caller");

        e = Assert.Throws<InvalidOperationException>(() => threads.Run(r => FailIn(r, 3)))!;
        Assert.That(e, Is.SameAs(thrown[3]), "the last rank alone");
    }

    [Test]
    public void AFailedRunWaitsForTheOtherRanksAndLeavesNoErrorForTheNext()
    {
        using var threads = new RankThreads(3);
        int finished = 0;
        // Rank 0 fails at once while the others are still working: Run returns only when they are done, so the
        // caller never starts a step (or frees memory) under a rank that is still running.
        Assert.Throws<InvalidOperationException>(() => threads.Run(r =>
        {
            if (r == 0) throw new InvalidOperationException("rank 0 failed");
            Thread.Sleep(200);
            Interlocked.Increment(ref finished);
        }));
        Assert.That(Volatile.Read(ref finished), Is.EqualTo(2));

        var counts = new int[3];
        Assert.DoesNotThrow(() => threads.Run(r => Interlocked.Increment(ref counts[r])), "the last run's errors are forgotten");
        Assert.That(counts, Is.All.EqualTo(1));
    }

    [Test]
    public void ThousandsOfRunsInARowEachRunEveryRankOnce()
    {
        // A decode loop is one Run per step: a lost or doubled wake-up would show as a wrong count or a hang.
        const int runs = 5000;
        using var threads = new RankThreads(4);
        var counts = new int[4];
        int completed = 0, early = 0;
        for (int i = 0; i < runs; i++)
        {
            int run = i;
            threads.Run(r =>
            {
                // Every rank of the runs before has finished: Run returned only after all of them.
                if (Volatile.Read(ref completed) < 4 * run) Interlocked.Increment(ref early);
                Interlocked.Increment(ref counts[r]);
                Interlocked.Increment(ref completed);
            });
        }
        Assert.That(counts, Is.All.EqualTo(runs));
        Assert.That(early, Is.Zero, "ranks that started before the last run had finished");
    }

    [TestCase(1)]
    [TestCase(4)]
    public void RunAfterDisposeThrowsObjectDisposed(int ranks)
    {
        var threads = new RankThreads(ranks);
        threads.Run(_ => { });
        threads.Dispose();
        Assert.Throws<ObjectDisposedException>(() => threads.Run(_ => Assert.Fail("work ran after Dispose")));
        Assert.DoesNotThrow(threads.Dispose, "a second Dispose does nothing");
    }

    [Test]
    public void DisposeEndsTheRankThreads()
    {
        var threads = new RankThreads(4);
        var rankThreads = new Thread[4];
        threads.Run(r => rankThreads[r] = Thread.CurrentThread);
        // Dispose wakes the waiting threads and joins them; one it failed to wake would hang it, so it gets a deadline.
        Assert.That(Task.Run(threads.Dispose).Wait(Patience), Is.True, "Dispose returned");
        Assert.That(rankThreads.Skip(1).Select(t => t.IsAlive), Is.All.False, "Dispose returns after the threads have ended");
        Assert.That(rankThreads[0].IsAlive, Is.True, "rank 0's thread is the caller's");
    }

    [Test]
    public void WithOneRankRunIsAPlainCallOnTheCaller()
    {
        using var threads = new RankThreads(1);
        var calls = new List<(int Rank, int Thread)>();
        threads.Run(r => calls.Add((r, Environment.CurrentManagedThreadId)));
        Assert.That(calls, Is.EqualTo(new[] { (0, Environment.CurrentManagedThreadId) }));
        var thrown = new InvalidOperationException("rank 0 failed");
        Assert.That(Assert.Throws<InvalidOperationException>(() => threads.Run(_ => throw thrown)), Is.SameAs(thrown));
    }
}

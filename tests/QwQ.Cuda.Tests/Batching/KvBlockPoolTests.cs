using QwQ.Cuda.Batching;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>The host bookkeeping of the paged KV pool: free list, reference counts, copy-on-write, prefix cache.</summary>
public class KvBlockPoolTests
{
    private const int B = KvBlockPool.DefaultBlockSize;

    private static int[] Tokens(int count, int seed) => [.. Enumerable.Range(0, count).Select(i => (i * 7919 + seed * 104729) % 1000)];

    /// <summary>Records the copy-on-write callback's calls.</summary>
    private sealed class Copies
    {
        public List<(int Source, int Destination)> Calls { get; } = [];
        public void Copy(int source, int destination) => Calls.Add((source, destination));
    }

    [Test]
    public void AllocateReleaseAndReferenceCounts()
    {
        var pool = new KvBlockPool(4);
        var taken = pool.Allocate(3);
        Assert.That(taken.Distinct().Count(), Is.EqualTo(3));
        Assert.That((pool.FreeBlocks, pool.UsedBlocks), Is.EqualTo((1, 3)));
        pool.AddRef(taken[0]);
        Assert.That(pool.RefCount(taken[0]), Is.EqualTo(2));
        pool.Release(taken[0]);
        Assert.That(pool.FreeBlocks, Is.EqualTo(1), "still held once");
        pool.Release(taken[0]);
        Assert.That((pool.FreeBlocks, pool.RefCount(taken[0])), Is.EqualTo((2, 0)));
        Assert.Throws<InvalidOperationException>(() => pool.Release(taken[0]));
        Assert.Throws<InvalidOperationException>(() => pool.AddRef(taken[0]));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.RefCount(4));
    }

    [Test]
    public void WhenBlockFreedCompletesOnlyWhenABlockBecomesFree()
    {
        var pool = new KvBlockPool(2);
        int block = pool.Allocate(1)[0];
        pool.AddRef(block);
        var freed = pool.WhenBlockFreed();
        pool.Release(block);
        Assert.That(freed.IsCompleted, Is.False, "still held once");
        pool.Release(block);
        Assert.That(freed.Wait(TimeSpan.FromSeconds(10)), Is.True);
        Assert.That(pool.WhenBlockFreed().IsCompleted, Is.False, "a new wait waits for the next one");
    }

    [Test]
    public void ExhaustionTakesNothingAndSaysWhatIsNeeded()
    {
        var pool = new KvBlockPool(3);
        pool.Allocate(2);
        var e = Assert.Throws<KvPoolExhaustedException>(() => pool.Allocate(2))!;
        Assert.That(pool.FreeBlocks, Is.EqualTo(1), "all or nothing");
        Assert.That(e, Is.InstanceOf<QwQ.Cuda.Errors.QwqException>());
        Assert.That(e.Message, Does.Contain($"needs {2 * B} more positions").And.Contain($"{B} of its {3 * B} positions are free"));
        Assert.That((e.NeededPositions, e.FreePositions), Is.EqualTo((2L * B, 1L * B)));
    }

    [Test]
    public void ReserveGrowsAndTruncateGivesBlocksBack()
    {
        var pool = new KvBlockPool(8);
        var copies = new Copies();
        using var table = new KvBlockTable(pool);
        table.Reserve(0, 100, copies.Copy);
        Assert.That((table.Length, table.Blocks.Length, pool.UsedBlocks), Is.EqualTo((100, 2, 2)));
        table.Reserve(100, 200, copies.Copy);
        Assert.That((table.Length, table.Blocks.Length, pool.UsedBlocks), Is.EqualTo((200, 4, 4)));
        Assert.That(table.BlocksNeeded(200, 257), Is.EqualTo(1));
        table.Truncate(65);
        Assert.That((table.Length, table.Blocks.Length, pool.UsedBlocks), Is.EqualTo((65, 2, 2)));
        table.Truncate(0);
        Assert.That((table.Blocks.Length, pool.FreeBlocks), Is.EqualTo((0, 8)));
        Assert.That(copies.Calls, Is.Empty, "an exclusive table never copies");
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Reserve(1, 2, copies.Copy), "no holes");
        Assert.Throws<ArgumentOutOfRangeException>(() => table.Truncate(1));
    }

    [Test]
    public void ForkSharesEveryBlockAndCopiesOnWrite()
    {
        var pool = new KvBlockPool(8);
        var copies = new Copies();
        using var parent = new KvBlockTable(pool);
        parent.Reserve(0, 100, copies.Copy);
        int[] before = parent.Blocks.ToArray();

        using var child = parent.Fork();
        Assert.That(child.Blocks.ToArray(), Is.EqualTo(before));
        Assert.That((child.Length, pool.UsedBlocks, pool.RefCount(before[1])), Is.EqualTo((100, 2, 2)));

        // The child writes into the shared partial block: it gets a copy, the full block stays shared.
        Assert.That(child.BlocksNeeded(100, 101), Is.EqualTo(1));
        child.Reserve(100, 101, copies.Copy);
        Assert.That(copies.Calls, Has.Count.EqualTo(1));
        Assert.That(copies.Calls[0].Source, Is.EqualTo(before[1]));
        Assert.That(child.Blocks[1], Is.EqualTo(copies.Calls[0].Destination).And.Not.EqualTo(before[1]));
        Assert.That(child.Blocks[0], Is.EqualTo(before[0]));
        Assert.That((pool.RefCount(before[0]), pool.RefCount(before[1]), pool.UsedBlocks), Is.EqualTo((2, 1, 3)));

        // The parent now owns its partial block alone: no copy.
        parent.Reserve(100, 101, copies.Copy);
        Assert.That(copies.Calls, Has.Count.EqualTo(1));
        Assert.That(parent.Blocks.ToArray(), Is.EqualTo(before));

        child.Dispose();
        Assert.That((pool.UsedBlocks, pool.RefCount(before[0])), Is.EqualTo((2, 1)));
    }

    [Test]
    public void ReserveIsAllOrNothing()
    {
        var pool = new KvBlockPool(3);
        var copies = new Copies();
        using var parent = new KvBlockTable(pool);
        parent.Reserve(0, 100, copies.Copy);
        using var child = parent.Fork();
        int[] blocks = child.Blocks.ToArray();
        // A copy of block 1 and two new blocks, with one free.
        Assert.That(child.BlocksNeeded(100, 200), Is.EqualTo(3));
        Assert.Throws<KvPoolExhaustedException>(() => child.Reserve(100, 200, copies.Copy));
        Assert.That(child.Blocks.ToArray(), Is.EqualTo(blocks));
        Assert.That((child.Length, pool.FreeBlocks, pool.RefCount(blocks[1])), Is.EqualTo((100, 1, 2)));
        Assert.That(copies.Calls, Is.Empty);
    }

    [Test]
    public void CachedPrefixIsReusedEvenAfterItsOwnerIsGone()
    {
        var pool = new KvBlockPool(8);
        var copies = new Copies();
        int[] prompt = Tokens(130, seed: 1);

        var first = new KvBlockTable(pool);
        first.Reserve(0, prompt.Length, copies.Copy);
        Assert.That(first.PublishFullBlocks(prompt), Is.EqualTo(2), "two full blocks, the partial third is not cached");
        Assert.That(first.PublishFullBlocks(prompt), Is.EqualTo(0), "nothing new");
        int[] cachedBlocks = first.Blocks[..2].ToArray();
        first.Dispose();
        Assert.That((pool.FreeBlocks, pool.CachedBlocks), Is.EqualTo((8, 2)), "freed but still cached");

        using var second = new KvBlockTable(pool);
        Assert.That(second.AttachCachedPrefix(prompt), Is.EqualTo(128));
        Assert.That(second.Blocks.ToArray(), Is.EqualTo(cachedBlocks), "revived, not recomputed");
        Assert.That(pool.UsedBlocks, Is.EqualTo(2));

        // Never all tokens: the last one must be computed for its logits.
        using var exact = new KvBlockTable(pool);
        Assert.That(exact.AttachCachedPrefix(prompt.AsSpan(0, 128)), Is.EqualTo(64));
        Assert.That(pool.RefCount(cachedBlocks[0]), Is.EqualTo(2));

        // A change in the second block's tokens stops reuse after the first.
        int[] diverging = [.. prompt];
        diverging[100]++;
        using var third = new KvBlockTable(pool);
        Assert.That(third.AttachCachedPrefix(diverging), Is.EqualTo(64));
        using var fourth = new KvBlockTable(pool);
        Assert.That(fourth.AttachCachedPrefix(Tokens(130, seed: 2)), Is.EqualTo(0));
    }

    [Test]
    public void AttachNeedsAnEmptyTable()
    {
        var pool = new KvBlockPool(4);
        using var table = new KvBlockTable(pool);
        table.Reserve(0, 1, (_, _) => { });
        Assert.Throws<InvalidOperationException>(() => table.AttachCachedPrefix(Tokens(100, 1)));
    }

    [Test]
    public void FreedCachedBlocksAreReallocatedLastAndThenForgotten()
    {
        var pool = new KvBlockPool(3);
        int[] prompt = Tokens(65, seed: 3);
        var owner = new KvBlockTable(pool);
        owner.Reserve(0, 65, (_, _) => { });
        owner.PublishFullBlocks(prompt);
        int cached = owner.Blocks[0];
        owner.Dispose();

        // A block freed earlier is handed out ahead of the cached one (least recently freed first)...
        using var a = new KvBlockTable(pool);
        a.Reserve(0, 64, (_, _) => { });
        Assert.That(a.Blocks[0], Is.Not.EqualTo(cached));
        Assert.That(pool.CachedBlocks, Is.EqualTo(1));
        // ...and when it is handed out at last, its entry goes.
        a.Reserve(64, 192, (_, _) => { });
        Assert.That(a.Blocks.ToArray(), Does.Contain(cached));
        Assert.That(pool.CachedBlocks, Is.EqualTo(0));
        a.Dispose();
        using var b = new KvBlockTable(pool);
        Assert.That(b.AttachCachedPrefix(prompt), Is.EqualTo(0));
    }

    [Test]
    public void WritingIntoACachedBlockCopiesItSoTheCacheStaysTrue()
    {
        var pool = new KvBlockPool(4);
        var copies = new Copies();
        int[] prompt = Tokens(65, seed: 4);
        using var table = new KvBlockTable(pool);
        table.Reserve(0, 65, copies.Copy);
        table.PublishFullBlocks(prompt);
        int cached = table.Blocks[0];

        table.Truncate(32);
        table.Reserve(32, 64, copies.Copy); // rewrites positions 32..63 of a cached block
        Assert.That(copies.Calls, Is.EqualTo(new[] { (cached, table.Blocks[0]) }));
        Assert.That(pool.RefCount(cached), Is.EqualTo(0));

        using var other = new KvBlockTable(pool);
        Assert.That(other.AttachCachedPrefix(prompt), Is.EqualTo(64));
        Assert.That(other.Blocks[0], Is.EqualTo(cached), "the cache still holds the original content");
    }


    [Test]
    public void ARewriteThatEvictsCopiesOnlyWhatAnotherTableHolds()
    {
        // Three cached full blocks: the first also held by a fork, the other two by this table alone.
        var pool = new KvBlockPool(8);
        var copies = new Copies();
        int[] prompt = Tokens(3 * B + 1, seed: 5);
        using var table = new KvBlockTable(pool);
        table.Reserve(0, prompt.Length, copies.Copy);
        table.PublishFullBlocks(prompt);
        int[] before = table.Blocks.ToArray();
        using var fork = table.Fork();
        fork.Truncate(B);
        Assert.That(pool.CachedBlocks, Is.EqualTo(3));

        Assert.That(table.BlocksNeeded(0, prompt.Length), Is.EqualTo(3), "keeping the cache copies every cached block");
        Assert.That(table.BlocksNeeded(0, prompt.Length, evictCached: true), Is.EqualTo(1), "evicting copies only the fork's");
        table.Reserve(0, prompt.Length, copies.Copy, evictCached: true);

        Assert.That(copies.Calls, Is.EqualTo(new[] { (before[0], table.Blocks[0]) }));
        Assert.That(table.Blocks[1..].ToArray(), Is.EqualTo(before[1..]), "written in place");
        Assert.That(pool.IsCached(before[0]), Is.True, "the fork's block keeps its entry");
        Assert.That(pool.IsCached(before[1]) || pool.IsCached(before[2]), Is.False);
        Assert.That(fork.Blocks[0], Is.EqualTo(before[0]));

        using var other = new KvBlockTable(pool);
        Assert.That(other.AttachCachedPrefix(prompt), Is.EqualTo(B), "only the first block is still served from the cache");
    }
    [Test]
    public void HashCollisionsNeverShareOtherTokensKv()
    {
        // Every block hashes the same whatever its tokens and parent: only verification can tell them apart.
        var pool = new KvBlockPool(16, B, (_, _) => 42);
        int[] a = Tokens(65, seed: 5);
        using (var t = new KvBlockTable(pool))
        {
            t.Reserve(0, 65, (_, _) => { });
            t.PublishFullBlocks(a);
        }
        int[] b = [.. a];
        b[63]++; // same hash, one token different
        using var tb = new KvBlockTable(pool);
        Assert.That(tb.AttachCachedPrefix(b), Is.EqualTo(0));
        using var ta = new KvBlockTable(pool);
        Assert.That(ta.AttachCachedPrefix(a), Is.EqualTo(64));
    }

    [Test]
    public void AChainedBlockMatchesOnlyAfterItsOwnParent()
    {
        // Hashing ignores the parent, so [A, X] and [B, X] put their X blocks under one key.
        var pool = new KvBlockPool(16, B, (_, tokens) => (ulong)tokens[0]);
        int[] x = Tokens(64, seed: 6);
        int[] ax = [.. Tokens(64, seed: 7), .. x, 1];
        int[] bx = [.. Tokens(64, seed: 8), .. x, 1];
        var blocks = new Dictionary<string, int[]>();
        foreach (var (name, tokens) in new[] { ("ax", ax), ("bx", bx) })
        {
            using var t = new KvBlockTable(pool);
            t.Reserve(0, tokens.Length, (_, _) => { });
            t.PublishFullBlocks(tokens);
            blocks[name] = t.Blocks[..2].ToArray();
        }
        using var again = new KvBlockTable(pool);
        Assert.That(again.AttachCachedPrefix(ax), Is.EqualTo(64), "bx's X block must not follow A");
        Assert.That(again.Blocks[0], Is.EqualTo(blocks["ax"][0]));
        using var bAgain = new KvBlockTable(pool);
        Assert.That(bAgain.AttachCachedPrefix(bx), Is.EqualTo(128));
        Assert.That(bAgain.Blocks.ToArray(), Is.EqualTo(blocks["bx"]));
    }
}

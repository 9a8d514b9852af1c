using System.Runtime.InteropServices;

namespace QwQ.Cuda.Batching;

/// <summary>
/// One sequence's KV blocks in a <see cref="KvBlockPool"/>: block i holds positions [i·B, i·B + B). Grows with
/// <see cref="Reserve"/>, shrinks with <see cref="Truncate"/>, shares with <see cref="Fork"/> and the prefix cache.
/// A block that another table also holds, or that the prefix cache describes, is never written in place: a write
/// into it first copies it (copy-on-write), so whatever else reads it keeps seeing what it saw.
/// Not thread-safe (one owner, like its sequence); the pool it draws from is.
/// </summary>
public sealed class KvBlockTable : IDisposable
{
    private readonly List<int> _blocks = [];                       // [ceil(Length / B)] block ids
    private readonly List<KvBlockPool.PrefixEntry> _prefix = [];   // cache entries of full blocks [0, _prefix.Count), in order
    private bool _disposed;

    public KvBlockTable(KvBlockPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        Pool = pool;
    }

    public KvBlockPool Pool { get; }

    /// <summary>Positions backed by blocks: [0, Length).</summary>
    public int Length { get; private set; }

    /// <summary>The block ids, in position order (valid until the next change to this table).</summary>
    public ReadOnlySpan<int> Blocks => CollectionsMarshal.AsSpan(_blocks);

    /// <summary>Blocks <see cref="Reserve"/>(start, end, …, <paramref name="evictCached"/>) would take from the pool now: new ones plus copies.</summary>
    public int BlocksNeeded(int start, int end, bool evictCached = false)
    {
        var (firstWritten, writtenEnd, fresh) = Plan(start, end);
        int copies = 0;
        for (int i = firstWritten; i < writtenEnd; i++)
            if (Pool.RefCount(_blocks[i]) > 1 || !evictCached && Pool.IsCached(_blocks[i])) copies++;
        return copies + fresh;
    }

    /// <summary>
    /// Makes positions [0, <paramref name="end"/>) backed and every block that positions [<paramref name="start"/>,
    /// <paramref name="end"/>) fall in owned by this table alone and uncached, so they may be written.
    /// <paramref name="copyBlock"/>(source, destination) copies a block's KV (the backend's device copy) when one is
    /// shared. All or nothing: when the pool is short it throws <see cref="KvPoolExhaustedException"/> and changes nothing
    /// (but the cache entries <paramref name="evictCached"/> dropped).
    /// <paramref name="evictCached"/>: a written block that only the prefix cache shares with this table leaves the cache
    /// and is written in place, instead of being copied to keep its entry. For a rewrite of a whole long sequence (the
    /// rope switch by re-rotation), where copying 512 blocks to keep their entries cost more than the rewrite itself.
    /// </summary>
    public void Reserve(int start, int end, Action<int, int> copyBlock, bool evictCached = false)
    {
        ArgumentNullException.ThrowIfNull(copyBlock);
        var (firstWritten, writtenEnd, fresh) = Plan(start, end);
        Span<bool> copy = writtenEnd - firstWritten <= 256 ? stackalloc bool[writtenEnd - firstWritten] : new bool[writtenEnd - firstWritten];
        int copies = 0;
        for (int i = firstWritten; i < writtenEnd; i++)
            if (copy[i - firstWritten] = MustCopy(_blocks[i], evictCached)) copies++;

        // Decided before taking anything: a block found shared here may have been released since, and copying it
        // anyway is merely wasteful, while an exclusive uncached block cannot become shared behind its owner's back.
        int[] taken = Pool.Allocate(copies + fresh);
        int next = 0;
        for (int i = firstWritten; i < writtenEnd; i++)
        {
            if (!copy[i - firstWritten]) continue;
            int source = _blocks[i], destination = taken[next++];
            copyBlock(source, destination);
            _blocks[i] = destination;
            Pool.Release(source);
        }
        for (; next < taken.Length; next++) _blocks.Add(taken[next]);
        if (start < end && _prefix.Count > firstWritten)
            _prefix.RemoveRange(firstWritten, _prefix.Count - firstWritten); // rewritten blocks no longer hold what we published
        Length = Math.Max(Length, end);
    }

    /// <summary>Forgets positions ≥ <paramref name="length"/> and gives back the blocks wholly past it.</summary>
    public void Truncate(int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)length > (uint)Length) throw new ArgumentOutOfRangeException(nameof(length), $"must be in [0, {Length}]");
        int keep = Pool.BlocksFor(length);
        for (int i = keep; i < _blocks.Count; i++) Pool.Release(_blocks[i]);
        _blocks.RemoveRange(keep, _blocks.Count - keep);
        int full = length / Pool.BlockSize;
        if (_prefix.Count > full) _prefix.RemoveRange(full, _prefix.Count - full);
        Length = length;
    }

    /// <summary>A new table holding the same blocks (each reference count + 1), the partial last one too.</summary>
    public KvBlockTable Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var fork = new KvBlockTable(Pool);
        foreach (int b in _blocks)
        {
            Pool.AddRef(b);
            fork._blocks.Add(b);
        }
        fork._prefix.AddRange(_prefix);
        fork.Length = Length;
        return fork;
    }

    /// <summary>
    /// On an empty table: takes the longest run of cached full blocks that hold <paramref name="tokens"/>' first
    /// positions, but never all of <paramref name="tokens"/> (the last one must be computed: its logits start
    /// generation). Returns the positions reused, now <see cref="Length"/>.
    /// </summary>
    public int AttachCachedPrefix(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Length != 0) throw new InvalidOperationException($"the table already holds {Length} positions; a cached prefix attaches only to an empty one");
        int b = Pool.BlockSize, maxBlocks = Math.Max(0, tokens.Length - 1) / b;
        KvBlockPool.PrefixEntry? parent = null;
        for (int i = 0; i < maxBlocks && Pool.TryReuse(parent, tokens.Slice(i * b, b), out var entry); i++)
        {
            _blocks.Add(entry.Block);
            _prefix.Add(entry);
            parent = entry;
        }
        Length = _blocks.Count * b;
        return Length;
    }

    /// <summary>
    /// Registers the full blocks filled since the last call in the prefix cache. <paramref name="tokensInCache"/>:
    /// the tokens at positions [0, n) whose KV this table holds (n ≤ <see cref="Length"/>). Returns how many were registered.
    /// </summary>
    public int PublishFullBlocks(ReadOnlySpan<int> tokensInCache)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokensInCache.Length > Length)
            throw new ArgumentException($"{tokensInCache.Length} tokens but the table backs only {Length} positions", nameof(tokensInCache));
        int b = Pool.BlockSize, full = tokensInCache.Length / b, before = _prefix.Count;
        for (int i = before; i < full; i++)
            _prefix.Add(Pool.Register(_blocks[i], i == 0 ? null : _prefix[i - 1], tokensInCache.Slice(i * b, b)));
        return Math.Max(0, full - before);
    }

    /// <summary>Gives every block back (idempotent).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (int block in _blocks) Pool.Release(block);
        _blocks.Clear();
        _prefix.Clear();
        Length = 0;
    }

    /// <summary>
    /// Whether a block must be copied before this table writes it: another table holds it, or the prefix cache describes
    /// it and may not lose it. Evicting is atomic in the pool: a block another table attached meanwhile is copied.
    /// </summary>
    private bool MustCopy(int block, bool evictCached) =>
        Pool.RefCount(block) > 1 || Pool.IsCached(block) && !(evictCached && Pool.TryEvictHeldAlone(block));

    /// <summary>Blocks [firstWritten, writtenEnd) already held are written by [start, end); fresh more are needed.</summary>
    private (int FirstWritten, int WrittenEnd, int Fresh) Plan(int start, int end)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (start < 0 || start > end || start > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {end}) must start within the {Length} backed positions and not end before it starts");
        int needed = Pool.BlocksFor(end);
        int firstWritten = start / Pool.BlockSize;
        int writtenEnd = start == end ? firstWritten : Math.Min(_blocks.Count, needed);
        return (firstWritten, Math.Max(firstWritten, writtenEnd), Math.Max(0, needed - _blocks.Count));
    }
}

namespace QwQ.Cuda.Batching;

/// <summary>
/// Host bookkeeping of a paged KV pool: <see cref="TotalBlocks"/> blocks of <see cref="BlockSize"/> consecutive
/// positions of one sequence (every layer's K and V). The memory itself belongs to the backend; this class only
/// says which block is free, who shares it (reference counts) and which full blocks hold a known token prefix
/// (the prefix cache). Thread-safe: every member takes one lock.
/// </summary>
/// <remarks>
/// Prefix cache: a full block is registered under a hash chained over (its parent block's hash, its tokens), and
/// the entry remembers its parent entry and its tokens. A lookup hits only when both match exactly, so a hash
/// collision can never hand out KV computed for other tokens: by induction the whole prefix is verified. A block
/// whose reference count drops to 0 goes to the back of the free list but keeps its entry, so a later identical
/// prompt can revive it; the entry is dropped only when the block is handed out again (least recently freed first).
/// </remarks>
public sealed class KvBlockPool
{
    /// <summary>64 positions = the attention kernels' key tile, so one tile is one block.</summary>
    public const int DefaultBlockSize = 64;

    private readonly Lock _lock = new();
    private readonly int[] _refCounts;                  // [TotalBlocks] tables sharing each block
    private readonly LinkedList<int> _free = new();     // blocks with refcount 0, least recently freed first
    private readonly LinkedListNode<int>[] _freeNodes;  // [TotalBlocks] each block's node, linked into _free iff refcount 0
    private readonly PrefixEntry?[] _entries;           // [TotalBlocks] the prefix-cache entry describing a block, if any
    private readonly Dictionary<ulong, PrefixEntry> _byHash = [];
    private readonly BlockHasher _hasher;
    private TaskCompletionSource? _freed;               // completed at the next release to refcount 0; made on demand

    public KvBlockPool(int totalBlocks, int blockSize = DefaultBlockSize) : this(totalBlocks, blockSize, ChainHash) { }

    /// <summary>With a chosen hash function: tests force collisions with it.</summary>
    internal KvBlockPool(int totalBlocks, int blockSize, BlockHasher hasher)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalBlocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        TotalBlocks = totalBlocks;
        BlockSize = blockSize;
        _hasher = hasher;
        _refCounts = new int[totalBlocks];
        _entries = new PrefixEntry?[totalBlocks];
        _freeNodes = new LinkedListNode<int>[totalBlocks];
        for (int b = 0; b < totalBlocks; b++) _freeNodes[b] = _free.AddLast(b);
    }

    public int TotalBlocks { get; }

    public int BlockSize { get; }

    /// <summary>Blocks no table holds (cached ones included: they are reused when nothing else is free).</summary>
    public int FreeBlocks { get { lock (_lock) return _free.Count; } }

    /// <summary>Blocks held by at least one table.</summary>
    public int UsedBlocks => TotalBlocks - FreeBlocks;

    /// <summary>Full blocks in the prefix cache, held or not.</summary>
    public int CachedBlocks { get { lock (_lock) return _byHash.Count; } }

    /// <summary>Blocks covering <paramref name="positions"/> positions.</summary>
    public int BlocksFor(long positions) => checked((int)((positions + BlockSize - 1) / BlockSize));

    /// <summary>How many tables hold <paramref name="block"/> (0: free).</summary>
    public int RefCount(int block)
    {
        lock (_lock) return _refCounts[Check(block)];
    }

    /// <summary>
    /// Takes <paramref name="count"/> free blocks, each with reference count 1, least recently freed first (a cached
    /// block loses its cache entry here). All or nothing: throws <see cref="KvPoolExhaustedException"/> and takes
    /// none when fewer are free.
    /// </summary>
    public int[] Allocate(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_lock)
        {
            if (count > _free.Count) throw new KvPoolExhaustedException(count, _free.Count, TotalBlocks, BlockSize);
            var blocks = new int[count];
            for (int i = 0; i < count; i++)
            {
                int b = _free.First!.Value;
                _free.RemoveFirst();
                Uncache(b);
                _refCounts[b] = 1;
                blocks[i] = b;
            }
            return blocks;
        }
    }

    /// <summary>One more table holds <paramref name="block"/> (it must already be held).</summary>
    public void AddRef(int block)
    {
        lock (_lock)
        {
            if (_refCounts[Check(block)] == 0) throw new InvalidOperationException($"KV block {block} is free; allocate it instead");
            _refCounts[block]++;
        }
    }

    /// <summary>One table fewer holds <paramref name="block"/>; at 0 it is free (and stays cached until reused).</summary>
    public void Release(int block)
    {
        lock (_lock)
        {
            if (_refCounts[Check(block)] == 0) throw new InvalidOperationException($"KV block {block} is already free");
            if (--_refCounts[block] != 0) return;
            _free.AddLast(_freeNodes[block]);
            _freed?.TrySetResult(); // continuations run asynchronously, not under this lock
            _freed = null;
        }
    }

    /// <summary>Completes when a block next becomes free: a scheduler whose requests wait for blocks held elsewhere sleeps on it.</summary>
    public Task WhenBlockFreed()
    {
        lock (_lock) return (_freed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
    }

    /// <summary>Whether <paramref name="block"/> is in the prefix cache (then it is never written in place).</summary>
    public bool IsCached(int block)
    {
        lock (_lock) return _entries[Check(block)] is not null;
    }

    /// <summary>
    /// Drops <paramref name="block"/>'s prefix-cache entry if exactly one table holds it (the caller's, about to rewrite
    /// it in place); false, and nothing changes, when another table holds it too. After it the block cannot become shared
    /// behind its holder's back (only cached blocks are found by <see cref="TryReuse"/>).
    /// </summary>
    internal bool TryEvictHeldAlone(int block)
    {
        lock (_lock)
        {
            if (_refCounts[Check(block)] != 1) return false;
            Uncache(block);
            return true;
        }
    }

    /// <summary>
    /// Registers the full <paramref name="block"/> as holding <paramref name="tokens"/> after the prefix that
    /// <paramref name="parent"/> describes (null: the sequence's first block). Returns the entry that now describes
    /// this content: the block's own, or an equivalent one already cached (the block then stays uncached).
    /// </summary>
    internal PrefixEntry Register(int block, PrefixEntry? parent, ReadOnlySpan<int> tokens)
    {
        if (tokens.Length != BlockSize) throw new ArgumentException($"a cached block holds exactly {BlockSize} tokens", nameof(tokens));
        lock (_lock)
        {
            if (_refCounts[Check(block)] == 0) throw new InvalidOperationException($"KV block {block} is free; only held blocks are cached");
            if (_entries[block] is { } own) return own; // already cached (a shared block published by another table)
            ulong hash = _hasher(parent?.Hash ?? 0, tokens);
            if (_byHash.TryGetValue(hash, out var existing))
            {
                if (existing.Matches(parent, tokens)) return existing;
                _entries[existing.Block] = null; // a collision: the newer content wins the slot, the older block stays valid for its holders
            }
            var entry = new PrefixEntry(hash, block, parent, tokens.ToArray());
            _byHash[hash] = entry;
            _entries[block] = entry;
            return entry;
        }
    }

    /// <summary>
    /// Finds the cached block holding <paramref name="tokens"/> after <paramref name="parent"/>'s prefix and takes a
    /// reference to it (reviving it from the free list if nobody held it).
    /// </summary>
    internal bool TryReuse(PrefixEntry? parent, ReadOnlySpan<int> tokens, out PrefixEntry entry)
    {
        lock (_lock)
        {
            if (tokens.Length == BlockSize
                && _byHash.TryGetValue(_hasher(parent?.Hash ?? 0, tokens), out var found)
                && found.Matches(parent, tokens))
            {
                if (_refCounts[found.Block]++ == 0) _free.Remove(_freeNodes[found.Block]);
                entry = found;
                return true;
            }
            entry = null!;
            return false;
        }
    }

    private void Uncache(int block)
    {
        if (_entries[block] is not { } e) return;
        _entries[block] = null;
        if (_byHash.TryGetValue(e.Hash, out var current) && ReferenceEquals(current, e)) _byHash.Remove(e.Hash);
    }

    private int Check(int block) =>
        (uint)block < (uint)TotalBlocks ? block : throw new ArgumentOutOfRangeException(nameof(block), $"KV block {block} is outside [0, {TotalBlocks})");

    /// <summary>FNV-1a over the parent hash and the tokens, then a splitmix64 finish; entries verify, so speed matters more than strength.</summary>
    internal static ulong ChainHash(ulong parent, ReadOnlySpan<int> tokens)
    {
        ulong h = 14695981039346656037UL ^ parent;
        foreach (int t in tokens) h = (h ^ (uint)t) * 1099511628211UL;
        h ^= h >> 30; h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 27; h *= 0x94D049BB133111EBUL;
        return h ^ (h >> 31);
    }

    /// <summary>
    /// What a cached full block holds: its tokens after the prefix its parent entry describes. Entries are compared
    /// by reference, so an entry whose block was reused can never again be matched as a parent.
    /// </summary>
    internal sealed class PrefixEntry(ulong hash, int block, PrefixEntry? parent, int[] tokens)
    {
        public ulong Hash { get; } = hash;
        public int Block { get; } = block;
        public PrefixEntry? Parent { get; } = parent;
        public int[] Tokens { get; } = tokens; // [BlockSize]

        public bool Matches(PrefixEntry? parent, ReadOnlySpan<int> tokens) =>
            ReferenceEquals(Parent, parent) && tokens.SequenceEqual(Tokens);
    }
}

/// <summary>Hash of a full block given its parent's hash (0 for a sequence's first block).</summary>
internal delegate ulong BlockHasher(ulong parentHash, ReadOnlySpan<int> tokens);

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Batching;

// TEMPORARY minimal version so the GPU engine compiles; replaced by the full pool (prefix cache) from branch e1.
public sealed class KvBlockPool
{
    private readonly Stack<int> _free = new();
    private readonly int[] _refs;
    public KvBlockPool(int totalBlocks, int blockSize = 64)
    {
        (TotalBlocks, BlockSize) = (totalBlocks, blockSize);
        _refs = new int[totalBlocks];
        for (int i = totalBlocks - 1; i >= 0; i--) _free.Push(i);
    }
    public int BlockSize { get; }
    public int TotalBlocks { get; }
    public int FreeBlocks { get { lock (_free) return _free.Count; } }
    internal int Allocate() { lock (_free) { if (_free.Count == 0) throw new KvPoolExhaustedException(BlockSize, 0); int b = _free.Pop(); _refs[b] = 1; return b; } }
    internal void AddRef(int b) { lock (_free) _refs[b]++; }
    internal int RefCount(int b) { lock (_free) return _refs[b]; }
    internal void Release(int b) { lock (_free) { if (--_refs[b] == 0) _free.Push(b); } }
}

public sealed class KvPoolExhaustedException(int needed, int free) : QwqException(
    $"the KV pool is full: {needed} more positions are needed and {free} are free; run fewer sequences at once or shorten them");

public sealed class KvBlockTable(KvBlockPool pool) : IDisposable
{
    private readonly List<int> _blocks = [];
    public IReadOnlyList<int> Blocks => _blocks;
    public void Reserve(int start, int end, Action<int, int> copyBlock)
    {
        int bs = pool.BlockSize;
        int need = (end + bs - 1) / bs - _blocks.Count;
        if (need > pool.FreeBlocks) throw new KvPoolExhaustedException(need * bs, pool.FreeBlocks * bs);
        for (int b = start / bs; b < Math.Min(_blocks.Count, (end + bs - 1) / bs); b++)
            if (pool.RefCount(_blocks[b]) > 1) { int n = pool.Allocate(); copyBlock(_blocks[b], n); pool.Release(_blocks[b]); _blocks[b] = n; }
        while (_blocks.Count * bs < end) _blocks.Add(pool.Allocate());
    }
    public void Truncate(int length)
    {
        int keep = (length + pool.BlockSize - 1) / pool.BlockSize;
        for (int i = _blocks.Count - 1; i >= keep; i--) { pool.Release(_blocks[i]); _blocks.RemoveAt(i); }
    }
    public KvBlockTable Fork() { var t = new KvBlockTable(pool); foreach (int b in _blocks) { pool.AddRef(b); t._blocks.Add(b); } return t; }
    public int AttachCachedPrefix(ReadOnlySpan<int> tokens) => 0;
    public void PublishFullBlocks(ReadOnlySpan<int> tokens) { }
    public void Dispose() => Truncate(0);
}

using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Batching;

/// <summary>
/// The paged KV pool has too few free blocks for what was asked. Raised before anything ran or changed, so the
/// caller may free blocks (finish, truncate or dispose sequences) and retry.
/// </summary>
public sealed class KvPoolExhaustedException(int neededBlocks, int freeBlocks, int totalBlocks, int blockSize)
    : QwqException(
        $"the KV cache pool is full: this needs {(long)neededBlocks * blockSize} more positions ({neededBlocks} blocks of {blockSize}) " +
        $"and {(long)freeBlocks * blockSize} of its {(long)totalBlocks * blockSize} positions are free. Finish, truncate or dispose " +
        "other sequences, shorten the prompt, or give the backend a bigger KV pool (more device memory; kvPoolPositions on the CPU backend).")
{
    public int NeededBlocks { get; } = neededBlocks;
    public int FreeBlocks { get; } = freeBlocks;
    public int TotalBlocks { get; } = totalBlocks;
    public int BlockSize { get; } = blockSize;
    public long NeededPositions => (long)NeededBlocks * BlockSize;
    public long FreePositions => (long)FreeBlocks * BlockSize;
}

using System.Runtime.InteropServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// The one-shot all-reduce of kernels/allreduce.cu: residual += Σ over ranks of each rank's fp32 partial, every rank
/// reading its peers' partials over NVLink (peer access), with a barrier of flags in peer memory. Used by tensor
/// parallel for the small row counts of decode, where NCCL's latency dominates; NCCL stays for large messages.
/// </summary>
internal sealed class AllReduceOps
{
    [KernelEntry] public const string AllReduceAddEntry = "allreduce_add_f32";

    /// <summary>Most ranks the kernel sums (kMaxRanks).</summary>
    public const int MaxRanks = 8;
    /// <summary>Most blocks one call runs; each has its own barrier flags (kMaxBlocks).</summary>
    public const int MaxBlocks = 64;
    private const int Threads = 256;

    /// <summary>Bytes of a rank's barrier state: flags [MaxBlocks, MaxRanks] then epochs [MaxBlocks], uint32, zeroed once.</summary>
    public const long SignalBytes = 4L * MaxBlocks * (MaxRanks + 1);

    /// <summary>Offset of the epochs in a rank's signal buffer.</summary>
    public const long CountersOffset = 4L * MaxBlocks * MaxRanks;

    /// <summary>Every rank's partial buffer and flags, passed by value (kernels/allreduce.cu's PeerPointers).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct PeerPointers
    {
        public fixed ulong Partial[MaxRanks];
        public fixed ulong Flags[MaxRanks];
    }

    private readonly CudaKernel _allReduceAdd;

    public AllReduceOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _allReduceAdd = lib.GetKernel(AllReduceAddEntry);
    }

    /// <summary>
    /// residual fp32 [count] += Σ_p peers.Partial[p] [count] on rank <paramref name="rank"/> of <paramref name="ranks"/>.
    /// Every rank must make the same calls in the same order (the barrier counts them). <paramref name="signal"/>: this
    /// rank's <see cref="SignalBytes"/> (its flags are also in <paramref name="peers"/>).
    /// </summary>
    public unsafe void AllReduceAdd(CudaStream s, in PeerPointers peers, int rank, int ranks, ulong signal, ulong residual, long count)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(residual, 16, nameof(residual));
        LaunchChecks.Aligned(signal, 16, nameof(signal));
        LaunchChecks.Positive(count, nameof(count));
        if (count % 4 != 0) throw new ArgumentException($"the all-reduce sums float4s; {count} elements is not a multiple of 4", nameof(count));
        if (ranks < 2 || ranks > MaxRanks || (uint)rank >= (uint)ranks)
            throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {ranks} (2 to {MaxRanks} ranks)");
        long n4 = count / 4;
        uint blocks = (uint)Math.Clamp((n4 + Threads - 1) / Threads, 1, MaxBlocks);
        ulong counters = signal + CountersOffset;
        PeerPointers p = peers;
        void** args = stackalloc void*[] { &p, &rank, &ranks, &counters, &residual, &n4 };
        _allReduceAdd.Launch(new Dim3(blocks), new Dim3(Threads), 0, s, args);
    }
}

using System.Runtime.InteropServices;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// The one-shot all-reduce of kernels/allreduce.cu: residual += Σ over ranks of each rank's fp32 partial, every rank
/// reading its peers' partials over NVLink (peer access), with a barrier of flags in peer memory. Used by tensor
/// parallel for the small row counts of decode, where NCCL's latency dominates; NCCL stays for large messages.
/// <see cref="AllReduceAddRmsNorm"/> also writes the RMSNorm of the summed rows, the input of the next product.
/// </summary>
internal sealed class AllReduceOps
{
    [KernelEntry] public const string AllReduceAddEntry = "allreduce_add_f32";
    [KernelEntry] public const string AllReduceAddRmsNormEntry = "allreduce_add_rmsnorm_f32";

    /// <summary>Most ranks the kernel sums (kMaxRanks).</summary>
    public const int MaxRanks = 8;
    /// <summary>Most blocks one call runs; each has its own barrier flags (kMaxBlocks). The fused kernel runs one per row, up to 128 rows.</summary>
    public const int MaxBlocks = 128;
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

    private readonly CudaKernel _allReduceAdd, _allReduceAddRmsNorm;

    public AllReduceOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _allReduceAdd = lib.GetKernel(AllReduceAddEntry);
        _allReduceAddRmsNorm = lib.GetKernel(AllReduceAddRmsNormEntry);
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
        CheckRank(rank, ranks);
        long n4 = count / 4;
        uint blocks = (uint)Math.Clamp((n4 + Threads - 1) / Threads, 1, MaxBlocks);
        ulong counters = signal + CountersOffset;
        PeerPointers p = peers;
        void** args = stackalloc void*[] { &p, &rank, &ranks, &counters, &residual, &n4 };
        _allReduceAdd.Launch(new Dim3(blocks), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// The sum of <see cref="AllReduceAdd"/> over <paramref name="rows"/> rows, then the RMSNorm of each summed row:
    /// residual fp32 [rows, hidden] += Σ_p peers.Partial[p] [rows, hidden]; outBf16 [rows, hidden] =
    /// bf16(residual / rms(residual) · weight), with weight bf16 [hidden]. Bit for bit what <see cref="AllReduceAdd"/>
    /// then <see cref="NormOps.ResidualAddRmsNorm"/> (no delta) write. Same call rules as <see cref="AllReduceAdd"/>;
    /// the two kernels share <paramref name="signal"/>.
    /// </summary>
    public unsafe void AllReduceAddRmsNorm(CudaStream s, in PeerPointers peers, int rank, int ranks, ulong signal, ulong residual,
        ulong weight, ulong outBf16, int rows, int hidden, float eps)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(residual, 16, nameof(residual));
        LaunchChecks.Aligned(weight, 8, nameof(weight));
        LaunchChecks.Aligned(outBf16, 8, nameof(outBf16));
        LaunchChecks.Aligned(signal, 16, nameof(signal));
        LaunchChecks.Positive(rows, nameof(rows));
        LaunchChecks.Positive(hidden, nameof(hidden));
        if (hidden % 4 != 0) throw new ArgumentException($"the all-reduce sums float4s; a row of {hidden} is not a multiple of 4", nameof(hidden));
        LaunchChecks.PositiveFinite(eps, nameof(eps));
        CheckRank(rank, ranks);
        // One block per row; the norm kernel's block size, so both sum each row's squares in the same order.
        uint blocks = (uint)Math.Min(rows, MaxBlocks);
        uint threads = NormOps.RowThreads(hidden);
        ulong counters = signal + CountersOffset;
        PeerPointers p = peers;
        void** args = stackalloc void*[] { &p, &rank, &ranks, &counters, &residual, &weight, &outBf16, &rows, &hidden, &eps };
        _allReduceAddRmsNorm.Launch(new Dim3(blocks), new Dim3(threads), 0, s, args);
    }

    private static void CheckRank(int rank, int ranks)
    {
        if (ranks < 2 || ranks > MaxRanks || (uint)rank >= (uint)ranks)
            throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {ranks} (2 to {MaxRanks} ranks)");
    }
}

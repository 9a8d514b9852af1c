using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Matrix-vector products for decode (kernels/gemv.cu): y (+)= W·x with W bf16 [n, k] row-major (HF Linear
/// layout [out, in]), x bf16, fp32 accumulation and output. Bandwidth-bound: each call streams W once with
/// 16-byte loads; see the kernel file for how it keeps DRAM busy.
/// </summary>
internal sealed class GemvOps
{
    [KernelEntry] public const string GemvEntry = "gemv_bf16";
    [KernelEntry] public const string GemvM2Entry = "gemv_m2_bf16";
    [KernelEntry] public const string GemvM3Entry = "gemv_m3_bf16";
    [KernelEntry] public const string GemvM4Entry = "gemv_m4_bf16";
    [KernelEntry] public const string GemvM5Entry = "gemv_m5_bf16";
    [KernelEntry] public const string GemvM6Entry = "gemv_m6_bf16";
    [KernelEntry] public const string GemvM7Entry = "gemv_m7_bf16";
    [KernelEntry] public const string GemvM8Entry = "gemv_m8_bf16";
    [KernelEntry] public const string GemvMmaEntry = "gemv_mma_bf16";

    /// <summary>Most rows of x <see cref="GemvMma"/> serves (the mma's N = 8).</summary>
    public const int MaxMmaBatch = 8;
    /// <summary><see cref="GemvMma"/> walks k in chunks of this many elements.</summary>
    public const int MmaChunk = 64;
    private const int MmaThreads = 4 * 32; // kMmaWarps in kernels/gemv.cu
    private const int MmaRowsPerTile = 16;

    /// <summary>Largest batch <see cref="GemvBatched"/> supports.</summary>
    public const int MaxBatch = 8;

    // Must match kernels/gemv.cu: 4 warps per block, 2 output rows per warp.
    private const int Threads = 128;
    private const int RowsPerBlock = 4 * 2;

    private readonly CudaKernel[] _byBatch; // index m-1
    private readonly CudaKernel _mma;

    public GemvOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _byBatch =
        [
            lib.GetKernel(GemvEntry), lib.GetKernel(GemvM2Entry), lib.GetKernel(GemvM3Entry), lib.GetKernel(GemvM4Entry),
            lib.GetKernel(GemvM5Entry), lib.GetKernel(GemvM6Entry), lib.GetKernel(GemvM7Entry), lib.GetKernel(GemvM8Entry),
        ];
        _mma = lib.GetKernel(GemvMmaEntry);
    }

    /// <summary>
    /// y = W·x (or y += W·x when <paramref name="accumulate"/>, e.g. o_proj / down_proj into the residual).
    /// <paramref name="w"/> bf16 [n, k], <paramref name="x"/> bf16 [k], <paramref name="y"/> fp32 [n].
    /// Requires k % 8 == 0 and 16-byte aligned W and x.
    /// </summary>
    public void Gemv(CudaStream s, ulong w, ulong x, ulong y, int n, int k, bool accumulate) =>
        GemvBatched(s, w, x, y, 1, n, k, accumulate);

    /// <summary>
    /// Small-batch form: y[m, :] (+)= W·x[m, :] for m in [0, <paramref name="batch"/>), batch 1..8, each W byte read
    /// once for all rows of x. <paramref name="x"/> bf16 [batch, k], <paramref name="y"/> fp32 [batch, n].
    /// </summary>
    public unsafe void GemvBatched(CudaStream s, ulong w, ulong x, ulong y, int batch, int n, int k, bool accumulate)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        if (batch < 1 || batch > MaxBatch) throw new ArgumentException($"batch must be in [1, {MaxBatch}] (got {batch}).", nameof(batch));
        LaunchChecks.Positive(n, nameof(n));
        LaunchChecks.Positive(k, nameof(k));
        if (k % 8 != 0) throw new ArgumentException($"k ({k}) must be a multiple of 8 (16-byte rows).", nameof(k));
        int acc = accumulate ? 1 : 0;
        uint blocks = (uint)((n + (long)RowsPerBlock - 1) / RowsPerBlock);
        void** args = stackalloc void*[] { &w, &x, &y, &n, &k, &acc };
        _byBatch[batch - 1].Launch(new Dim3(blocks), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// Blocks splitting each 16-row tile's k range for <see cref="GemvMma"/>: enough blocks to fill
    /// <paramref name="multiprocessors"/> SMs several times over when the tiles alone do not.
    /// </summary>
    public static int MmaSplits(int n, int k, int multiprocessors)
    {
        int tiles = (n + MmaRowsPerTile - 1) / MmaRowsPerTile;
        int target = 8 * multiprocessors;
        return Math.Clamp((target + tiles - 1) / tiles, 1, Math.Max(1, k / MmaChunk / 4));
    }

    /// <summary>
    /// Split counts <see cref="GemvMma"/> may be given for this shape (the load-time tuner tries each): every warp gets
    /// at least one 64-k chunk, the tickets fit (at most 8 × SMs tiles when split) and the partial tiles fit a
    /// <see cref="MmaWorkspaceBytes"/> workspace.
    /// </summary>
    public static IEnumerable<int> MmaSplitCandidates(int n, int k, int multiprocessors) =>
        SplitChoices.Where(splits => MmaSplitsFit(n, k, multiprocessors, splits));

    private static readonly int[] SplitChoices = [1, 2, 3, 4, 6, 8, 12, 16];

    /// <summary>Whether <paramref name="splits"/> is a valid split count for this shape (see <see cref="MmaSplitCandidates"/>).</summary>
    public static bool MmaSplitsFit(int n, int k, int multiprocessors, int splits)
    {
        int tiles = (n + MmaRowsPerTile - 1) / MmaRowsPerTile;
        long partialTiles = (MmaWorkspaceBytes(multiprocessors) - MmaTicketBytes(multiprocessors)) / (128 * 4);
        return splits == 1 || (splits > 1 && splits <= k / MmaChunk / 4 && tiles <= 8 * multiprocessors && (long)tiles * splits <= partialTiles);
    }

    /// <summary>
    /// Bytes of split-k workspace any <see cref="GemvMma"/> call with splits from <see cref="MmaSplits"/> needs:
    /// int32 tickets [8 × SMs] at a fixed place (a split launch has fewer tiles than that), then partial tiles fp32
    /// [tiles, splits, 16 × 8] (tiles × splits stays under twice 8 × SMs). Zero it once; every launch leaves the
    /// tickets zero, and partials are written before they are read.
    /// </summary>
    public static long MmaWorkspaceBytes(int multiprocessors) => MmaTicketBytes(multiprocessors) + 2L * 8 * multiprocessors * 128 * 4;

    /// <summary>Bytes at the start of the split-k workspace that hold the tickets.</summary>
    public static long MmaTicketBytes(int multiprocessors) => (4L * 8 * multiprocessors + 255) / 256 * 256;

    /// <summary>
    /// Tensor-core small batch: y[m, :] (+)= W·x[m, :] for m in [0, <paramref name="batch"/>), batch 1..8, W bf16
    /// [n, k] read once. k must be a multiple of 64. <paramref name="workspace"/>: <see cref="MmaWorkspaceBytes"/>
    /// zeroed bytes for <paramref name="multiprocessors"/>; splits come from <see cref="MmaSplits"/>. Deterministic.
    /// </summary>
    public unsafe void GemvMma(CudaStream s, ulong w, ulong x, ulong y, int batch, int n, int k, bool accumulate,
        ulong workspace, int multiprocessors, int? splitCount = null)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(w, 16, nameof(w));
        LaunchChecks.Aligned(x, 16, nameof(x));
        LaunchChecks.Aligned(y, 4, nameof(y));
        LaunchChecks.Aligned(workspace, 16, nameof(workspace));
        if (batch < 1 || batch > MaxMmaBatch) throw new ArgumentException($"batch must be in [1, {MaxMmaBatch}] (got {batch}).", nameof(batch));
        LaunchChecks.Positive(n, nameof(n));
        if (k <= 0 || k % MmaChunk != 0) throw new ArgumentException($"k ({k}) must be a positive multiple of {MmaChunk}.", nameof(k));
        int tiles = (n + MmaRowsPerTile - 1) / MmaRowsPerTile;
        int splits = splitCount ?? MmaSplits(n, k, multiprocessors);
        if (splitCount is int forced && !MmaSplitsFit(n, k, multiprocessors, forced))
            throw new ArgumentException($"{forced} splits do not fit the workspace for n = {n}, k = {k}.", nameof(splitCount));
        ulong tickets = workspace;
        ulong part = workspace + (ulong)MmaTicketBytes(multiprocessors);
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &w, &x, &y, &part, &tickets, &n, &k, &batch, &acc };
        _mma.Launch(new Dim3((uint)tiles, (uint)splits), new Dim3(MmaThreads), 0, s, args);
    }
}

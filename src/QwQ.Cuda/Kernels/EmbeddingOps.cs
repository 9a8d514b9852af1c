using QwQ.Cuda.Native;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// Row lookups (kernels/embedding.cu, kernels/gather.cu): token embedding into the fp32 residual stream, and
/// gathering bf16 rows so lm_head only runs on the positions whose logits are wanted.
/// </summary>
internal sealed class EmbeddingOps
{
    [KernelEntry] public const string GatherEntry = "embedding_gather_bf16";
    [KernelEntry] public const string GatherRowsEntry = "gather_rows_bf16";
    [KernelEntry] public const string ScatterRowsEntry = "scatter_rows_f32";

    private const int Threads = 256;
    private readonly CudaKernel _gather, _gatherRows, _scatterRows;

    public EmbeddingOps(PtxLibrary lib)
    {
        ArgumentNullException.ThrowIfNull(lib);
        _gather = lib.GetKernel(GatherEntry);
        _gatherRows = lib.GetKernel(GatherRowsEntry);
        _scatterRows = lib.GetKernel(ScatterRowsEntry);
    }

    /// <summary>
    /// out[t, :] = fp32(table[ids[t], :]). <paramref name="table"/> bf16 [vocab, hidden], <paramref name="ids"/>
    /// int32 [tokens] (device memory, so a graph-captured decode can read its token there),
    /// <paramref name="outF32"/> fp32 [tokens, hidden]. An id outside [0, <paramref name="vocab"/>) yields a NaN
    /// row; leave <paramref name="vocab"/> at its default to skip that check.
    /// </summary>
    public unsafe void Gather(CudaStream s, ulong table, ulong ids, ulong outF32, int tokens, int hidden, int vocab = int.MaxValue)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(table, 2, nameof(table));
        LaunchChecks.Aligned(ids, 4, nameof(ids));
        LaunchChecks.Aligned(outF32, 4, nameof(outF32));
        LaunchChecks.Positive(tokens, nameof(tokens));
        LaunchChecks.Positive(hidden, nameof(hidden));
        LaunchChecks.Positive(vocab, nameof(vocab));
        void** args = stackalloc void*[] { &table, &ids, &outF32, &vocab, &hidden };
        _gather.Launch(new Dim3((uint)tokens), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// dst[r, :] = src[rows[r], :] for r in [0, <paramref name="rowCount"/>). <paramref name="src"/> bf16
    /// [sourceRows, hidden], <paramref name="rows"/> int32 [rowCount] (device), <paramref name="dst"/> bf16
    /// [rowCount, hidden]. An index outside [0, <paramref name="sourceRows"/>) yields a NaN row; leave
    /// <paramref name="sourceRows"/> at its default to skip that check.
    /// </summary>
    public unsafe void GatherRowsBf16(CudaStream s, ulong src, ulong rows, ulong dst, int rowCount, int hidden, int sourceRows = int.MaxValue)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 2, nameof(src));
        LaunchChecks.Aligned(rows, 4, nameof(rows));
        LaunchChecks.Aligned(dst, 2, nameof(dst));
        LaunchChecks.Positive(rowCount, nameof(rowCount));
        LaunchChecks.Positive(hidden, nameof(hidden));
        LaunchChecks.Positive(sourceRows, nameof(sourceRows));
        void** args = stackalloc void*[] { &src, &rows, &dst, &sourceRows, &hidden };
        _gatherRows.Launch(new Dim3((uint)rowCount), new Dim3(Threads), 0, s, args);
    }

    /// <summary>
    /// dstRows[r][dstOffset + c] = src[r · srcStride + c] for <paramref name="rows"/> fp32 rows of <paramref name="cols"/>:
    /// every sequence of a step takes its logits row into its own buffer in one launch. <paramref name="dstRows"/>: device
    /// array of <paramref name="rows"/> pointers. Tensor parallel copies each rank's vocabulary shard with its padded
    /// width as <paramref name="srcStride"/> and its first token id as <paramref name="dstOffset"/>; one GPU passes
    /// the vocabulary and 0.
    /// </summary>
    public unsafe void ScatterRowsF32(CudaStream s, ulong src, long srcStride, ulong dstRows, long dstOffset, int rows, int cols)
    {
        LaunchChecks.Stream(s, nameof(s));
        LaunchChecks.Aligned(src, 4, nameof(src));
        LaunchChecks.Aligned(dstRows, 8, nameof(dstRows));
        LaunchChecks.Positive(rows, nameof(rows));
        LaunchChecks.Positive(cols, nameof(cols));
        LaunchChecks.NonNegative(dstOffset, nameof(dstOffset));
        if (srcStride < cols) throw new ArgumentOutOfRangeException(nameof(srcStride), $"a source row of {srcStride} floats cannot hold {cols}");
        void** args = stackalloc void*[] { &src, &srcStride, &dstRows, &dstOffset, &cols };
        _scatterRows.Launch(new Dim3((uint)rows, (uint)((cols + 1023) / 1024)), new Dim3(256), 0, s, args);
    }
}

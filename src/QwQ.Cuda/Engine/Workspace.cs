using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Activation buffers for one forward chunk of up to <see cref="Chunk"/> tokens, shared by prefill and decode
/// (decode uses row 0). Named after the intermediates of the architecture, so any of them can be read back and
/// compared with the CPU reference.
/// </summary>
internal sealed class Workspace : IDisposable
{
    private readonly DeviceArena _arena;
    private readonly DeviceBuffer _logits;

    public int Chunk { get; }
    public DeviceBuffer Ids { get; }   // int32 [chunk]          token ids of the chunk (uploaded from the host)
    public DeviceBuffer Step { get; }  // int32 [4]              decode: token, position, ctx_len (CUDA-graph inputs)
    public ulong Residual { get; }     // fp32 [chunk, hidden]   the residual stream
    public ulong Normed { get; }       // bf16 [chunk, hidden]   RMSNorm output, input of the products
    public ulong Qkv { get; }          // fp32 [chunk, qkv_dim]  q|k|v before bias and RoPE
    public ulong Q { get; }            // bf16 [chunk, nq, D]    q after bias and RoPE
    public ulong Attn { get; }         // bf16 [chunk, nq * D]   attention output
    public ulong GateUp { get; }       // fp32 [chunk, 2 * I]    gate | up
    public ulong Act { get; }          // bf16 [chunk, I]        silu(gate) * up
    public ulong Logits => _logits.Ptr; // fp32 [logit_rows, vocab]
    public ulong LogitRowsIdx => LogitRowsIdxBuffer.Ptr;
    public DeviceBuffer LogitRowsIdxBuffer { get; } // int32 [logit_rows]  chunk rows whose logits are asked for
    public ulong LogitInput { get; }   // bf16 [logit_rows, hidden]
    public ulong DecodeAttnScratch { get; } // split-K partials of decode attention
    public int LogitRows { get; }

    public Workspace(ModelConfig c, int chunk, int maxContext)
    {
        Chunk = chunk;
        LogitRows = LogitRowsFor(c, chunk);
        var sizes = ArenaSizes(c, chunk, maxContext);
        _arena = new DeviceArena(DeviceArena.SizeFor(sizes.Select(s => s.Bytes)));
        ulong Take(string name) => _arena.Take(sizes.First(s => s.Name == name).Bytes);
        Ids = DeviceBuffer.Allocate(IdsBytes(chunk));
        Step = DeviceBuffer.Allocate(StepBytes);
        Residual = Take(nameof(Residual)); Normed = Take(nameof(Normed));
        Qkv = Take(nameof(Qkv)); Q = Take(nameof(Q)); Attn = Take(nameof(Attn)); GateUp = Take(nameof(GateUp));
        Act = Take(nameof(Act));
        _logits = DeviceBuffer.Allocate(LogitsBytes(c, LogitRows));
        LogitRowsIdxBuffer = DeviceBuffer.Allocate(4L * LogitRows);
        LogitInput = Take(nameof(LogitInput)); DecodeAttnScratch = Take(nameof(DecodeAttnScratch));
    }

    // The buffers the host writes or reads are DeviceBuffers of their own (their copies take a DeviceBuffer);
    // everything else lives in one arena.
    private const long StepBytes = 16;
    private static long IdsBytes(int chunk) => 4L * chunk;
    private static long LogitsBytes(ModelConfig c, int rows) => 4L * rows * c.VocabSize;

    private static List<(string Name, long Bytes)> ArenaSizes(ModelConfig c, int chunk, int maxContext)
    {
        long t = chunk, h = c.HiddenSize, r = LogitRowsFor(c, chunk);
        return
        [
            (nameof(Residual), 4 * t * h), (nameof(Normed), 2 * t * h),
            (nameof(Qkv), 4 * t * c.QkvDim), (nameof(Q), 2 * t * c.NumAttentionHeads * c.HeadDim),
            (nameof(Attn), 2 * t * c.NumAttentionHeads * c.HeadDim), (nameof(GateUp), 4 * t * 2 * c.IntermediateSize),
            (nameof(Act), 2 * t * c.IntermediateSize), (nameof(LogitInput), 2 * r * h),
            (nameof(DecodeAttnScratch), AttentionOps.DecodeWorkspaceBytes(c.NumAttentionHeads, c.HeadDim, maxContext)),
        ];
    }

    /// <summary>Copies the first destination.Length floats of the logits (row-major [rows, vocab]) to the host.</summary>
    public void CopyLogits(Span<float> destination) => _logits.CopyToHost(destination);

    /// <summary>
    /// Logit rows one pass can produce: all of them for small test models, ~110 for QwQ's 152064-row vocabulary
    /// (64 MiB of fp32) — generation needs one, tests of big models a few.
    /// </summary>
    public static int LogitRowsFor(ModelConfig c, int chunk) =>
        (int)Math.Clamp((64L << 20) / (4L * c.VocabSize), 1, chunk);

    /// <summary>
    /// Bytes for a chunk of <paramref name="chunk"/> tokens with decode-attention scratch for <paramref name="maxContext"/>.
    /// </summary>
    public static long DeviceBytes(ModelConfig c, int chunk, int maxContext = 131072)
    {
        int rows = LogitRowsFor(c, chunk);
        return DeviceArena.SizeFor(ArenaSizes(c, chunk, maxContext).Select(s => s.Bytes)) +
               DeviceArena.SizeFor([IdsBytes(chunk), StepBytes, LogitsBytes(c, rows), 4L * rows]);
    }

    public void Dispose()
    {
        _arena.Dispose();
        Ids.Dispose();
        _logits.Dispose();
        LogitRowsIdxBuffer.Dispose();
        Step.Dispose();
    }
}

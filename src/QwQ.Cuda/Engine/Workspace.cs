using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// Activation buffers for one forward step of up to <see cref="MaxRows"/> rows (tokens of any sequences), plus the
/// step's inputs (<see cref="Inputs"/>). Named after the intermediates of the architecture, so any of them can be
/// read back and compared with the CPU reference.
/// </summary>
internal sealed class Workspace : IDisposable
{
    /// <summary>Most sequences one step serves (the largest captured decode batch).</summary>
    public const int MaxSequences = 128;

    private readonly DeviceArena _arena;
    private readonly DeviceBuffer _logits;

    public int MaxRows { get; }
    public StepInputs Inputs { get; }
    public ulong Residual { get; }     // fp32 [rows, hidden]   the residual stream
    public ulong Normed { get; }       // bf16 [rows, hidden]   RMSNorm output, input of the products
    // The two products a step writes and reads back, fp32 for decode batches (up to LinearOps.MaxFp32OutRows rows) and
    // bf16 for prefill chunks (LinearOps.TryApplyBf16Out), sized for the larger of the two (ArenaSizes).
    public ulong Qkv { get; }          // fp32 [rows ≤ 128, qkv_dim] | bf16 [rows, qkv_dim]  q|k|v before bias and RoPE
    public ulong Q { get; }            // bf16 [rows, nq, D]    q after bias and RoPE
    public ulong Attn { get; }         // bf16 [rows, nq * D]   attention output
    public ulong GateUp { get; }       // fp32 [rows ≤ 128, 2 * I] | bf16 [rows, 2 * I]  gate | up; also the decode tuner's output scratch
    public ulong Act { get; }          // bf16 [rows, I]        silu(gate) * up
    public ulong Logits => _logits.Ptr; // fp32 [logit_rows, LogitsWidth]  (tensor parallel: this GPU's vocabulary rows)
    public ulong LogitInput { get; }   // bf16 [logit_rows, hidden]
    public ulong DecodeAttnScratch { get; } // split-K partials of paged decode attention
    // fp8 weights only (0 otherwise): a product's input quantized per token for the FP8 GEMM (LinearOps), the widest input
    public ulong Fp8ActCodes { get; }  // e4m3 [rows, max(hidden, q_dim, intermediate)]
    public ulong Fp8ActScales { get; } // fp32 [rows]
    public int LogitRows { get; }
    /// <summary>Logits per row: the vocabulary, or with tensor parallel this GPU's lm_head rows.</summary>
    public int LogitsWidth { get; }

    public Workspace(ModelConfig c, int maxRows, int maxBlocks, int multiprocessors, int? logitsWidth = null, WeightKind linearKind = WeightKind.Bf16)
    {
        MaxRows = maxRows;
        LogitsWidth = logitsWidth ?? c.VocabSize;
        LogitRows = LogitRowsFor(c, maxRows);
        var sizes = ArenaSizes(c, maxRows, maxBlocks, multiprocessors, LogitsWidth, linearKind);
        _arena = new DeviceArena(DeviceArena.SizeFor(sizes.Select(s => s.Bytes)));
        ulong Take(string name) => _arena.Take(sizes.First(s => s.Name == name).Bytes);
        Residual = Take(nameof(Residual)); Normed = Take(nameof(Normed));
        Qkv = Take(nameof(Qkv)); Q = Take(nameof(Q)); Attn = Take(nameof(Attn)); GateUp = Take(nameof(GateUp));
        Act = Take(nameof(Act)); LogitInput = Take(nameof(LogitInput)); DecodeAttnScratch = Take(nameof(DecodeAttnScratch));
        if (linearKind == WeightKind.Fp8) (Fp8ActCodes, Fp8ActScales) = (Take(nameof(Fp8ActCodes)), Take(nameof(Fp8ActScales)));
        _logits = DeviceBuffer.Allocate(4L * LogitRows * LogitsWidth);
        Inputs = new StepInputs(maxRows, Math.Min(MaxSequences, maxRows), LogitRows, maxBlocks,
            AttentionOps.MaxDecodeSplitSlots(multiprocessors, c.NumKeyValueHeads, Math.Min(MaxSequences, maxRows)));
    }

    // The logits are a DeviceBuffer of their own (host copies take a DeviceBuffer); everything else lives in one arena.

    internal static List<(string Name, long Bytes)> ArenaSizes(ModelConfig c, int maxRows, int maxBlocks, int multiprocessors, int logitsWidth,
        WeightKind linearKind)
    {
        long t = maxRows, h = c.HiddenSize, r = LogitRowsFor(c, maxRows);
        long decodeRows = Math.Min(t, LinearOps.MaxFp32OutRows);
        // qkv and gate_up: fp32 for decode batches, bf16 for prefill chunks (half of what fp32 at every row would take:
        // 453 MB of QwQ's gate_up at 4096 rows). GateUp is also LinearOps.TuneDecodeBatches' output scratch, fp32 for a
        // decode batch of any product's outputs, lm_head's (this GPU's vocabulary rows) included.
        long ProductOut(long width) => Math.Max(4 * decodeRows * width, 2 * t * width);
        long widestOut = Math.Max(Math.Max(c.QkvDim, h), Math.Max(2L * c.IntermediateSize, logitsWidth));
        List<(string Name, long Bytes)> sizes =
        [
            (nameof(Residual), 4 * t * h), (nameof(Normed), 2 * t * h),
            (nameof(Qkv), ProductOut(c.QkvDim)), (nameof(Q), 2 * t * c.QDim),
            (nameof(Attn), 2 * t * c.QDim),
            (nameof(GateUp), Math.Max(ProductOut(2L * c.IntermediateSize), 4 * Math.Min(t, MaxSequences) * widestOut)),
            (nameof(Act), 2 * t * c.IntermediateSize), (nameof(LogitInput), 2 * r * h),
            (nameof(DecodeAttnScratch), AttentionOps.DecodePagedWorkspaceBytes(multiprocessors, c.NumAttentionHeads,
                c.NumKeyValueHeads, c.HeadDim, Math.Min(MaxSequences, maxRows))),
        ];
        if (linearKind == WeightKind.Fp8)
            sizes.AddRange([(nameof(Fp8ActCodes), t * MaxProductInput(c)), (nameof(Fp8ActScales), 4 * t)]);
        return sizes;
    }

    /// <summary>The widest input of a layer product (hidden for qkv and gate_up, q_dim for o_proj, intermediate for down_proj).</summary>
    public static int MaxProductInput(ModelConfig c) => Math.Max(c.HiddenSize, Math.Max(c.QDim, c.IntermediateSize));

    /// <summary>Copies the first destination.Length floats of the logits (row-major [rows, vocab]) to the host.</summary>
    public void CopyLogits(Span<float> destination) => _logits.CopyToHost(destination);

    /// <summary>
    /// Logit rows one step can produce: one per sequence of a full batch (128: 78 MB of fp32 for QwQ's 152064-row
    /// vocabulary), and every row of a step for small test models, which compare all positions with the reference.
    /// </summary>
    public static int LogitRowsFor(ModelConfig c, int maxRows) =>
        (int)Math.Min(maxRows, Math.Max(Math.Min(MaxSequences, maxRows), (64L << 20) / (4L * c.VocabSize)));

    /// <summary>Device bytes of a workspace for <paramref name="maxRows"/> rows (an upper bound over GPUs of up to 256 SMs).</summary>
    public static long DeviceBytes(ModelConfig c, int maxRows, int maxBlocks, int multiprocessors = 256, int? logitsWidth = null,
        WeightKind linearKind = WeightKind.Bf16)
    {
        long inputs = 4L * (4 * maxRows + 12L * MaxSequences + 4L * AttentionOps.MaxDecodeSplitSlots(multiprocessors, c.NumKeyValueHeads, MaxSequences)
            + LogitRowsFor(c, maxRows) + (long)MaxSequences * maxBlocks) * 2; // host + device copies
        return DeviceArena.SizeFor(ArenaSizes(c, maxRows, maxBlocks, multiprocessors, logitsWidth ?? c.VocabSize, linearKind).Select(s => s.Bytes)) +
               DeviceArena.SizeFor([4L * LogitRowsFor(c, maxRows) * (logitsWidth ?? c.VocabSize)]) + inputs;
    }

    public void Dispose()
    {
        _arena.Dispose();
        _logits.Dispose();
        Inputs.Dispose();
    }
}

using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>The kernel families the forward pass launches, resolved once from the embedded PTX.</summary>
internal sealed class KernelSet(PtxLibrary lib, int multiprocessors, int? decodeBlocksPerSm = null, bool hopperTma = true,
    bool hopperPingPong = true)
{
    public EmbeddingOps Embedding { get; } = new(lib);
    public NormOps Norm { get; } = new(lib);
    public RopeOps Rope { get; } = new(lib);
    public AttentionOps Attention { get; } = new(lib, multiprocessors, decodeBlocksPerSm: decodeBlocksPerSm, hopperTma: hopperTma,
        hopperPingPong: hopperPingPong);
    public ActivationOps Activation { get; } = new(lib);
    public GemvOps Gemv { get; } = new(lib);
}

/// <summary>
/// The shape of one step: <see cref="Rows"/> tokens from <see cref="DecodeSequences"/> decoding sequences (one row
/// each, first) and <see cref="PrefillSequences"/> sequences with a chunk of prompt (their rows after, at most
/// <see cref="MaxPrefillRows"/> each). <see cref="LogitRows"/> rows get logits. Everything else about the rows (ids,
/// positions, KV slots, each row's rope, block tables) is in <see cref="StepInputs"/>, on the device.
/// </summary>
internal readonly record struct StepShape(int Rows, int DecodeSequences, int PrefillSequences, int MaxPrefillRows, int LogitRows);

/// <summary>A rotary embedding on the device: fp32 inverse frequencies [head_dim / 2] and YaRN's attention factor (1 without).</summary>
internal readonly record struct DeviceRope(ulong InvFreq, float Factor);

/// <summary>
/// The Qwen2 decoder on the GPU, read top to bottom like the architecture: one forward pass over a batch of rows
/// from any set of sequences — decode rows and prefill chunks together — with the KV cache in the paged pool (bf16 or
/// fp8: the pool's layers say which, and the rope and attention ops pick their kernels by it).
/// Every per-row input is read from device memory, so a decode step is captured once per batch size as a CUDA graph
/// and replayed. With tensor parallel every GPU runs this same pass over its share of the heads, the MLP and the
/// vocabulary (<see cref="Sharding.RankShape"/>); <see cref="ResidualSum"/> completes the partial products across GPUs.
/// </summary>
internal sealed class Qwen2Forward
{
    private readonly ModelConfig _c;
    private readonly ModelWeights _w;
    private readonly Workspace _ws;
    private readonly KvPool _kv;
    private readonly KernelSet _k;
    private readonly LinearOps _linear;
    private readonly ResidualSum _sum;
    private readonly DeviceRope[] _ropes; // one, or with adaptive rope scaling plain then YaRN (StepInputs.RopeRows picks per row)
    private readonly float _scale;        // 1/sqrt(head_dim)
    private readonly int _h, _nq, _nkv, _d, _inter, _maxBlocks;

    public Qwen2Forward(ModelConfig c, ModelWeights w, Workspace ws, KvPool kv, KernelSet k, LinearOps linear, ResidualSum sum, DeviceRope[] ropes)
    {
        (_c, _w, _ws, _kv, _k, _linear, _sum, _ropes) = (c, w, ws, kv, k, linear, sum, ropes);
        (_h, _nq, _nkv, _d, _inter) = (c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize);
        _maxBlocks = ws.Inputs.MaxBlocks;
        _scale = 1f / MathF.Sqrt(_d);
    }

    private float Eps => (float)_c.RmsNormEps;

    /// <summary>
    /// Runs the step's rows through every layer, writing their K/V into the pool, and leaves the logits of the
    /// <see cref="StepShape.LogitRows"/> rows named in the inputs in <c>Workspace.Logits</c> [logit_rows, vocab]
    /// (tensor parallel: every GPU's vocabulary rows in <c>ResidualSum.GatheredLogits</c>).
    /// </summary>
    public void Step(CudaStream s, StepShape b)
    {
        StepInputs inp = _ws.Inputs;
        int t = b.Rows;
        // One rope, or with adaptive rope scaling both: each row runs its sequence's (the inputs' rope of each row)
        DeviceRope rope = _ropes[0], alt = _ropes.Length > 1 ? _ropes[1] : default;
        ulong ropeRows = _ropes.Length > 1 ? inp.RopeRows : 0;
        _k.Embedding.Gather(s, _w.Embedding, inp.Ids, _ws.Residual, t, _h);
        // The first norm; every later one comes with the sum before it (with tensor parallel, in the same kernel).
        _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, _w.Layers[0].InputNorm, _ws.Normed, t, _h, Eps);
        for (int l = 0; l < _w.Layers.Length; l++)
        {
            LayerWeights w = _w.Layers[l];
            // Attention block: x += o_proj(attn(rope(qkv(norm(x))))), then the MLP's norm of x
            bool qkvBf16 = QkvProduct(s, w.Qkv, t);
            _k.Rope.QkvBiasRopePaged(s, _ws.Qkv, w.QkvBias, rope.InvFreq, rope.Factor, inp.Positions, inp.Slots, t,
                _nq, _nkv, _d, _ws.Q, _kv.Layer(l), invFreqAlt: alt.InvFreq, factorAlt: alt.Factor, ropeRows: ropeRows, qkvBf16: qkvBf16);
            Attention(s, b, l);
            _sum.AddProductThenNorm(s, w.O, _ws.Attn, t, ResidualSum.Attention, w.PostNorm);
            // MLP block: x += down(silu(gate(norm(x))) * up(norm(x))), then the next layer's input norm (the final norm after the last)
            LinearInput act = GateUpActivation(s, w.GateUp, w.Down, t);
            ulong nextNorm = l + 1 < _w.Layers.Length ? _w.Layers[l + 1].InputNorm : _w.FinalNorm;
            _sum.AddProductThenNorm(s, w.Down, act, t, ResidualSum.Mlp, nextNorm);
        }
        // Normed holds every row's final norm; no row needs logits when a long prompt's chunk is not its last.
        if (b.LogitRows > 0) Logits(s, b.LogitRows);
    }

    /// <summary>
    /// qkv(norm(x)) into the Qkv buffer: bf16 for prefill-sized steps (more than <see cref="LinearOps.MaxFp32OutRows"/>
    /// rows, every GEMM; the bias and RoPE kernel then reads half the bytes, and the product writes half), else fp32.
    /// True when bf16. The workspace holds only that many rows in fp32.
    /// </summary>
    private bool QkvProduct(CudaStream s, LinearWeight qkv, int t)
    {
        if (_linear.TryApplyBf16Out(s, qkv, _ws.Normed, _ws.Qkv, t)) return true;
        _linear.Apply(s, qkv, _ws.Normed, _ws.Qkv, t);
        return false;
    }

    /// <summary>
    /// silu(gate(norm(x))) · up(norm(x)), down_proj's input: bf16 in Act, or where down runs on the FP8 GEMM (fp8
    /// weights' prefill) its per-token e4m3 codes straight from SiLU·mul. Prefill-sized steps have the product write
    /// gate | up in bf16, as for qkv: SiLU·mul then reads half the bytes; decode batches fp32.
    /// </summary>
    private LinearInput GateUpActivation(CudaStream s, LinearWeight gateUp, LinearWeight down, int t)
    {
        if (!_linear.TryApplyBf16Out(s, gateUp, _ws.Normed, _ws.GateUp, t))
        {
            _linear.Apply(s, gateUp, _ws.Normed, _ws.GateUp, t);
            _k.Activation.SiluMul(s, _ws.GateUp, _ws.Act, t, _inter);
            return _ws.Act;
        }
        if (_linear.TrySiluMulIntoFp8Input(s, down, _ws.GateUp, t, out LinearInput fp8)) return fp8;
        _k.Activation.SiluMulBf16(s, _ws.GateUp, _ws.Act, t, _inter);
        return _ws.Act;
    }

    /// <summary>Decode rows by split-K over their blocks; prefill chunks by flash attention over theirs.</summary>
    private void Attention(CudaStream s, StepShape b, int layer)
    {
        StepInputs inp = _ws.Inputs;
        KvLayer kv = _kv.Layer(layer);
        if (b.DecodeSequences > 0)
            _k.Attention.DecodePaged(s, _ws.Q, kv, _ws.Attn, _ws.DecodeAttnScratch, inp.Tables(0), inp.SplitRows,
                inp.SplitWork, b.DecodeSequences, _maxBlocks, _nq, _nkv, _d, _scale);
        if (b.PrefillSequences > 0)
            _k.Attention.PrefillPaged(s, _ws.Q, kv, _ws.Attn, inp.SeqInfo(b.DecodeSequences),
                inp.Tables(b.DecodeSequences), b.PrefillSequences, b.MaxPrefillRows, _maxBlocks, _nq, _nkv, _d, _scale);
    }

    /// <summary>Gather of the rows that need logits from the final norm (in Normed), lm_head → fp32 [rows, vocab] (or its shards).</summary>
    private void Logits(CudaStream s, int logitRows)
    {
        _k.Embedding.GatherRowsBf16(s, _ws.Normed, _ws.Inputs.LogitRows, _ws.LogitInput, logitRows, _h);
        _linear.Apply(s, _w.LmHead, _ws.LogitInput, _ws.Logits, logitRows);
        _sum.GatherLogits(s, _ws.Logits, logitRows);
    }
}

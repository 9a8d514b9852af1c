using QwQ.Cuda.Config;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>The kernel families the forward pass launches, resolved once from the embedded PTX.</summary>
internal sealed class KernelSet(PtxLibrary lib, int multiprocessors)
{
    public EmbeddingOps Embedding { get; } = new(lib);
    public NormOps Norm { get; } = new(lib);
    public RopeOps Rope { get; } = new(lib);
    public AttentionOps Attention { get; } = new(lib, multiprocessors);
    public ActivationOps Activation { get; } = new(lib);
    public GemvOps Gemv { get; } = new(lib);
}

/// <summary>
/// The Qwen2 decoder on the GPU, read top to bottom like the architecture. Two explicit paths:
/// <see cref="Prefill"/> (many tokens: cuBLAS GEMMs, flash attention) and <see cref="Decode"/> (one token:
/// bandwidth-bound GEMVs, split-K attention, every input read from device memory so the step can be
/// captured once as a CUDA graph and replayed).
/// </summary>
internal sealed class Qwen2Forward
{
    private readonly ModelConfig _c;
    private readonly ModelWeights _w;
    private readonly Workspace _ws;
    private readonly KernelSet _k;
    private readonly Cublas _blas;
    private readonly CublasLt? _lt;      // set: prefill products go through cuBLASLt instead of cublasGemmEx
    private readonly ulong _invFreq;      // fp32 [head_dim / 2]
    private readonly float _ropeFactor;   // YaRN attention factor on cos/sin (1 without YaRN)
    private readonly float _scale;        // 1/sqrt(head_dim)
    private readonly int _h, _nq, _nkv, _d, _qkv, _inter;

    public Qwen2Forward(ModelConfig c, ModelWeights w, Workspace ws, KernelSet k, Cublas blas, CublasLt? lt, ulong invFreq, float ropeFactor)
    {
        (_c, _w, _ws, _k, _blas, _lt, _invFreq, _ropeFactor) = (c, w, ws, k, blas, lt, invFreq, ropeFactor);
        (_h, _nq, _nkv, _d, _qkv, _inter) = (c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.QkvDim, c.IntermediateSize);
        _scale = 1f / MathF.Sqrt(_d);
    }

    private float Eps => (float)_c.RmsNormEps;

    /// <summary>Row-major C[m,n] (fp32) = A[m,k] (bf16) · B[n,k]ᵀ (bf16) + beta · C.</summary>
    private void Gemm(CudaStream s, ulong a, ulong b, ulong c, int m, int n, int k, float beta = 0f)
    {
        if (_lt is null) _blas.GemmBf16NT(a, b, c, m, n, k, beta: beta);
        else _lt.MatmulBf16NT(s, a, b, c, m, n, k, beta);
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> tokens (ids already in <c>Workspace.Ids</c>) at positions
    /// <paramref name="startPos"/>.. through every layer, appending their K/V to <paramref name="cache"/>.
    /// Leaves the final residual stream in <c>Workspace.Residual</c> [tokens, hidden].
    /// </summary>
    public void Prefill(CudaStream s, KvCache cache, int tokens, int startPos)
    {
        int t = tokens;
        _k.Embedding.Gather(s, _w.Embedding, _ws.Ids.Ptr, _ws.Residual, t, _h);
        for (int l = 0; l < _w.Layers.Length; l++)
        {
            LayerWeights w = _w.Layers[l];
            // Attention block: x += o_proj(attn(rope(qkv(norm(x)))))
            _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, w.InputNorm, _ws.Normed, t, _h, Eps);
            Gemm(s, _ws.Normed, w.QkvWeight, _ws.Qkv, t, _qkv, _h);
            _k.Rope.QkvBiasRopeAppend(s, _ws.Qkv, w.QkvBias, _invFreq, _ropeFactor, startPos, t, _nq, _nkv, _d,
                _ws.Q, cache.K(l), cache.V(l), cache.Capacity);
            _k.Attention.Prefill(s, _ws.Q, cache.K(l), cache.V(l), _ws.Attn, t, startPos, _nq, _nkv, _d, cache.Capacity, _scale);
            Gemm(s, _ws.Attn, w.OWeight, _ws.Residual, t, _h, _nq * _d, beta: 1f); // residual add fused (beta = 1)
            // MLP block: x += down(silu(gate(norm(x))) * up(norm(x)))
            _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, w.PostNorm, _ws.Normed, t, _h, Eps);
            Gemm(s, _ws.Normed, w.GateUp, _ws.GateUp, t, 2 * _inter, _h);
            _k.Activation.SiluMul(s, _ws.GateUp, _ws.Act, t, _inter);
            Gemm(s, _ws.Act, w.Down, _ws.Residual, t, _h, _inter, beta: 1f);
        }
    }

    /// <summary>
    /// One decode step for the token in <c>Workspace.Step</c> = {token, position, ctx_len}; ends with the logits in
    /// <c>Workspace.Logits</c> row 0. No host values change between steps, so this is captured as a CUDA graph.
    /// </summary>
    public void Decode(CudaStream s, KvCache cache)
    {
        ulong token = _ws.Step.Ptr, position = _ws.Step.Ptr + 4, ctxLen = _ws.Step.Ptr + 8;
        _k.Embedding.Gather(s, _w.Embedding, token, _ws.Residual, 1, _h);
        for (int l = 0; l < _w.Layers.Length; l++)
        {
            LayerWeights w = _w.Layers[l];
            _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, w.InputNorm, _ws.Normed, 1, _h, Eps);
            _k.Gemv.Gemv(s, w.QkvWeight, _ws.Normed, _ws.Qkv, _qkv, _h, accumulate: false);
            _k.Rope.QkvBiasRopeAppendAt(s, _ws.Qkv, w.QkvBias, _invFreq, _ropeFactor, position, _nq, _nkv, _d,
                _ws.Q, cache.K(l), cache.V(l), cache.Capacity);
            _k.Attention.DecodeDevice(s, _ws.Q, cache.K(l), cache.V(l), _ws.Attn, _ws.DecodeAttnScratch, ctxLen,
                _nq, _nkv, _d, cache.Capacity, _scale);
            _k.Gemv.Gemv(s, w.OWeight, _ws.Attn, _ws.Residual, _h, _nq * _d, accumulate: true);
            _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, w.PostNorm, _ws.Normed, 1, _h, Eps);
            _k.Gemv.Gemv(s, w.GateUp, _ws.Normed, _ws.GateUp, 2 * _inter, _h, accumulate: false);
            _k.Activation.SiluMul(s, _ws.GateUp, _ws.Act, 1, _inter);
            _k.Gemv.Gemv(s, w.Down, _ws.Act, _ws.Residual, _h, _inter, accumulate: true);
        }
        LastLogits(s, row: 0);
    }

    /// <summary>Final norm of residual row <paramref name="row"/> and the lm_head GEMV: logits fp32 [vocab] in row 0.</summary>
    public void LastLogits(CudaStream s, int row)
    {
        _k.Norm.ResidualAddRmsNorm(s, _ws.Residual + (ulong)(4L * row * _h), 0, _w.FinalNorm, _ws.LogitInput, 1, _h, Eps);
        _k.Gemv.Gemv(s, _w.LmHead, _ws.LogitInput, _ws.Logits, _c.VocabSize, _h, accumulate: false);
    }

    /// <summary>
    /// Logits for the chunk rows in <c>Workspace.LogitRowsIdx</c> (<paramref name="rows"/> of them, at most
    /// <c>Workspace.LogitRows</c>): final norm of the whole chunk, gather, one GEMM → fp32 [rows, vocab].
    /// </summary>
    public void LogitsForRows(CudaStream s, int tokens, int rows)
    {
        _k.Norm.ResidualAddRmsNorm(s, _ws.Residual, 0, _w.FinalNorm, _ws.Normed, tokens, _h, Eps);
        _k.Embedding.GatherRowsBf16(s, _ws.Normed, _ws.LogitRowsIdx, _ws.LogitInput, rows, _h);
        Gemm(s, _ws.LogitInput, _w.LmHead, _ws.Logits, rows, _c.VocabSize, _h);
    }
}

using System.Numerics;
using System.Runtime.InteropServices;

namespace QwQ.Cuda.Model.Reference;

/// <summary>
/// Plain fp32 CPU versions of every op in the Qwen2 forward pass, in the same conventions as the GPU
/// kernels (row-major, HF layouts). GPU kernel tests use these as their reference, so they favour
/// being obviously right over being fast. Results are deterministic: every output element is computed
/// by one thread in a fixed order, whatever the scheduling.
/// </summary>
public static class CpuOps
{
    /// <summary>y[t] = w ⊙ x[t] / sqrt(mean(x[t]²) + eps) for each row of <c>[rows, hidden]</c> (HF Qwen2RMSNorm).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, Span<float> y, int hidden)
    {
        CheckRows(x.Length, hidden, nameof(x));
        if (w.Length != hidden) throw new ArgumentException($"weight has {w.Length} elements, expected {hidden}", nameof(w));
        if (y.Length != x.Length) throw new ArgumentException("y must be the same size as x", nameof(y));

        for (int row = 0; row < x.Length / hidden; row++)
        {
            var xr = x.Slice(row * hidden, hidden);
            var yr = y.Slice(row * hidden, hidden);
            double sumSquares = 0;
            for (int i = 0; i < hidden; i++) sumSquares += (double)xr[i] * xr[i];
            float variance = (float)(sumSquares / hidden);
            float inv = (float)(1.0 / Math.Sqrt(variance + eps));
            for (int i = 0; i < hidden; i++) yr[i] = w[i] * (xr[i] * inv);
        }
    }

    /// <summary>
    /// y[m, n] = Σ_k x[m, k] · w[n, k] (+ bias[n]): a Linear layer with the HF <c>[out, in]</c> weight.
    /// x <c>[M, K]</c>, w <c>[N, K]</c>, bias <c>[N]</c> or empty, y <c>[M, N]</c>. Parallel over (row, column block).
    /// </summary>
    public static unsafe void MatMulNT(ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> bias,
                                       Span<float> y, int m, int n, int k)
    {
        if ((long)m * k != x.Length) throw new ArgumentException($"x has {x.Length} elements, expected {m}x{k}", nameof(x));
        if ((long)n * k != w.Length) throw new ArgumentException($"w has {w.Length} elements, expected {n}x{k}", nameof(w));
        if (!bias.IsEmpty && bias.Length != n) throw new ArgumentException($"bias has {bias.Length} elements, expected {n}", nameof(bias));
        if ((long)m * n != y.Length) throw new ArgumentException($"y has {y.Length} elements, expected {m}x{n}", nameof(y));

        const int block = 64;
        int blocksPerRow = (n + block - 1) / block;
        fixed (float* px = x, pw = w, pb = bias, py = y)
        {
            nint xa = (nint)px, wa = (nint)pw, ba = bias.IsEmpty ? 0 : (nint)pb, ya = (nint)py;
            Parallel.For(0, (long)m * blocksPerRow, item =>
            {
                int row = (int)(item / blocksPerRow);
                int col0 = (int)(item % blocksPerRow) * block;
                int col1 = Math.Min(col0 + block, n);
                var xr = new ReadOnlySpan<float>((float*)xa + (long)row * k, k);
                for (int col = col0; col < col1; col++)
                {
                    var wr = new ReadOnlySpan<float>((float*)wa + (long)col * k, k);
                    float acc = Dot(xr, wr);
                    if (ba != 0) acc += ((float*)ba)[col];
                    ((float*)ya)[(long)row * n + col] = acc;
                }
            });
        }
    }

    /// <summary>fp32 dot product with a fixed (vector-width-strided) summation order.</summary>
    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int i = 0;
        float sum = 0;
        if (Vector.IsHardwareAccelerated && a.Length >= Vector<float>.Count)
        {
            var va = MemoryMarshal.Cast<float, Vector<float>>(a);
            var vb = MemoryMarshal.Cast<float, Vector<float>>(b[..a.Length]);
            var acc = Vector<float>.Zero;
            for (int v = 0; v < va.Length; v++) acc += va[v] * vb[v];
            sum = Vector.Sum(acc);
            i = va.Length * Vector<float>.Count;
        }
        for (; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>
    /// In-place HF rotary embedding (rotate_half: pairs (i, i + D/2)) on x <c>[tokens, heads, D]</c>; token t is at
    /// position startPos + t. angle = pos · invFreq[i] in fp32; cos and sin are scaled by the YaRN attention factor.
    /// </summary>
    public static void ApplyRope(Span<float> x, int tokens, int heads, int headDim, int startPos,
                                 ReadOnlySpan<float> invFreq, float attentionFactor)
    {
        int half = headDim / 2;
        if (x.Length != tokens * heads * headDim) throw new ArgumentException("x must be [tokens, heads, headDim]", nameof(x));
        if (invFreq.Length != half) throw new ArgumentException($"invFreq must have {half} elements", nameof(invFreq));

        Span<float> cos = stackalloc float[half];
        Span<float> sin = stackalloc float[half];
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = Rope.Angle(startPos + t, invFreq[i]);
                cos[i] = (float)Math.Cos(angle) * attentionFactor;
                sin[i] = (float)Math.Sin(angle) * attentionFactor;
            }
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((t * heads + h) * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cos[i] - x2 * sin[i];
                    v[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }

    /// <summary>
    /// Causal grouped-query attention. q <c>[T, nq, D]</c>; k, v <c>[S, nkv, D]</c> hold positions 0..S-1;
    /// query t is at position startPos + t and attends to keys 0..startPos + t. Query head h reads KV head
    /// h / (nq / nkv) (HF repeat_kv). out <c>[T, nq, D]</c> = softmax(q·kᵀ·scale) · v.
    /// </summary>
    public static unsafe void CausalAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
                                              Span<float> output, int tokens, int startPos, int nq, int nkv,
                                              int headDim, float scale)
    {
        if (nkv <= 0 || nq % nkv != 0) throw new ArgumentException("nkv must divide nq", nameof(nkv));
        if (q.Length != tokens * nq * headDim) throw new ArgumentException("q must be [tokens, nq, D]", nameof(q));
        if (output.Length != q.Length) throw new ArgumentException("out must be [tokens, nq, D]", nameof(output));
        int kvRow = nkv * headDim;
        if (k.Length % kvRow != 0 || v.Length != k.Length) throw new ArgumentException("k and v must be [S, nkv, D]", nameof(k));
        int keysAvailable = k.Length / kvRow;
        if (startPos < 0 || startPos + tokens > keysAvailable)
            throw new ArgumentException($"keys cover {keysAvailable} positions, queries need {startPos + tokens}", nameof(k));

        int group = nq / nkv;
        fixed (float* pq = q, pk = k, pv = v, po = output)
        {
            nint qa = (nint)pq, ka = (nint)pk, va = (nint)pv, oa = (nint)po;
            Parallel.For(0, tokens * nq, item =>
            {
                int t = item / nq, h = item % nq, kvHead = h / group;
                int keys = startPos + t + 1;
                var qv = new ReadOnlySpan<float>((float*)qa + (long)item * headDim, headDim);
                var o = new Span<float>((float*)oa + (long)item * headDim, headDim);

                var scores = new float[keys];
                float max = float.NegativeInfinity;
                for (int s = 0; s < keys; s++)
                {
                    var kv = new ReadOnlySpan<float>((float*)ka + (long)s * kvRow + kvHead * headDim, headDim);
                    scores[s] = Dot(qv, kv) * scale;
                    max = Math.Max(max, scores[s]);
                }
                double sum = 0;
                for (int s = 0; s < keys; s++)
                {
                    scores[s] = MathF.Exp(scores[s] - max);
                    sum += scores[s];
                }
                float invSum = (float)(1.0 / sum);

                o.Clear();
                for (int s = 0; s < keys; s++)
                {
                    float p = scores[s] * invSum;
                    var vv = new ReadOnlySpan<float>((float*)va + (long)s * kvRow + kvHead * headDim, headDim);
                    for (int d = 0; d < headDim; d++) o[d] += p * vv[d];
                }
            });
        }
    }

    /// <summary>out = silu(gate) ⊙ up, silu(g) = g / (1 + e^-g): the SwiGLU activation of the MLP.</summary>
    public static void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        if (up.Length != gate.Length || output.Length != gate.Length) throw new ArgumentException("gate, up and out must be the same size");
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            output[i] = (float)(g / (1.0 + Math.Exp(-g))) * up[i];
        }
    }

    /// <summary>out[t] = table[tokens[t]]: table <c>[vocab, hidden]</c>, out <c>[T, hidden]</c>.</summary>
    public static void Embedding(ReadOnlySpan<int> tokens, ReadOnlySpan<float> table, Span<float> output, int hidden)
    {
        CheckRows(table.Length, hidden, nameof(table));
        int vocab = table.Length / hidden;
        if (output.Length != tokens.Length * hidden) throw new ArgumentException("out must be [tokens, hidden]", nameof(output));
        for (int t = 0; t < tokens.Length; t++)
        {
            int id = tokens[t];
            if ((uint)id >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {id} is outside the vocabulary [0, {vocab})");
            table.Slice(id * hidden, hidden).CopyTo(output.Slice(t * hidden, hidden));
        }
    }

    /// <summary>x += delta (the residual connection).</summary>
    public static void AddInPlace(Span<float> x, ReadOnlySpan<float> delta)
    {
        if (x.Length != delta.Length) throw new ArgumentException("x and delta must be the same size");
        for (int i = 0; i < x.Length; i++) x[i] += delta[i];
    }

    /// <summary>Index of the largest value; the first on ties (like torch.argmax).</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    private static void CheckRows(int length, int width, string name)
    {
        if (width <= 0 || length % width != 0) throw new ArgumentException($"length {length} is not a multiple of {width}", name);
    }
}

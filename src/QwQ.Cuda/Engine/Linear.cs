using QwQ.Cuda.Kernels;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>How a linear layer's weight is stored; each kind has its kernels in <see cref="LinearOps"/>.</summary>
public enum WeightKind
{
    /// <summary>bf16 [out, in], as the release stores it.</summary>
    Bf16,
    /// <summary>e4m3 [out, in] with one fp32 scale per output row (per channel), in the tile layout of kernels/fp8.cuh.</summary>
    Fp8,
    /// <summary>
    /// INT4 in AutoAWQ's format (an AWQ checkpoint's weights, or <c>--quantize int4</c>): 4-bit codes [out, in] in the
    /// int4 layout of kernels/int4.cuh, and per group of <see cref="LinearWeight.Group"/> inputs and output row an fp16
    /// scale and a zero point in one 32-bit word; w = (q − z) · s.
    /// </summary>
    Int4Awq,
}

/// <summary>
/// A linear layer's weight on the device: y[rows, Out] (+)= x[rows, In] · Wᵀ, W in HF's [out, in] layout. It knows
/// its kind, shape and scales, so the forward pass never repeats a size (candle's typed linear; gpt-fast swaps the
/// layer). <see cref="Scales"/>: fp32 [Out] for <see cref="WeightKind.Fp8"/>; for <see cref="WeightKind.Int4Awq"/> the
/// scale/zero words [In / Group, Out rounded up to 16]; 0 for bf16. <see cref="Group"/>: INT4 inputs per scale.
/// </summary>
internal readonly record struct LinearWeight(ulong Weight, int Out, int In, WeightKind Kind = WeightKind.Bf16, ulong Scales = 0,
    int Group = LinearWeight.Int4GroupSize)
{
    /// <summary>Bytes of the weight matrix itself.</summary>
    public long Bytes => Kind switch
    {
        WeightKind.Bf16 => 2L * Out * In,
        WeightKind.Fp8 => Fp8Ops.TiledBytes(Out, In),
        WeightKind.Int4Awq => Int4Ops.CodeBytes(Out, In),
        _ => throw new NotSupportedException(Kind.ToString()),
    };

    /// <summary>Bytes of its scales (none for bf16); for INT4 the zero points too.</summary>
    public long ScaleBytes => Kind switch
    {
        WeightKind.Fp8 => 4L * Out,
        WeightKind.Int4Awq => Int4Ops.ScaleZeroBytes(Out, In, Group),
        _ => 0,
    };

    /// <summary>Inputs per INT4 scale group by default: QwQ-32B-AWQ's and <c>--quantize int4</c>'s 128.</summary>
    public const int Int4GroupSize = Weights.Quantization.Int4Rtn.DefaultGroupSize;
}

/// <summary>
/// A product's input x [rows, in]: bf16 (<see cref="Bf16"/>, what every path reads), or for an fp8 weight on the FP8
/// GEMM its per-token e4m3 codes [rows, in] and fp32 scales [rows] already made (<see cref="Fp8"/>: prefill's down_proj
/// input straight from SiLU·mul, <see cref="LinearOps.TrySiluMulIntoFp8Input"/>). A bf16 address converts to one.
/// </summary>
internal readonly record struct LinearInput(ulong Bf16, ulong Fp8Codes = 0, ulong Fp8Scales = 0)
{
    public bool IsFp8 => Fp8Codes != 0;
    public static implicit operator LinearInput(ulong bf16) => new(bf16);
    public static LinearInput Fp8(ulong codes, ulong scales) => new(0, codes, scales);
}

/// <summary>
/// The one place that picks a kernel for a linear layer, by weight kind and row count (llama.cpp's dispatch).
/// bf16: up to <c>EngineOptions.GemvMaxRows</c> rows our CUDA-core GEMVs; up to 32 rows whichever of cuBLASLt and
/// our tensor-core GEMVs measured fastest for that product and padded batch at load; above, cuBLAS (or cuBLASLt).
/// fp8: our CUDA-core GEMV (1–4 rows) or tensor-core GEMV (up to 32 rows, and in 32-row slices up to 128), with the
/// variant and split count that measured fastest; above, on sm_90 the FP8 tensor cores (<see cref="Fp8Gemm"/>: the
/// input quantized per token, the weight untiled to row-major e4m3, cuBLASLt with outer-vector scales), elsewhere (or
/// with <see cref="Fp8PrefillGemm.Dequantize"/>) a dequantized bf16 copy through the bf16 GEMM (prefill is FLOP-bound,
/// so the copy costs only its bytes). int4: the int4 tensor-core GEMV up to 32 rows (in slices up to 128)
/// at the tuned split count, above that the same bf16 detour. Output is fp32; <c>accumulate</c> adds into it (the residual
/// stream), which is also where a tensor-parallel all-reduce would complete a partial sum. Prefill chunks' qkv and gate_up
/// products write bf16 instead (<see cref="TryApplyBf16Out"/>), on whichever GEMM they run.
/// </summary>
internal sealed class LinearOps : IDisposable
{
    private enum Path { Lt, MmaBf16, TensorCore, Gemv, TileGemv }
    private readonly record struct Choice(Path Path, int Splits, TensorCoreVariant Variant = TensorCoreVariant.Standard);

    private readonly GemvOps _gemv;
    private readonly TensorCoreGemvOps _tc;
    private readonly Fp8Ops? _fp8;
    private readonly Int4Ops? _int4;
    private readonly Cublas _blas;
    private readonly CublasLt? _lt;
    private readonly CublasLt? _decodeLt; // tuned per shape for decode batches (rows up to Workspace.MaxSequences)
    private readonly int _gemvMaxRows, _multiprocessors;
    private readonly int? _mmaMaxRows;    // bf16: null, by timing at load; 0, never our tensor-core GEMVs; n, gemv_mma_bf16 up to n rows
    private readonly DeviceBuffer _mmaWorkspace, _tcWorkspace; // split-k tickets and partials of the tensor-core GEMVs
    private readonly ulong _dequantScratch;      // bf16 [largest quantized product], 0 without quantized weights
                                                 // (the FP8 GEMM untiles its e4m3 [out, in] weight into its first half)
    private readonly Fp8Gemm? _fp8Gemm;          // fp8 prefill on the FP8 tensor cores; null: the bf16 detour
    // What measured fastest at load, per weight kind, shape and padded row count (1, 2, 4, 8, 16, 32).
    private readonly Dictionary<(WeightKind Kind, int Out, int In, int Rows), Choice> _choices = new();
    private readonly TensorCoreVariant? _onlyVariant;  // EngineOptions.OnlyTensorCoreVariant (tests)
    private int? _prefillTunedRows;                    // PrefillGemm.CublasLtTuned: the row count TunePrefill timed
    // Row-major e4m3 [out, in] copies of fp8 weights, by the weight's tile-layout address (EngineOptions.Fp8PrefillCopy):
    // the FP8 GEMM reads these instead of untiling the weight into the scratch every prefill pass.
    private readonly Dictionary<ulong, ulong> _fp8RowMajor = new();

    public LinearOps(GemvOps gemv, TensorCoreGemvOps tc, Fp8Ops? fp8, Int4Ops? int4, Cublas blas, CublasLt? lt, CublasLt? decodeLt,
        int gemvMaxRows, int? mmaMaxRows, int multiprocessors, ulong dequantScratch, Fp8Gemm? fp8Gemm = null,
        TensorCoreVariant? onlyVariant = null)
    {
        _onlyVariant = onlyVariant;
        (_gemv, _tc, _fp8, _int4, _blas, _lt, _decodeLt, _gemvMaxRows, _mmaMaxRows, _multiprocessors, _dequantScratch) =
            (gemv, tc, fp8, int4, blas, lt, decodeLt, gemvMaxRows, mmaMaxRows, multiprocessors, dequantScratch);
        if (fp8Gemm is not null && (fp8 is null || dequantScratch == 0))
            throw new ArgumentException("the FP8 GEMM needs the fp8 kernels and the quantized weights' scratch", nameof(fp8Gemm));
        _fp8Gemm = fp8Gemm;
        _mmaWorkspace = DeviceBuffer.Allocate(GemvOps.MmaWorkspaceBytes(multiprocessors));
        _mmaWorkspace.Memset32(0);
        _tcWorkspace = DeviceBuffer.Allocate(TensorCoreGemvOps.WorkspaceBytes);
        _tcWorkspace.Memset32(0);
    }

    /// <summary>Quantized products over at most this many rows run on the tensor-core GEMVs in slices of 32 rows.</summary>
    private const int SlicedMaxRows = 128;

    /// <summary>Rows padded to the batch size whose choice applies: 1, 2, 4, 8, 16, 32.</summary>
    private static int Padded(int rows) => rows <= 1 ? 1 : (int)Math.Min(32, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)rows));

    /// <summary>What the tuner chose for this product over this many rows (up to 32), or null.</summary>
    private Choice? Chosen(LinearWeight w, int rows) =>
        rows <= TensorCoreGemvOps.MaxRows && _choices.TryGetValue((w.Kind, w.Out, w.In, Padded(rows)), out var c) ? c : null;

    public void Apply(CudaStream s, LinearWeight w, LinearInput input, ulong y, int rows, bool accumulate = false)
    {
        if (input.IsFp8)
        {
            if (!RunsFp8Gemm(w, rows))
                throw new InvalidOperationException($"an e4m3 input serves only an fp8 product on the FP8 GEMM (this one: {w.Kind} [{w.Out}x{w.In}] over {rows} rows)");
            ApplyFp8Gemm(s, _fp8Gemm!, w, input, y, rows, accumulate);
            return;
        }
        ulong x = input.Bf16;
        Choice? chosen = Chosen(w, rows);
        switch (w.Kind)
        {
            case WeightKind.Bf16:
                ApplyBf16(s, w.Weight, w.Out, w.In, x, y, rows, accumulate, chosen);
                break;
            case WeightKind.Fp8 when _fp8 is not null:
                if (chosen is { Path: Path.Gemv } gemv)
                    _fp8.Gemv(s, w.Weight, w.Scales, x, y, rows, w.Out, w.In, accumulate, _tcWorkspace.Ptr, gemv.Splits);
                else if (chosen is { Path: Path.TileGemv })
                    _fp8.TileGemv(s, w.Weight, w.Scales, x, y, rows, w.Out, w.In, accumulate);
                else if (rows <= SlicedMaxRows)
                    ApplySliced(s, w, x, y, rows, accumulate);
                else if (RunsDequantized(w, rows))
                    ApplyDequantized(s, w, x, y, rows, accumulate);
                else
                    ApplyFp8Gemm(s, _fp8Gemm!, w, x, y, rows, accumulate);
                break;
            case WeightKind.Int4Awq when _int4 is not null:
                if (RunsDequantized(w, rows))
                    ApplyDequantized(s, w, x, y, rows, accumulate);
                else
                    ApplySliced(s, w, x, y, rows, accumulate);
                break;
            default:
                throw new NotSupportedException($"{w.Kind} weights have no kernel here");
        }
    }

    /// <summary>
    /// A quantized product over up to 128 rows on the tensor-core GEMV, in slices of 32 rows: each slice reads the
    /// weight once, at most 4 reads of fp8 (4 bytes per weight) or int4 (2 bytes), still less than expanding it to
    /// bf16 (a read, 2 bytes written and 2 read again by the GEMM).
    /// </summary>
    private void ApplySliced(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate)
    {
        for (int r0 = 0; r0 < rows; r0 += TensorCoreGemvOps.MaxRows)
        {
            int n = Math.Min(TensorCoreGemvOps.MaxRows, rows - r0);
            // a slice takes the tuner's split count where it chose a split kernel for that many rows; the one-block-per-
            // tile GEMV has none (and serves 1–2 rows only through Apply)
            Choice? slice = Chosen(w, n) is { Path: Path.TensorCore or Path.Gemv } c ? c : null;
            int splits = slice?.Splits ?? TensorCoreGemvOps.DefaultSplits(w.Out, w.In, n, _multiprocessors);
            if (w.Kind == WeightKind.Int4Awq) splits = Math.Min(splits, w.In / w.Group); // int4 splits fall on group boundaries
            TensorCore(s, w, x + (ulong)(2L * r0 * w.In), y + (ulong)(4L * r0 * w.Out), n, accumulate, splits, slice?.Variant ?? TensorCoreVariant.Standard);
        }
    }

    /// <summary>A quantized product through a bf16 copy of its weight (in the scratch) and the bf16 GEMM, at any row count.</summary>
    internal void ApplyDequantized(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate)
    {
        Dequantize(s, w);
        ApplyBf16(s, _dequantScratch, w.Out, w.In, x, y, rows, accumulate, chosen: null);
    }

    /// <summary>A quantized weight expanded to bf16 [out, in] in the scratch.</summary>
    private void Dequantize(CudaStream s, LinearWeight w)
    {
        if (w.Kind == WeightKind.Fp8)
            _fp8!.DequantizeRows(s, w.Weight, w.Scales, _dequantScratch, w.Out, w.In);
        else if (w.Kind == WeightKind.Int4Awq)
            _int4!.DequantizeRows(s, w.Weight, w.Scales, _dequantScratch, w.Out, w.In, w.Group);
        else
            throw new NotSupportedException($"{w.Kind} weights are not quantized");
    }

    /// <summary>
    /// Whether a quantized product over this many rows runs the bf16 GEMM on a dequantized copy of its weight: past the
    /// sliced tensor-core GEMVs, int4 always, fp8 where the FP8 GEMM does not take it (<see cref="Apply"/> and
    /// <see cref="TunePrefill"/> decide by this one test).
    /// </summary>
    private bool RunsDequantized(LinearWeight w, int rows) => rows > SlicedMaxRows &&
        (w.Kind == WeightKind.Int4Awq || (w.Kind == WeightKind.Fp8 && !(_fp8Gemm is { } g && g.Fits(w, rows))));

    /// <summary>Whether an fp8 product over this many rows runs on the FP8 GEMM (<see cref="Apply"/>'s choice).</summary>
    private bool RunsFp8Gemm(LinearWeight w, int rows) =>
        w.Kind == WeightKind.Fp8 && _fp8 is not null && rows > SlicedMaxRows && !RunsDequantized(w, rows);

    /// <summary>
    /// down_proj's input for the FP8 GEMM straight from SiLU·mul, where <paramref name="w"/> runs on it at this many
    /// rows (fp8 weights' prefill): bf16 <paramref name="gateUpBf16"/> [rows, 2 · in] (prefill's gate_up product,
    /// <see cref="TryApplyBf16Out"/>) → the GEMM's per-token e4m3 input, which <paramref name="input"/> names for
    /// <see cref="Apply"/> (exactly SiLU·mul then the quantization Apply would run, without the bf16 activations in
    /// memory); false elsewhere, where the caller writes bf16 activations.
    /// </summary>
    public bool TrySiluMulIntoFp8Input(CudaStream s, LinearWeight w, ulong gateUpBf16, int rows, out LinearInput input)
    {
        input = default;
        if (!RunsFp8Gemm(w, rows) || w.In > Fp8Ops.MaxSiluMulIntermediate) return false;
        Fp8Gemm g = _fp8Gemm!;
        _fp8!.QuantizeSiluMul(s, gateUpBf16, g.ActCodes, g.ActScales, rows, w.In);
        input = LinearInput.Fp8(g.ActCodes, g.ActScales);
        return true;
    }

    /// <summary>
    /// Products over more rows than this (prefill chunks) write their output in bf16 where the caller asks
    /// (<see cref="TryApplyBf16Out"/>); up to this many (decode batches, the sliced GEMVs) always in fp32.
    /// <see cref="Workspace"/> sizes the qkv and gate_up buffers by it.
    /// </summary>
    public const int MaxFp32OutRows = SlicedMaxRows;

    /// <summary>
    /// y (bf16 [rows, out]) = x · Wᵀ for a prefill-sized product (more than <see cref="MaxFp32OutRows"/> rows), and true,
    /// on whichever GEMM the product runs: cublasGemmEx or cuBLASLt (<see cref="PrefillGemm"/>) on a bf16 weight or a
    /// quantized one's dequantized copy, or the FP8 GEMM; false for fewer rows (the GEMVs and the decode batches'
    /// cuBLASLt plans write fp32), where the caller runs <see cref="Apply"/> instead. Why: gate_up's output is the one
    /// large activation a layer writes and reads again (906 MB in fp32 at 4096 rows), and SiLU·mul, which reads it, is
    /// bandwidth-bound; qkv's (117 MB) is read once by the bias and RoPE kernel, which ran at 1.8 TB/s (session 23's
    /// profile). Because every prefill path writes bf16, the workspace holds those two outputs in bf16 past 128 rows.
    /// </summary>
    public bool TryApplyBf16Out(CudaStream s, LinearWeight w, ulong x, ulong yBf16, int rows)
    {
        if (rows <= MaxFp32OutRows) return false;
        if (!TryBf16GemmWeight(s, w, rows, out ulong weight))
            ApplyFp8Gemm(s, _fp8Gemm!, w, x, yBf16, rows, accumulate: false, outBf16: true);
        else if (_lt is null)
            _blas.GemmBf16NTOutBf16(x, weight, yBf16, rows, w.Out, w.In);
        else
            _lt.MatmulBf16NT(s, x, weight, yBf16, rows, w.Out, w.In, outBf16: true);
        return true;
    }

    /// <summary>
    /// The bf16 [out, in] weight the bf16 GEMM reads for a product over more than <see cref="SlicedMaxRows"/> rows: a bf16
    /// weight itself, or a quantized one's copy, expanded into the scratch now (<see cref="RunsDequantized"/>); false where
    /// the product runs on the FP8 GEMM instead. <see cref="TryApplyBf16Out"/> and <see cref="TunePrefill"/> share it.
    /// </summary>
    private bool TryBf16GemmWeight(CudaStream s, LinearWeight w, int rows, out ulong weight)
    {
        weight = w.Kind == WeightKind.Bf16 ? w.Weight : 0;
        if (w.Kind == WeightKind.Bf16) return true;
        if (!RunsDequantized(w, rows)) return false;
        Dequantize(s, w);
        weight = _dequantScratch;
        return true;
    }

    /// <summary>
    /// An fp8 product on the FP8 GEMM at any row count (tests; <see cref="Apply"/> takes it above 128 rows), y fp32 [rows,
    /// out], or bf16 with <paramref name="outBf16"/> (then without accumulation, as <see cref="TryApplyBf16Out"/> runs it).
    /// </summary>
    internal void ApplyFp8Gemm(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate, bool outBf16 = false)
    {
        if (_fp8Gemm is not { } g) throw new InvalidOperationException("this LinearOps has no FP8 GEMM (Fp8PrefillGemm.Dequantize, or not sm_90)");
        if (w.Kind != WeightKind.Fp8 || !g.Fits(w, rows))
            throw new ArgumentException($"{w.Kind} [{w.Out}x{w.In}] over {rows} rows does not fit the FP8 GEMM (fp8, K and N multiples of {CublasLt.Fp8Multiple}, at most {g.MaxRows} rows and {g.MaxIn} inputs)");
        if (outBf16 && accumulate) throw new ArgumentException("the FP8 GEMM's bf16 output does not accumulate (prefill's qkv and gate_up overwrite theirs)");
        ApplyFp8Gemm(s, g, w, x, y, rows, accumulate, outBf16);
    }

    /// <summary>
    /// A prefill-sized fp8 product on the FP8 tensor cores: x (bf16 [rows, in]) quantized per token into the workspace's
    /// e4m3 [rows, in] and scales [rows]; the weight's tile layout untiled into the scratch as row-major e4m3 [out, in]
    /// (cuBLASLt reads neither our tiles nor bf16 against e4m3); then y[rows, out] (+)= sx ⊙ (x_q · W_qᵀ) ⊙ sw, the
    /// per-token and per-channel scales applied to the fp32 accumulator by cuBLASLt. The output is the same fp32
    /// [rows, out] as every other path, accumulate adds into it (beta 1), and there is no bias here (q/k/v biases are added
    /// with RoPE), exactly as on the bf16 detour.
    /// </summary>
    private void ApplyFp8Gemm(CudaStream s, Fp8Gemm g, LinearWeight w, LinearInput x, ulong y, int rows, bool accumulate, bool outBf16 = false)
    {
        // the input's codes where they are already made (TrySiluMulIntoFp8Input writes them into the same buffers)
        (ulong codes, ulong scales) = x.IsFp8 ? (x.Fp8Codes, x.Fp8Scales) : (g.ActCodes, g.ActScales);
        if (!x.IsFp8) _fp8!.QuantizeActivations(s, x.Bf16, codes, scales, rows, w.In);
        if (!_fp8RowMajor.TryGetValue(w.Weight, out ulong rowMajor))
        {
            _fp8!.UntileRows(s, w.Weight, _dequantScratch, w.Out, w.In);
            rowMajor = _dequantScratch;
        }
        g.Lt.MatmulFp8TN(s, codes, scales, rowMajor, w.Scales, y, rows, w.Out, w.In, accumulate ? 1f : 0f, g.FastAccum, outBf16);
    }

    /// <summary>
    /// Untiles each fp8 weight of <paramref name="weights"/> once into <paramref name="copies"/> (row-major e4m3 [out, in],
    /// each at a 256-byte boundary; <see cref="ModelWeights.Fp8RowMajorBytes"/> sizes it) and has the FP8 prefill GEMM
    /// read those copies from then on. The caller owns <paramref name="copies"/> and keeps it alive as long as this.
    /// </summary>
    internal void KeepFp8RowMajor(CudaStream s, IEnumerable<LinearWeight> weights, DeviceBuffer copies)
    {
        if (_fp8 is null || _fp8Gemm is null) throw new InvalidOperationException("row-major fp8 copies serve only the FP8 prefill GEMM");
        long at = 0;
        foreach (LinearWeight w in weights)
        {
            if (w.Kind != WeightKind.Fp8) throw new ArgumentException($"a {w.Kind} weight has no fp8 copy to keep", nameof(weights));
            long bytes = (long)w.Out * w.In;
            if (at + bytes > copies.Bytes)
                throw new ArgumentException($"the copies need more than the {copies.Bytes} bytes given (plan and weights disagree)", nameof(copies));
            ulong dst = copies.Ptr + (ulong)at;
            _fp8.UntileRows(s, w.Weight, dst, w.Out, w.In);
            _fp8RowMajor[w.Weight] = dst;
            at += (bytes + 255) / 256 * 256;
        }
    }

    /// <summary>Whether the FP8 prefill GEMM reads kept row-major copies (<see cref="KeepFp8RowMajor"/>) rather than untiling per pass.</summary>
    public bool KeepsFp8RowMajor => _fp8RowMajor.Count > 0;

    /// <summary>Whether this GPU loaded the kernels of a tensor-core GEMV build (the warpgroup ones: compute capability 9.0, sm_90a PTX).</summary>
    internal bool Loads(TensorCoreVariant variant) => _tc.Loaded(variant);

    /// <summary>Which GEMM prefill-sized products of <paramref name="kind"/> run on (for logs and bench results).</summary>
    public string PrefillPath(WeightKind kind)
    {
        string bf16 = _lt is null ? "bf16 cuBLAS" : _prefillTunedRows is int tuned ? $"bf16 cuBLASLt, tuned at {tuned} rows" : "bf16 cuBLASLt";
        return kind switch
        {
            WeightKind.Bf16 => bf16,
            WeightKind.Fp8 when _fp8Gemm is { } g => (g.FastAccum ? "fp8 cuBLASLt, fast accumulation" : "fp8 cuBLASLt") +
                                                     (KeepsFp8RowMajor ? ", row-major copies kept" : ""),
            _ => $"dequantized to {bf16}",
        };
    }

    /// <summary>
    /// What <see cref="EngineOptions.Fp8Prefill"/> means on a GPU of compute capability <paramref name="major"/>.x: Auto
    /// takes the FP8 GEMM on 9.x only, where cuBLAS documents outer-vector scaling for FP8 (cuBLAS docs 3.1.4, "Outer
    /// vector scaling": compute capability 9.0); asked for explicitly elsewhere, cuBLASLt's refusal names the call.
    /// </summary>
    public static Fp8PrefillGemm Resolve(Fp8PrefillGemm asked, int major) =>
        asked == Fp8PrefillGemm.Auto ? (major == 9 ? Fp8PrefillGemm.Fp8 : Fp8PrefillGemm.Dequantize) : asked;

    /// <summary>Our tensor-core GEMV for this weight's kind: gemv_tc (bf16, fp8) or gemv_int4, up to 32 rows.</summary>
    private void TensorCore(CudaStream s, LinearWeight w, ulong x, ulong y, int rows, bool accumulate, int splits,
        TensorCoreVariant variant = TensorCoreVariant.Standard)
    {
        if (w.Kind == WeightKind.Int4Awq)
            _int4!.Gemv(s, w.Weight, w.Scales, x, y, rows, w.Out, w.In, w.Group, accumulate, _tcWorkspace.Ptr, splits, variant);
        else
            _tc.Gemv(s, fp8: w.Kind == WeightKind.Fp8, w.Weight, w.Scales, x, y, rows, w.Out, w.In, accumulate, _tcWorkspace.Ptr, splits, variant);
    }

    private void ApplyBf16(CudaStream s, ulong weight, int outF, int inF, ulong x, ulong y, int rows, bool accumulate, Choice? chosen)
    {
        if (rows <= Math.Min(_gemvMaxRows, GemvOps.MaxBatch))
            _gemv.GemvBatched(s, weight, x, y, rows, outF, inF, accumulate);
        else if (chosen is { Path: Path.MmaBf16 } mma)
            _gemv.GemvMma(s, weight, x, y, rows, outF, inF, accumulate, _mmaWorkspace.Ptr, _multiprocessors, mma.Splits);
        else if (chosen is { Path: Path.TensorCore } tc)
            _tc.Gemv(s, fp8: false, weight, 0, x, y, rows, outF, inF, accumulate, _tcWorkspace.Ptr, tc.Splits);
        else if (chosen is null && _mmaMaxRows is int max && rows <= Math.Min(max, GemvOps.MaxMmaBatch) && inF % GemvOps.MmaChunk == 0)
            _gemv.GemvMma(s, weight, x, y, rows, outF, inF, accumulate, _mmaWorkspace.Ptr, _multiprocessors);
        else if (_decodeLt is not null && rows <= Workspace.MaxSequences)
            _decodeLt.MatmulBf16NT(s, x, weight, y, rows, outF, inF, accumulate ? 1f : 0f);
        else if (_lt is null)
            _blas.GemmBf16NT(x, weight, y, rows, outF, inF, beta: accumulate ? 1f : 0f);
        else
            _lt.MatmulBf16NT(s, x, weight, y, rows, outF, inF, accumulate ? 1f : 0f);
    }

    /// <summary>
    /// <see cref="PrefillGemm.CublasLtTuned"/>: for each product that runs the bf16 GEMM at <paramref name="rows"/> rows
    /// (x [rows, in] → y [rows, out], y added to with <c>Accumulate</c>, written in bf16 with <c>OutBf16</c> as
    /// <see cref="TryApplyBf16Out"/> writes qkv and gate_up): bf16 weights, and quantized ones on their
    /// dequantized copy (int4; fp8 where the FP8 GEMM does not take it), times the first 16 of cuBLASLt's heuristic
    /// algorithms at exactly that row count (the prefill chunk) and keeps the fastest for every later call of the shape;
    /// other row counts keep the heuristic's first pick. Prefill is FLOP-bound, so one layer's weight serves (no need to
    /// stream several from DRAM as <see cref="TuneDecodeBatches"/> does). Synchronises (not for graph capture); y and the
    /// dequantization scratch are overwritten.
    /// </summary>
    public void TunePrefill(CudaStream s, int rows, IReadOnlyList<(LinearWeight W, ulong X, ulong Y, bool Accumulate, bool OutBf16)> products)
    {
        if (_lt is null) throw new InvalidOperationException("prefill tuning needs the cuBLASLt prefill GEMM (PrefillGemm.CublasLtTuned)");
        if (_decodeLt is not null && rows <= Workspace.MaxSequences) return; // such rows run the decode batches' tuned plans
        int tuned = 0;
        foreach (var (w, x, y, accumulate, outBf16) in products)
        {
            if (!TryBf16GemmWeight(s, w, rows, out ulong b)) continue; // the FP8 GEMM: its own cuBLASLt plans
            // the plan the step runs: bf16 output only where TryApplyBf16Out writes it (past MaxFp32OutRows)
            _lt.Tune(s, x, [b], y, rows, w.Out, w.In, accumulate ? 1f : 0f, candidates: 16, outBf16: outBf16 && rows > MaxFp32OutRows);
            tuned++;
        }
        if (tuned > 0) _prefillTunedRows = rows;
    }

    /// <summary>
    /// Picks, by timing, the fastest way to run each product at every decode batch size a graph is captured for. bf16:
    /// cuBLASLt's algorithms (above the GEMV sizes), and up to 32 rows also our tensor-core GEMVs at several split
    /// counts; fp8: the tensor-core GEMV's variants and split counts, up to 4 rows the CUDA-core GEMV's, and up to 2 rows its one-block-per-tile variant. Each candidate is
    /// timed over several layers' copies of the product in turn, so the weights stream from DRAM as in a real step
    /// (one layer's o_proj alone, 52 MB, would sit half in L2). <paramref name="x"/> and <paramref name="y"/> are
    /// scratch big enough for 128 rows of any input and output (their contents are overwritten).
    /// </summary>
    public void TuneDecodeBatches(CudaStream s, IReadOnlyList<(LinearWeight[] Layers, bool Accumulate)> products, ulong x, ulong y,
        IEnumerable<int> batches)
    {
        if (_decodeLt is null) return;
        foreach (int rows in batches.Where(b => b <= Workspace.MaxSequences))
            foreach (var (layers, accumulate) in products)
            {
                LinearWeight w0 = layers[0];
                // Eight layers' copies are enough to stream from DRAM (8 × 52 MB for o_proj, far past the 50 MB L2)
                // and keep the tuning near a second for the whole model.
                LinearWeight[] sample = layers.Take(8).ToArray();
                float best = float.MaxValue;
                Choice? choice = null;
                void Try(Choice candidate, Action<LinearWeight> run)
                {
                    float ms = TimeMs(s, () => { foreach (var l in sample) run(l); });
                    if (ms < best) (best, choice) = (ms, candidate);
                }
                bool tcFits = rows <= TensorCoreGemvOps.MaxRows && w0.In % TensorCoreGemvOps.Chunk == 0;
                if (w0.Kind == WeightKind.Bf16)
                {
                    if (rows <= _gemvMaxRows) continue;
                    best = _decodeLt.Tune(s, x, sample.Select(l => l.Weight).ToArray(), y, rows, w0.Out, w0.In, accumulate ? 1f : 0f, candidates: 16);
                    choice = new Choice(Path.Lt, 0);
                    if (_mmaMaxRows is not null || !tcFits) continue;
                    if (rows <= GemvOps.MaxMmaBatch && w0.In % GemvOps.MmaChunk == 0)
                        foreach (int splits in GemvOps.MmaSplitCandidates(w0.Out, w0.In, _multiprocessors))
                            Try(new Choice(Path.MmaBf16, splits), l => _gemv.GemvMma(s, l.Weight, x, y, rows, l.Out, l.In, accumulate, _mmaWorkspace.Ptr, _multiprocessors, splits));
                }
                else if (w0.Kind == WeightKind.Int4Awq)
                {
                    if (_int4 is null || !tcFits) continue;
                }
                else if (w0.Kind != WeightKind.Fp8 || !tcFits) continue;
                else if (rows <= Fp8Ops.MaxGemvRows && _fp8 is not null)
                {
                    foreach (int splits in TensorCoreGemvOps.SplitCandidates(w0.Out, w0.In, rows))
                        Try(new Choice(Path.Gemv, splits), l => _fp8.Gemv(s, l.Weight, l.Scales, x, y, rows, l.Out, l.In, accumulate, _tcWorkspace.Ptr, splits));
                    if (rows <= Fp8Ops.MaxTileGemvRows)
                        Try(new Choice(Path.TileGemv, 0), l => _fp8.TileGemv(s, l.Weight, l.Scales, x, y, rows, l.Out, l.In, accumulate));
                }
                // the builds that serve this product: bf16 one (Serves); int4 also the even-runs one up to 8 rows
                // (Int4Ops.Variants); fp8 also the lite (up to 8 rows), wide (17–32), fp16-route (9–32) and, on compute
                // capability 9.0, warpgroup (9–32) ones
                var variants = w0.Kind == WeightKind.Int4Awq
                    ? Int4Ops.Variants(rows)
                    : Enum.GetValues<TensorCoreVariant>()
                        .Where(v => TensorCoreGemvOps.Serves(v, fp8: w0.Kind == WeightKind.Fp8, rows, w0.In) && _tc.Loaded(v))
                        .ToArray();
                if (_onlyVariant is { } only && variants.Contains(only)) variants = [only];
                var tcSplits = w0.Kind == WeightKind.Int4Awq
                    ? Int4Ops.SplitCandidates(w0.Out, w0.In, w0.Group, rows)
                    : TensorCoreGemvOps.SplitCandidates(w0.Out, w0.In, rows);
                foreach (int splits in tcSplits)
                    foreach (var variant in variants)
                        Try(new Choice(Path.TensorCore, splits, variant), l => TensorCore(s, l, x, y, rows, accumulate, splits, variant));
                if (choice is { } chosen) _choices[(w0.Kind, w0.Out, w0.In, rows)] = chosen;
            }
    }

    /// <summary>Median of seven timed runs after a warm-up, in ms. Synchronises; not for graph capture.</summary>
    private static float TimeMs(CudaStream s, Action run)
    {
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        var times = new float[7];
        for (int r = -1; r < times.Length; r++)
        {
            start.Record(s);
            run();
            end.Record(s);
            end.Synchronize();
            if (r >= 0) times[r] = CudaEvent.ElapsedMilliseconds(start, end);
        }
        Array.Sort(times);
        return times[3];
    }

    /// <summary>What the tuner chose, one line per (kind, shape, padded rows), for logs and reports.</summary>
    public IEnumerable<string> DescribeChoices() =>
        _choices.OrderBy(c => c.Key.Kind).ThenBy(c => c.Key.Rows).ThenBy(c => c.Key.Out)
            .Select(c => $"{c.Key.Kind} [{c.Key.Out}x{c.Key.In}] at {c.Key.Rows} rows: {c.Value.Path}{(c.Value.Variant != TensorCoreVariant.Standard ? $" ({c.Value.Variant.ToString().ToLowerInvariant()})" : "")}{(c.Value.Splits > 0 ? $" ×{c.Value.Splits} splits" : "")}");

    public void Dispose()
    {
        _mmaWorkspace.Dispose();
        _tcWorkspace.Dispose();
    }
}

/// <summary>
/// What the FP8 prefill GEMM needs besides the weight: the cuBLASLt it runs on, whether it accumulates fast, and the
/// workspace's per-token copy of a product's input, e4m3 <see cref="ActCodes"/> [<see cref="MaxRows"/>, <see cref="MaxIn"/>]
/// and fp32 <see cref="ActScales"/> [<see cref="MaxRows"/>] (preallocated: nothing is allocated per launch).
/// </summary>
internal sealed record Fp8Gemm(CublasLt Lt, bool FastAccum, ulong ActCodes, ulong ActScales, int MaxRows, int MaxIn)
{
    /// <summary>Whether a product fits: its input in the buffers, and K and N multiples of 16 (cuBLASLt's FP8 alignment).</summary>
    public bool Fits(LinearWeight w, int rows) =>
        rows <= MaxRows && w.In <= MaxIn && w.In % CublasLt.Fp8Multiple == 0 && w.Out % CublasLt.Fp8Multiple == 0;
}

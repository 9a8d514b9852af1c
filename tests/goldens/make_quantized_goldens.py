#!/usr/bin/env python3
"""Builds tiny quantized Qwen2 checkpoints, in the two quantized layouts QwQ.Cuda loads, and their goldens.

    python3 make_quantized_goldens.py OUT_DIR [--checkpoints-only | --goldens-only] [--pure-python] [--device cpu|cuda]
    python3 make_quantized_goldens.py --full-width OUT_DIR [--device cpu|cuda] [--only full-awq]

Writes, for each model in MODELS (the tiny-gqa fixture's shapes: hidden 320, 10/2 heads of 32, I 384, vocab 256):
    OUT_DIR/tiny-fp8/   compressed-tensors FP8, as llm-compressor's FP8_DYNAMIC writes it: every decoder linear
                        layer's weight F8_E4M3 [out, in] with weight_scale BF16 [out, 1] (per channel); lm_head in
                        "ignore" and, like the embedding, norms and biases, BF16. torch_dtype bfloat16.
    OUT_DIR/tiny-awq/   AutoAWQ INT4 "gemm": qweight I32 [in, out/8] (8 nibbles per int32, AutoAWQ's interleaved
                        order), qzeros I32 [in/64, out/8], scales F16 [in/64, out]; the rest F16 (as in
                        Qwen/QwQ-32B-AWQ). group_size 64, since 128 does not divide hidden 320. torch_dtype float16.
each with config.json (release-style keys plus quantization_config), model.safetensors and goldens.json: prompts,
logits at every prompt position, greedy continuations (make_model_goldens.py's format), computed in float32 on the
DEQUANTIZED weights: w = fp8 * scale, w = (q - z) * s, each product in float32 (exact for these scales).

The checkpoints are written by pure Python (struct, no torch), deterministically from each model's seed: the
"original" weights are Irwin-Hall normals (sums of 12 uniforms: no libm call, so every machine gets the same bits),
rounded to float32, then quantized. Rerunning the script rewrites identical files (it says so if they differ).

Goldens: with torch + transformers + safetensors, transformers' Qwen2ForCausalLM in float32 (never cast to bf16;
TF32 off), loaded with weights dequantized by torch from the files just written (read back with safetensors, an
unpacking independent of the writer's packing); with compressed-tensors installed, transformers' own loading of
tiny-fp8 is compared with ours too. Without torch (or with --pure-python) make_model_goldens.py's float64
pure-Python model computes them and goldens.json says "pure-python ..." (provisional: regenerate with torch).

    --checkpoints-only  write config.json and model.safetensors only (no torch needed)
    --goldens-only      keep the checkpoints in OUT_DIR and (re)compute goldens.json from them (torch needed)
    --full-width DIR    2-layer full-width variants (hidden 5120, 40/8 heads of 128, I 27648, vocab 152064;
                        group_size 128) in DIR/full-fp8 and DIR/full-awq with goldens, for GPU tests. Several GB;
                        not committed. Needs numpy + torch + transformers + safetensors.
"""

import argparse
import bisect
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_goldens as base  # noqa: E402  (the tiny shapes, config layout, prompts and golden format)

MODELS = {
    "tiny-fp8": dict(base.BASE, seed=8101, rope_scaling=None, method="fp8"),
    "tiny-awq": dict(base.BASE, seed=8102, rope_scaling=None, method="awq", group_size=64),
}

FULL_WIDTH = dict(base.QWQ_32B, num_hidden_layers=2, rope_scaling=None)
FULL_MODELS = {
    "full-fp8": dict(FULL_WIDTH, seed=8201, method="fp8"),
    "full-awq": dict(FULL_WIDTH, seed=8202, method="awq", group_size=128),
}

PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# AutoAWQ's packing: nibble n (bits 4n..4n+3) of an int32 holds column ORDER_MAP[n] of its block of 8 columns.
AWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]
# ... so, read the other way, column k is in nibble AWQ_REVERSE_ORDER[k] (vLLM's and AutoAWQ's name).
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]

FP8_MAX = 448.0


def linear_modules(spec):
    """Module paths of the decoder's linear layers, in state_dict order (lm_head is never quantized here)."""
    return ["model.layers.%d.%s" % (l, p) for l in range(spec["num_hidden_layers"]) for p in PROJECTIONS]


def quantization_config(spec):
    if spec["method"] == "fp8":
        # What llm-compressor writes for QuantizationModifier(scheme="FP8_DYNAMIC", ignore=["lm_head"]).
        return {
            "config_groups": {"group_0": {
                "input_activations": {"actorder": None, "block_structure": None, "dynamic": True, "group_size": None,
                                      "num_bits": 8, "observer": None, "observer_kwargs": {}, "strategy": "token",
                                      "symmetric": True, "type": "float"},
                "output_activations": None,
                "targets": ["Linear"],
                "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": None,
                            "num_bits": 8, "observer": "minmax", "observer_kwargs": {}, "strategy": "channel",
                            "symmetric": True, "type": "float"},
            }},
            "format": "float-quantized",
            "global_compression_ratio": None,
            "ignore": ["lm_head"],
            "kv_cache_scheme": None,
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
        }
    # Qwen/QwQ-32B-AWQ's, with this model's group size.
    return {"bits": 4, "group_size": spec["group_size"], "modules_to_not_convert": None, "quant_method": "awq",
            "version": "gemm", "zero_point": True}


def config_json(spec):
    cfg = base.release_config(spec, "bfloat16" if spec["method"] == "fp8" else "float16")
    cfg["quantization_config"] = quantization_config(spec)
    return cfg


# ----------------------------------------------------------------------------------------------
# number formats (pure Python, exact)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16(x):
    """Rounds to float16 (nearest even), as a Python float."""
    return struct.unpack("<e", struct.pack("<e", x))[0]


def bf16_bits(x):
    """x rounded to float32, then to bfloat16 (nearest even): the 16 bits."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def bf16(x):
    return struct.unpack("<f", struct.pack("<I", bf16_bits(x) << 16))[0]


def fp8_value(code):
    """The value of an fp8 e4m3fn code (0x7F/0xFF are NaN, never written here)."""
    sign = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 3) & 0xF, code & 7
    if e == 0:
        return sign * m / 8.0 * 2.0 ** -6
    return sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)


FP8_POSITIVE = [fp8_value(c) for c in range(0x7F)]  # codes 0x00..0x7E, increasing, 0 .. 448


def fp8_code(x):
    """Nearest fp8 e4m3fn code, ties to the even code, magnitudes beyond 448 saturated (quantizers clamp first)."""
    sign = 0x80 if x < 0 or (x == 0 and struct.pack("<d", x)[7] & 0x80) else 0
    a = min(abs(x), FP8_MAX)
    i = bisect.bisect_left(FP8_POSITIVE, a)  # FP8_POSITIVE[i-1] < a <= FP8_POSITIVE[i]
    if i < len(FP8_POSITIVE) and FP8_POSITIVE[i] == a:
        return sign | i
    lo, hi = i - 1, i
    d_lo, d_hi = a - FP8_POSITIVE[lo], FP8_POSITIVE[hi] - a
    return sign | (lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else hi)


# ----------------------------------------------------------------------------------------------
# weights and quantization (pure Python)


def original_weights(spec):
    """name -> (shape, flat float32 values) of the unquantized model, in state_dict order."""
    import random
    rng = random.Random(spec["seed"])
    out = {}
    for name, shape in base.expected_names(spec):
        mean, std = base.init_kind(name)
        n = shape[0] if len(shape) == 1 else shape[0] * shape[1]
        # Irwin-Hall: the sum of 12 uniforms minus 6 has mean 0 and variance 1; additions only, so bit-reproducible.
        out[name] = (shape, [f32(mean + std * (sum(rng.random() for _ in range(12)) - 6.0)) for _ in range(n)])
    return out


def quantize_fp8(w, rows, cols):
    """Per-channel FP8: (codes [rows*cols], bf16 scale bits [rows], dequantized [rows*cols])."""
    codes, scales, deq = [], [], []
    for r in range(rows):
        row = w[r * cols:(r + 1) * cols]
        amax = max(abs(v) for v in row)
        s_bits = bf16_bits(amax / FP8_MAX) if amax > 0 else bf16_bits(1.0)
        s = struct.unpack("<f", struct.pack("<I", s_bits << 16))[0]
        c = [fp8_code(v / s) for v in row]
        codes += c
        scales.append(s_bits)
        deq += [f32(fp8_value(x) * s) for x in c]  # exact: 4 significant bits times 8
    return codes, scales, deq


def awq_group_params(vals):
    """AutoAWQ's asymmetric 4-bit grid for one group of one output column: (fp16 scale, zero point)."""
    mx, mn = max(vals), min(vals)
    s = f16(max((mx - mn) / 15.0, 1e-5))
    z = min(max(round(-mn / s), 0), 15)
    return s, z


def quantize_awq(w, out_f, in_f, g):
    """AWQ: (q [in][out] 0..15, zeros [in/g][out], fp16 scales [in/g][out], dequantized [out*in])."""
    groups = in_f // g
    q = [[0] * out_f for _ in range(in_f)]
    zeros = [[0] * out_f for _ in range(groups)]
    scales = [[0.0] * out_f for _ in range(groups)]
    deq = [0.0] * (out_f * in_f)
    for o in range(out_f):
        row = w[o * in_f:(o + 1) * in_f]
        for gi in range(groups):
            vals = row[gi * g:(gi + 1) * g]
            s, z = awq_group_params(vals)
            scales[gi][o], zeros[gi][o] = s, z
            for j, v in enumerate(vals):
                i = gi * g + j
                qi = min(max(round(v / s) + z, 0), 15)
                q[i][o] = qi
                deq[o * in_f + i] = f32((qi - z) * s)  # exact: a 4-bit integer times an fp16 value
    return q, zeros, scales, deq


def pack_awq(rows):
    """[r][c] values 0..15 -> [r][c/8] int32, AutoAWQ's nibble order (written out by loops, not by the reverse map)."""
    packed = []
    for row in rows:
        out = []
        for b in range(len(row) // 8):
            word = 0
            for n in range(8):
                word |= row[b * 8 + AWQ_ORDER_MAP[n]] << (4 * n)
            out.append(word - (1 << 32) if word >= 1 << 31 else word)  # as a signed int32
        packed.append(out)
    return packed


def quantized_tensors(spec, weights):
    """The checkpoint's tensors [(name, dtype, shape, bytes)] and the dequantized weights {name: (shape, flat)}."""
    tensors, deq = [], {}
    quantized = set(m + ".weight" for m in linear_modules(spec))
    fp8 = spec["method"] == "fp8"
    for name, (shape, flat) in weights.items():
        if name not in quantized:
            if fp8:
                bits = [bf16_bits(v) for v in flat]
                tensors.append((name, "BF16", shape, struct.pack("<%dH" % len(bits), *bits)))
                deq[name] = (shape, [bf16(v) for v in flat])
            else:
                vals = [f16(v) for v in flat]
                tensors.append((name, "F16", shape, struct.pack("<%de" % len(vals), *vals)))
                deq[name] = (shape, vals)
            continue
        module = name[:-len(".weight")]
        out_f, in_f = shape
        if fp8:
            codes, scales, d = quantize_fp8(flat, out_f, in_f)
            tensors.append((name, "F8_E4M3", shape, bytes(codes)))
            tensors.append((module + ".weight_scale", "BF16", [out_f, 1], struct.pack("<%dH" % out_f, *scales)))
        else:
            g = spec["group_size"]
            q, zeros, scales, d = quantize_awq(flat, out_f, in_f, g)
            qweight, qzeros = pack_awq(q), pack_awq(zeros)
            tensors.append((module + ".qweight", "I32", [in_f, out_f // 8],
                            b"".join(struct.pack("<%di" % len(r), *r) for r in qweight)))
            tensors.append((module + ".qzeros", "I32", [in_f // g, out_f // 8],
                            b"".join(struct.pack("<%di" % len(r), *r) for r in qzeros)))
            tensors.append((module + ".scales", "F16", [in_f // g, out_f],
                            b"".join(struct.pack("<%de" % len(r), *r) for r in scales)))
        deq[name] = (shape, d)
    return tensors, deq


def safetensors_bytes(tensors):
    """A safetensors file: 8-byte header length, JSON header padded with spaces to 8 bytes, data back to back."""
    header, off = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + b"".join(t[3] for t in tensors)


def write_checkpoint(name, spec, out_dir):
    """Writes config.json and model.safetensors; returns the dequantized weights (for pure-Python goldens)."""
    tensors, deq = quantized_tensors(spec, original_weights(spec))
    data = safetensors_bytes(tensors)
    path = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() != data:
                print("  NOTE: %s differs from what this script writes now; replacing it (were the fixtures made by "
                      "another version of the script?)" % path, flush=True)
    with open(path, "wb") as f:
        f.write(data)
    base.write_json(os.path.join(out_dir, "config.json"), config_json(spec))
    print("  %s: %d tensors, %d bytes" % (name, len(tensors), len(data)), flush=True)
    return deq


# ----------------------------------------------------------------------------------------------
# goldens


def torch_dequantized(model_dir, spec):
    """{state_dict name: float32 tensor} dequantized by torch from the checkpoint on disk."""
    import torch
    from safetensors.torch import load_file

    t = load_file(os.path.join(model_dir, "model.safetensors"))
    state = {}
    for name, _ in base.expected_names(spec):
        module = name[:-len(".weight")]
        if name in t and t[name].dtype == torch.float8_e4m3fn:
            state[name] = t[name].to(torch.float32) * t[module + ".weight_scale"].to(torch.float32)
        elif name not in t and module + ".qweight" in t:
            state[name] = awq_dequantize_torch(t[module + ".qweight"], t[module + ".qzeros"], t[module + ".scales"])
        else:
            state[name] = t[name].to(torch.float32)
    return state


def awq_dequantize_torch(qweight, qzeros, scales):
    """[in, out/8] I32, [in/g, out/8] I32, [in/g, out] -> float32 [out, in], the way vLLM's reference unpacks it."""
    import torch
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)

    def unpack(x):
        v = torch.bitwise_right_shift(x[:, :, None], shifts[None, None, :]).reshape(x.shape[0], -1)
        order = torch.arange(v.shape[1]).reshape(-1, 8)[:, AWQ_REVERSE_ORDER].reshape(-1)
        return torch.bitwise_and(v[:, order], 0xF)

    q, z = unpack(qweight), unpack(qzeros)
    g = q.shape[0] // z.shape[0]
    w = (q - z.repeat_interleave(g, dim=0)).to(torch.float32) * scales.to(torch.float32).repeat_interleave(g, dim=0)
    return w.t().contiguous()


def compare_with_transformers_loader(model_dir, state):
    """tiny-fp8 through transformers' own compressed-tensors loading, if installed: same weights as ours?"""
    try:
        import compressed_tensors  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM
        try:
            from transformers import CompressedTensorsConfig
            kw = {"quantization_config": CompressedTensorsConfig(run_compressed=False)}
        except ImportError:
            kw = {}
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
        worst = 0.0
        for name, p in m.state_dict().items():
            if name in state and p.dtype.is_floating_point and p.shape == state[name].shape:
                ref = state[name]
                worst = max(worst, float((p.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)))
        print("  transformers' compressed-tensors loader vs our dequantization: max rel diff %.3g" % worst)
        if worst > 1e-2:
            raise SystemExit("tiny-fp8: transformers reads other weights than ours (max rel diff %.3g)" % worst)
    except SystemExit:
        raise
    except Exception as e:  # optional cross-check
        print("  (transformers' compressed-tensors loader not compared: %s: %s)" % (type(e).__name__, e))


def torch_goldens(name, spec, model_dir, device, python_deq=None):
    import torch
    import transformers
    from transformers import Qwen2ForCausalLM

    state = torch_dequantized(model_dir, spec)
    if python_deq is not None:  # the writer's dequantization and torch's reading of the file must agree exactly
        for n, (shape, flat) in python_deq.items():
            if not torch.equal(state[n], torch.tensor(flat, dtype=torch.float32).reshape(shape)):
                raise SystemExit("%s: %s dequantizes differently in torch than in the writer" % (name, n))
    if spec["method"] == "fp8" and name.startswith("tiny"):
        compare_with_transformers_loader(model_dir, state)

    model = Qwen2ForCausalLM(base.hf_config(spec)).to(torch.float32)
    # Every parameter from the checkpoint, nothing left over (non-persistent buffers such as RoPE's are the model's own).
    result = model.load_state_dict(state, strict=False)
    params = set(n for n, _ in model.named_parameters())
    if result.unexpected_keys or any(k in params for k in result.missing_keys):
        raise SystemExit("%s: load_state_dict: missing %s, unexpected %s" % (name, result.missing_keys, result.unexpected_keys))
    model.eval().to(device)
    generator = "transformers %s / torch %s on %s, float32 on the dequantized weights" % (
        transformers.__version__, torch.__version__, device)
    return generator, base.torch_prompts(name, model, spec, device)


def python_goldens(spec, deq):
    model = base.PyQwen2.__new__(base.PyQwen2)  # its weights are ours, not its own random ones
    model.s, model.w = spec, deq
    model.inv_freq, model.att = base.py_rope(spec)
    model.d = spec["hidden_size"] // spec["num_attention_heads"]
    return ("pure-python float64 reference on the dequantized weights (provisional, not transformers)",
            base.py_prompts(model, spec))


def write_goldens(name, spec, model_dir, generator, prompts):
    base.write_json(os.path.join(model_dir, "goldens.json"), {
        "format": 1,
        "generator": generator,
        "model": name,
        "seed": spec["seed"],
        "new_tokens": base.NEW_TOKENS,
        "prompts": prompts,
    })


# ----------------------------------------------------------------------------------------------
# full width (numpy): the same quantizers, vectorized


def np_bf16_bits(x):
    import numpy as np
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF).astype(np.uint16)


def np_fp8_codes(x):
    """fp8_code over a float64 array."""
    import numpy as np
    table = np.array(FP8_POSITIVE, dtype=np.float64)
    sign = np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    a = np.minimum(np.abs(x), FP8_MAX)
    hi = np.clip(np.searchsorted(table, a, side="left"), 1, len(table) - 1)
    lo = hi - 1
    d_lo, d_hi = a - table[lo], table[hi] - a
    take_lo = (d_lo < d_hi) | ((d_lo == d_hi) & (lo % 2 == 0))
    code = np.where(table[hi] == a, hi, np.where(take_lo, lo, hi))
    code = np.where(a == 0, 0, code)
    return (code.astype(np.uint8) | sign)


def np_quantize_fp8(w):
    """w float32 [out, in] -> (codes uint8 [out, in], scale bits uint16 [out, 1])."""
    import numpy as np
    amax = np.abs(w).max(axis=1).astype(np.float64)
    s_bits = np.where(amax > 0, np_bf16_bits((amax / FP8_MAX).astype(np.float32)), np_bf16_bits(np.float32(1.0)))
    s = (s_bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    codes = np.empty(w.shape, dtype=np.uint8)
    for r0 in range(0, w.shape[0], 1024):
        codes[r0:r0 + 1024] = np_fp8_codes(w[r0:r0 + 1024].astype(np.float64) / s[r0:r0 + 1024, None])
    return codes, s_bits.reshape(-1, 1)


def np_pack_awq(v):
    """[r, c] uint8 0..15 -> [r, c/8] int32, AutoAWQ's nibble order."""
    import numpy as np
    v = v.reshape(v.shape[0], -1, 8).astype(np.uint32)
    word = np.zeros(v.shape[:2], dtype=np.uint32)
    for n in range(8):
        word |= v[:, :, AWQ_ORDER_MAP[n]] << np.uint32(4 * n)
    return word.view(np.int32)


def np_quantize_awq(w, g):
    """w float32 [out, in] -> (qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales float16 [in/g, out])."""
    import numpy as np
    out_f, in_f = w.shape
    wg = w.astype(np.float64).reshape(out_f, in_f // g, g)
    mx, mn = wg.max(axis=2), wg.min(axis=2)
    s16 = np.maximum((mx - mn) / 15.0, 1e-5).astype(np.float16)
    s = s16.astype(np.float64)
    z = np.clip(np.rint(-mn / s), 0, 15)
    q = np.clip(np.rint(wg / s[:, :, None]) + z[:, :, None], 0, 15).astype(np.uint8).reshape(out_f, in_f)
    return np_pack_awq(np.ascontiguousarray(q.T)), np_pack_awq(np.ascontiguousarray(z.T.astype(np.uint8))), \
        np.ascontiguousarray(s16.T)


def self_check_numpy():
    """The numpy quantizers write the very bytes the pure-Python ones do (on a small random matrix)."""
    import numpy as np
    import random
    rng = random.Random(7)
    out_f, in_f, g = 16, 128, 32
    flat = [f32(rng.gauss(0, 0.02)) for _ in range(out_f * in_f)]
    flat[5] = 0.0
    w = np.array(flat, dtype=np.float32).reshape(out_f, in_f)
    codes, scales, _ = quantize_fp8(flat, out_f, in_f)
    nc, ns = np_quantize_fp8(w)
    assert bytes(codes) == nc.tobytes() and list(ns.reshape(-1)) == scales, "numpy FP8 quantizer disagrees"
    q, zeros, sc, _ = quantize_awq(flat, out_f, in_f, g)
    nq, nz, nsc = np_quantize_awq(w, g)
    assert nq.tolist() == pack_awq(q) and nz.tolist() == pack_awq(zeros), "numpy AWQ packing disagrees"
    assert nsc.astype(np.float64).tolist() == sc, "numpy AWQ scales disagree"


def write_full_width(name, spec, out_dir):
    """Streams the 2-layer full-width checkpoint to disk (numpy), tensor by tensor."""
    import numpy as np
    rng = np.random.default_rng(spec["seed"])
    quantized = set(m + ".weight" for m in linear_modules(spec))
    fp8 = spec["method"] == "fp8"
    entries = []  # (name, dtype, shape, array)
    for pname, shape in base.expected_names(spec):
        mean, std = base.init_kind(pname)
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean))
        module = pname[:-len(".weight")]
        if pname not in quantized:
            entries.append((pname, "BF16", shape, np_bf16_bits(w)) if fp8 else (pname, "F16", shape, w.astype(np.float16)))
        elif fp8:
            codes, s_bits = np_quantize_fp8(w)
            entries += [(pname, "F8_E4M3", shape, codes), (module + ".weight_scale", "BF16", [shape[0], 1], s_bits)]
        else:
            g = spec["group_size"]
            qw, qz, sc = np_quantize_awq(w, g)
            entries += [(module + ".qweight", "I32", list(qw.shape), qw), (module + ".qzeros", "I32", list(qz.shape), qz),
                        (module + ".scales", "F16", list(sc.shape), sc)]
        print("  %s: %s" % (pname, shape), flush=True)
    header, off = {}, 0
    for n, dtype, shape, a in entries:
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, _, _, a in entries:
            f.write(np.ascontiguousarray(a).tobytes())
    base.write_json(os.path.join(out_dir, "config.json"), config_json(spec))


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pure-python", action="store_true", help="do not use torch even if installed")
    ap.add_argument("--checkpoints-only", action="store_true", help="write the checkpoints, no goldens")
    ap.add_argument("--goldens-only", action="store_true", help="goldens for the checkpoints already in OUT_DIR")
    ap.add_argument("--full-width", action="store_true", help="2-layer full-width variants (large; numpy + torch)")
    ap.add_argument("--only", help="comma-separated model names to build, in that order (default: every one of the "
                    "kind chosen), e.g. full-awq: each full-width model takes minutes")
    args = ap.parse_args()

    use_torch = not args.pure_python and base.torch_available()
    if use_torch:
        import torch
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_default_dtype(torch.float32)
    elif args.goldens_only or args.full_width:
        raise SystemExit("--goldens-only and --full-width need torch, transformers and safetensors")
    elif not args.checkpoints_only and not args.pure_python:
        print("torch/transformers/safetensors not importable: pure-Python goldens (provisional)", file=sys.stderr)

    models = FULL_MODELS if args.full_width else MODELS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in models]
        if unknown or not names:
            raise SystemExit("--only %s: not a model of this kind (%s)" % (",".join(unknown) or "''", ", ".join(models)))
        models = {n: models[n] for n in names}
    if args.full_width:
        self_check_numpy()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, spec in models.items():
        print("building %s" % name, flush=True)
        d = os.path.join(args.out_dir, name)
        os.makedirs(d, exist_ok=True)
        deq = None
        if args.full_width:
            write_full_width(name, spec, d)
        elif not args.goldens_only:
            deq = write_checkpoint(name, spec, d)
        if args.checkpoints_only:
            continue
        if use_torch:
            generator, prompts = torch_goldens(name, spec, d, args.device, deq)
        else:
            generator, prompts = python_goldens(spec, deq)
        write_goldens(name, spec, d, generator, prompts)
    print("done: %s" % args.out_dir)


if __name__ == "__main__":
    main()

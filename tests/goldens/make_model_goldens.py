#!/usr/bin/env python3
"""Builds tiny random Qwen2ForCausalLM checkpoints and the goldens the C# CPU reference is tested against.

    python3 make_model_goldens.py OUT_DIR [--device cpu|cuda] [--pure-python]

Writes, for each model in MODELS:
    OUT_DIR/<name>/model.safetensors   float32 weights (every value exactly representable in bf16, so a
                                       bf16 GPU engine holds the very same weights)
    OUT_DIR/<name>/config.json         release-style config (transformers 4 keys, like QwQ-32B's own)
    OUT_DIR/<name>/config.hf.json      the config as the installed transformers serialises it (torch path only)
    OUT_DIR/<name>/goldens.json        prompts, logits at every prompt position, greedy continuations
and OUT_DIR/rope.json: inv_freq and attention factor transformers computes for several RoPE configs,
including the real QwQ-32B config with and without YaRN (factor 4, original 32768).

Needs torch + transformers (4.4x or 5.x) + safetensors. No network access is used. Runs on CPU by
default (exact float32, no TF32); --device cuda is allowed but then TF32 is disabled explicitly.

Without torch, or with --pure-python, a slow pure-Python float64 implementation of the same model is
used instead and goldens.json says so ("generator": "pure-python ..."): those are provisional fixtures
that test the C# code against an independent implementation, not against transformers.
"""

import argparse
import json
import math
import operator
import os
import random
import struct
import sys

NEW_TOKENS = 32
PROMPT_LENGTHS = [5, 23, 40]

BASE = dict(
    hidden_size=320,            # 10 query heads x head_dim 32
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=10,
    num_key_value_heads=2,      # GQA: 5 query heads per KV head
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
)

MODELS = {
    "tiny-gqa": dict(BASE, seed=1234, rope_scaling=None),
    "tiny-yarn": dict(BASE, seed=5678,
                      rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
}

QWQ_32B = dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
               num_key_value_heads=8, vocab_size=152064, max_position_embeddings=40960, rms_norm_eps=1e-5,
               rope_theta=1000000.0)

ROPE_CASES = [
    ("tiny-gqa", dict(BASE, rope_scaling=None)),
    ("tiny-yarn", dict(BASE, rope_scaling=MODELS["tiny-yarn"]["rope_scaling"])),
    ("qwq-32b", dict(QWQ_32B, rope_scaling=None)),
    ("qwq-32b-yarn4", dict(QWQ_32B, rope_scaling={"type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 32768})),
    ("tiny-yarn-mscale", dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 40.0,
                                                  "original_max_position_embeddings": 4096,
                                                  "beta_fast": 32, "beta_slow": 1,
                                                  "mscale": 1.0, "mscale_all_dim": 0.8})),
    ("tiny-yarn-untruncated", dict(BASE, rope_scaling={"rope_type": "yarn", "factor": 8.0,
                                                       "original_max_position_embeddings": 64,
                                                       "beta_fast": 16, "beta_slow": 2,
                                                       "attention_factor": 1.25, "truncate": False})),
]


# ----------------------------------------------------------------------------------------------
# shared helpers


def release_config(spec, dtype="float32"):
    """config.json in the layout of the QwQ-32B release (transformers 4 keys)."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": spec["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": spec["intermediate_size"],
        "max_position_embeddings": spec["max_position_embeddings"],
        "max_window_layers": spec["num_hidden_layers"],
        "model_type": "qwen2",
        "num_attention_heads": spec["num_attention_heads"],
        "num_hidden_layers": spec["num_hidden_layers"],
        "num_key_value_heads": spec["num_key_value_heads"],
        "rms_norm_eps": spec["rms_norm_eps"],
        "rope_theta": spec["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": spec["vocab_size"],
    }
    if spec.get("rope_scaling"):
        cfg["rope_scaling"] = dict(spec["rope_scaling"])
    return cfg


def prompts_for(spec):
    rng = random.Random(spec["seed"] + 1)
    return [[rng.randrange(spec["vocab_size"]) for _ in range(n)] for n in PROMPT_LENGTHS]


def expected_names(spec):
    """(name, shape) in state_dict order."""
    h, i = spec["hidden_size"], spec["intermediate_size"]
    d = h // spec["num_attention_heads"]
    q, kv = spec["num_attention_heads"] * d, spec["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", [spec["vocab_size"], h])]
    for l in range(spec["num_hidden_layers"]):
        p = "model.layers.%d." % l
        out += [
            (p + "self_attn.q_proj.weight", [q, h]), (p + "self_attn.q_proj.bias", [q]),
            (p + "self_attn.k_proj.weight", [kv, h]), (p + "self_attn.k_proj.bias", [kv]),
            (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.v_proj.bias", [kv]),
            (p + "self_attn.o_proj.weight", [h, q]),
            (p + "mlp.gate_proj.weight", [i, h]), (p + "mlp.up_proj.weight", [i, h]),
            (p + "mlp.down_proj.weight", [h, i]),
            (p + "input_layernorm.weight", [h]), (p + "post_attention_layernorm.weight", [h]),
        ]
    out += [("model.norm.weight", [h]), ("lm_head.weight", [spec["vocab_size"], h])]
    return out


def init_kind(name):
    """(mean, std) of the random init: norms around 1, biases 0.1, matrices 0.02."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if name.endswith(".bias"):
        return 0.0, 0.1
    return 0.0, 0.02


def fmt(x):
    return float("%.9g" % x)  # 9 significant digits round-trip any float32


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def margins_of(rows):
    out = []
    for r in rows:
        a, b = sorted(r, reverse=True)[:2]
        out.append(fmt(a - b))
    return out


# ----------------------------------------------------------------------------------------------
# transformers path


def torch_available():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import safetensors  # noqa: F401
        return True
    except ImportError:
        return False


def hf_config(spec, attn="eager"):
    """A Qwen2Config for spec on transformers 4 (rope_scaling) or 5 (rope_parameters)."""
    import inspect
    from transformers import Qwen2Config

    kwargs = {k: spec[k] for k in QWQ_32B}
    kwargs.update(tie_word_embeddings=False, use_sliding_window=False, hidden_act="silu",
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    scaling = spec.get("rope_scaling")
    v5 = "rope_parameters" in inspect.signature(Qwen2Config.__init__).parameters
    if v5:
        params = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
        if scaling:
            params = dict(scaling)
            params["rope_type"] = params.pop("type", params.get("rope_type"))
            params["rope_theta"] = spec["rope_theta"]
        kwargs["rope_parameters"] = params
    elif scaling:
        kwargs["rope_scaling"] = dict(scaling)

    def make(kw):
        try:
            return Qwen2Config(attn_implementation=attn, **kw)
        except TypeError:
            c = Qwen2Config(**kw)
            c._attn_implementation = attn
            return c

    try:
        return make(kwargs)
    except ValueError:
        # Some versions insist max_position_embeddings == factor * original; with an explicit factor that
        # value does not enter the YaRN frequencies, so adjusting it changes nothing we record.
        if not scaling:
            raise
        kw = dict(kwargs, max_position_embeddings=int(scaling["factor"] * scaling["original_max_position_embeddings"]))
        return make(kw)


def torch_rope(spec):
    import torch
    cfg = hf_config(spec)
    try:
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
        rot = Qwen2RotaryEmbedding(config=cfg, device=torch.device("cpu"))
        inv, scale = rot.inv_freq, rot.attention_scaling
    except Exception:  # pragma: no cover - older layouts
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        kind = (spec.get("rope_scaling") or {}).get("type") or (spec.get("rope_scaling") or {}).get("rope_type") or "default"
        inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg, torch.device("cpu"))
    return [fmt(x) for x in inv.float().tolist()], float(scale)


def torch_model(name, spec, out_dir, device):
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(spec["seed"])
    cfg = hf_config(spec)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    names = dict(expected_names(spec))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            mean, std = init_kind(pname)
            p.normal_(mean, std)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))  # bf16-exact values
    model.eval().to(device)

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    missing = [n for n in names if n not in state]
    if missing:
        raise SystemExit("%s: state_dict lacks %s" % (name, missing))
    for n, shape in names.items():
        if list(state[n].shape) != shape:
            raise SystemExit("%s: %s has shape %s, expected %s" % (name, n, list(state[n].shape), shape))
    state = {n: state[n] for n in names}  # drop anything else (non-persistent buffers etc.)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(out_dir, "config.json"), release_config(spec))
    try:
        model.config.to_json_file(os.path.join(out_dir, "config.hf.json"))
    except Exception as e:  # only informative
        print("  (could not write config.hf.json: %s)" % e)

    generator = "transformers %s / torch %s on %s" % (transformers.__version__, torch.__version__, device)
    return generator, torch_prompts(name, model, spec, device)


def torch_prompts(name, model, spec, device):
    """Logits at every prompt position and the greedy continuation of each prompt, from a float32 HF model."""
    import torch
    try:
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, bos_token_id=None,
                                                   pad_token_id=0)
    except Exception:
        pass
    prompts = []
    with torch.no_grad():
        for ids in prompts_for(spec):
            x = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=x).logits[0].float().cpu()
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=0, pad_token_id=0,
                                 output_scores=True, return_dict_in_generate=True)
            new = gen.sequences[0, len(ids):].tolist()
            if len(new) != NEW_TOKENS:
                raise SystemExit("%s: generate stopped after %d tokens" % (name, len(new)))
            scores = [s[0].float().cpu().tolist() for s in gen.scores]
            prompts.append({
                "ids": ids,
                "logits": [[fmt(v) for v in row] for row in logits.tolist()],
                "greedy": new,
                "greedy_margins": margins_of(scores),
            })
    return prompts


# ----------------------------------------------------------------------------------------------
# pure-Python fallback (float64 everywhere except RoPE tables, which emulate torch's float32 steps)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bf16_round(x):
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def py_rope(spec):
    """transformers' default / YaRN inv_freq, with each float32 tensor op rounded to float32."""
    dim = spec["hidden_size"] // spec["num_attention_heads"]
    half = dim // 2
    base = f32(spec["rope_theta"])
    pos_freqs = [f32(math.pow(base, f32(f32(2 * i) / dim))) for i in range(half)]
    s = spec.get("rope_scaling")
    if not s:
        return [f32(1.0 / p) for p in pos_freqs], 1.0
    factor = s["factor"]
    orig = s.get("original_max_position_embeddings") or spec["max_position_embeddings"]
    beta_fast = s.get("beta_fast") or 32
    beta_slow = s.get("beta_slow") or 1

    def corr_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(spec["rope_theta"]))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    rng = f32(high - low)
    inv = []
    for i in range(half):
        extra = f32(1.0 / pos_freqs[i])
        inter = f32(1.0 / f32(f32(factor) * pos_freqs[i]))
        ramp = min(max(f32(f32(f32(i) - f32(low)) / rng), 0.0), 1.0)
        ef = f32(1.0 - ramp)
        inv.append(f32(f32(inter * f32(1.0 - ef)) + f32(extra * ef)))

    def mscale(sc, m=1.0):
        return 1.0 if sc <= 1 else 0.1 * m * math.log(sc) + 1.0

    att = s.get("attention_factor")
    if att is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            att = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            att = mscale(factor)
    return inv, float(att)


class PyQwen2:
    def __init__(self, spec):
        self.s = spec
        rng = random.Random(spec["seed"])
        self.w = {}
        for name, shape in expected_names(spec):
            mean, std = init_kind(name)
            n = shape[0] if len(shape) == 1 else shape[0] * shape[1]
            flat = [bf16_round(rng.gauss(mean, std)) for _ in range(n)]
            self.w[name] = (shape, flat)
        self.inv_freq, self.att = py_rope(spec)
        self.d = spec["hidden_size"] // spec["num_attention_heads"]

    def rows(self, name):
        shape, flat = self.w[name]
        if len(shape) == 1:
            return flat
        c = shape[1]
        return [flat[r * c:(r + 1) * c] for r in range(shape[0])]

    def prepare(self):
        self.m = {n: self.rows(n) for n in self.w}

    @staticmethod
    def linear(x, W, b=None):
        y = [sum(map(operator.mul, row, x)) for row in W]
        return [v + bb for v, bb in zip(y, b)] if b is not None else y

    def rmsnorm(self, x, w):
        var = sum(v * v for v in x) / len(x)
        inv = 1.0 / math.sqrt(var + self.s["rms_norm_eps"])
        return [wi * (xi * inv) for xi, wi in zip(x, w)]

    def rope(self, vec, heads, pos):
        d, half = self.d, self.d // 2
        att = f32(self.att)
        cs = []
        for i in range(half):
            ang = f32(f32(float(pos)) * self.inv_freq[i])
            cs.append((f32(f32(math.cos(ang)) * att), f32(f32(math.sin(ang)) * att)))
        out = list(vec)
        for h in range(heads):
            o = h * d
            for i in range(half):
                c, s_ = cs[i]
                x1, x2 = vec[o + i], vec[o + i + half]
                out[o + i] = x1 * c - x2 * s_
                out[o + i + half] = x2 * c + x1 * s_
        return out

    def step(self, token, pos, cache):
        """One token at position pos; cache[layer] = (list of k vectors, list of v vectors)."""
        s, m, d = self.s, self.m, self.d
        nq, nkv = s["num_attention_heads"], s["num_key_value_heads"]
        group = nq // nkv
        x = list(m["model.embed_tokens.weight"][token])
        for l in range(s["num_hidden_layers"]):
            p = "model.layers.%d." % l
            h = self.rmsnorm(x, m[p + "input_layernorm.weight"])
            q = self.rope(self.linear(h, m[p + "self_attn.q_proj.weight"], m[p + "self_attn.q_proj.bias"]), nq, pos)
            k = self.rope(self.linear(h, m[p + "self_attn.k_proj.weight"], m[p + "self_attn.k_proj.bias"]), nkv, pos)
            v = self.linear(h, m[p + "self_attn.v_proj.weight"], m[p + "self_attn.v_proj.bias"])
            ks, vs = cache[l]
            ks.append(k)
            vs.append(v)
            scale = 1.0 / math.sqrt(d)
            attn = []
            for hd in range(nq):
                kvh = hd // group
                qh = q[hd * d:(hd + 1) * d]
                sc = [sum(map(operator.mul, qh, kk[kvh * d:(kvh + 1) * d])) * scale for kk in ks]
                mx = max(sc)
                e = [math.exp(z - mx) for z in sc]
                tot = sum(e)
                o = [0.0] * d
                for pr, vv in zip(e, vs):
                    pr /= tot
                    seg = vv[kvh * d:(kvh + 1) * d]
                    for j in range(d):
                        o[j] += pr * seg[j]
                attn.extend(o)
            x = [a + b for a, b in zip(x, self.linear(attn, m[p + "self_attn.o_proj.weight"]))]
            h = self.rmsnorm(x, m[p + "post_attention_layernorm.weight"])
            g = self.linear(h, m[p + "mlp.gate_proj.weight"])
            u = self.linear(h, m[p + "mlp.up_proj.weight"])
            a = [gi / (1.0 + math.exp(-gi)) * ui for gi, ui in zip(g, u)]
            x = [a_ + b for a_, b in zip(x, self.linear(a, m[p + "mlp.down_proj.weight"]))]
        h = self.rmsnorm(x, m["model.norm.weight"])
        return self.linear(h, m["lm_head.weight"])

    def save_safetensors(self, path):
        header, blobs, off = {}, [], 0
        for name, (shape, flat) in self.w.items():
            data = struct.pack("<%df" % len(flat), *flat)
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
            blobs.append(data)
            off += len(data)
        header["__metadata__"] = {"format": "pt"}
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for b in blobs:
                f.write(b)


def argmax(row):
    best = 0
    for i in range(1, len(row)):
        if row[i] > row[best]:
            best = i
    return best


def python_model(name, spec, out_dir):
    model = PyQwen2(spec)
    model.save_safetensors(os.path.join(out_dir, "model.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), release_config(spec))
    return "pure-python float64 reference (provisional, not transformers)", py_prompts(model, spec)


def py_prompts(model, spec):
    """torch_prompts' output, from the float64 PyQwen2 (prepares its weight rows first)."""
    model.prepare()
    prompts = []
    for ids in prompts_for(spec):
        cache = [([], []) for _ in range(spec["num_hidden_layers"])]
        logits = [model.step(t, pos, cache) for pos, t in enumerate(ids)]
        last, new, scores = logits[-1], [], []
        for n in range(NEW_TOKENS):
            scores.append(last)
            tok = argmax(last)
            new.append(tok)
            if n + 1 < NEW_TOKENS:
                last = model.step(tok, len(ids) + n, cache)
        prompts.append({
            "ids": ids,
            "logits": [[fmt(v) for v in row] for row in logits],
            "greedy": new,
            "greedy_margins": margins_of(scores),
        })
        print("  prompt of %d tokens done" % len(ids), flush=True)
    return prompts


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pure-python", action="store_true", help="do not use torch even if installed")
    args = ap.parse_args()

    use_torch = not args.pure_python and torch_available()
    if not use_torch and not args.pure_python:
        print("torch/transformers/safetensors not importable: using the pure-Python fallback", file=sys.stderr)
    if use_torch:
        import torch
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_default_dtype(torch.float32)

    os.makedirs(args.out_dir, exist_ok=True)
    for name, spec in MODELS.items():
        print("building %s" % name, flush=True)
        d = os.path.join(args.out_dir, name)
        os.makedirs(d, exist_ok=True)
        if use_torch:
            generator, prompts = torch_model(name, spec, d, args.device)
        else:
            generator, prompts = python_model(name, spec, d)
        write_json(os.path.join(d, "goldens.json"), {
            "format": 1,
            "generator": generator,
            "model": name,
            "seed": spec["seed"],
            "new_tokens": NEW_TOKENS,
            "prompts": prompts,
        })

    cases = []
    for name, spec in ROPE_CASES:
        inv, att = torch_rope(spec) if use_torch else py_rope(spec)
        cases.append({"name": name, "config": release_config(spec, "bfloat16"),
                      "inv_freq": [fmt(x) for x in inv], "attention_factor": att})
    if use_torch:
        import torch
        import transformers
        rope_gen = "transformers %s / torch %s" % (transformers.__version__, torch.__version__)
    else:
        rope_gen = "pure-python float32 emulation (provisional, not transformers)"
    write_json(os.path.join(args.out_dir, "rope.json"), {"format": 1, "generator": rope_gen, "cases": cases})
    print("done: %s" % args.out_dir)


if __name__ == "__main__":
    main()

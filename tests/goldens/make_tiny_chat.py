#!/usr/bin/env python3
"""Builds tests/fixtures/models/tiny-chat: a complete, tiny, random QwQ-style chat model that runs anywhere.

    python3 tests/goldens/make_tiny_chat.py [OUT_DIR]     (default: tests/fixtures/models/tiny-chat)

Pure Python (no numpy/torch), deterministic (fixed seed), no network. It writes:
    config.json             Qwen2ForCausalLM: hidden 64, 2 layers, 4 query / 2 KV heads (head_dim 16),
                            intermediate 128, vocab 512, 4096 positions, untied lm_head
    model.safetensors       random bf16 weights: matrices N(0, 0.02), q/k/v biases N(0, 0.1), norms 1 + N(0, 0.1)
    tokenizer.json          QwQ's byte-level BPE cut down to ids 0..485: the 256 byte tokens (in QwQ's order, so
                            byte tokens keep QwQ's ids) and QwQ's first 230 merges; QwQ's 26 added tokens
                            (<|endoftext|>, <|im_start|>, <|im_end|>, <tool_call>, <think>, ...) moved to 486..511,
                            same order and flags; QwQ's normalizer, pre-tokenizer regex and decoder
    tokenizer_config.json   QwQ's, with the added tokens' new ids and QwQ's chat template (so ChatTemplate finds it)
    generation_config.json  QwQ's sampling defaults with the new end-of-sequence ids

Source of the QwQ parts: the release's tokenizer files bundled in src/QwQ.Cuda/Presets/qwq-32b. The text it
generates is gibberish; what it is for is running every layer of the stack (tokenizer, template, sessions, CLI,
server) on a machine without a GPU in well under a second per request.
"""

import gzip
import json
import os
import random
import struct
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PRESET = os.path.join(ROOT, "src", "QwQ.Cuda", "Presets", "qwq-32b")
SEED = 20261127
MERGES = 230            # 256 bytes + 230 merges + 26 added tokens = 512 = vocab_size

CONFIG = dict(
    architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, hidden_act="silu",
    hidden_size=64, initializer_range=0.02, intermediate_size=128, max_position_embeddings=4096,
    max_window_layers=2, model_type="qwen2", num_attention_heads=4, num_hidden_layers=2,
    num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=None,
    tie_word_embeddings=False, torch_dtype="bfloat16", use_cache=True, use_sliding_window=False,
    vocab_size=512,
)


def bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bits."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def tensors(cfg, rng):
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    def normal(shape, std, mean=0.0):
        n = 1
        for s in shape: n *= s
        return shape, [mean + rng.gauss(0.0, std) for _ in range(n)]
    out = {"model.embed_tokens.weight": normal([v, h], 0.02)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = normal([h], 0.1, 1.0)
        out[p + "self_attn.q_proj.weight"] = normal([q, h], 0.02)
        out[p + "self_attn.q_proj.bias"] = normal([q], 0.1)
        out[p + "self_attn.k_proj.weight"] = normal([kv, h], 0.02)
        out[p + "self_attn.k_proj.bias"] = normal([kv], 0.1)
        out[p + "self_attn.v_proj.weight"] = normal([kv, h], 0.02)
        out[p + "self_attn.v_proj.bias"] = normal([kv], 0.1)
        out[p + "self_attn.o_proj.weight"] = normal([h, q], 0.02)
        out[p + "post_attention_layernorm.weight"] = normal([h], 0.1, 1.0)
        out[p + "mlp.gate_proj.weight"] = normal([inter, h], 0.02)
        out[p + "mlp.up_proj.weight"] = normal([inter, h], 0.02)
        out[p + "mlp.down_proj.weight"] = normal([h, inter], 0.02)
    out["model.norm.weight"] = normal([h], 0.1, 1.0)
    out["lm_head.weight"] = normal([v, h], 0.02)
    return out


def write_safetensors(path, named):
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in named.items():
        data = struct.pack(f"<{len(values)}H", *(bf16_bits(x) for x in values))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt", "generator": "tests/goldens/make_tiny_chat.py"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs: f.write(b)


def tokenizer(src):
    by_id = sorted(src["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {tok: i for tok, i in by_id[:256]}               # the byte alphabet, QwQ's ids 0..255
    merges = []
    for m in src["model"]["merges"][:MERGES]:
        a, b = m if isinstance(m, list) else m.split(" ")
        assert a in vocab and b in vocab, (a, b)              # BPE order: each merge builds on earlier ones
        vocab.setdefault(a + b, len(vocab))
        merges.append([a, b])
    assert len(vocab) == 256 + MERGES, len(vocab)
    remap = {}
    added = []
    for t in src["added_tokens"]:
        remap[t["id"]] = len(vocab) + len(added)
        added.append(dict(t, id=remap[t["id"]]))
    out = dict(src)
    out["added_tokens"] = added
    out["model"] = dict(src["model"], vocab=vocab, merges=merges)
    return out, remap


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "models", "tiny-chat")
    os.makedirs(out_dir, exist_ok=True)
    with gzip.open(os.path.join(PRESET, "tokenizer.json.gz"), "rt", encoding="utf-8") as f:
        tok, remap = tokenizer(json.load(f))
    assert max(remap.values()) < CONFIG["vocab_size"]
    with open(os.path.join(PRESET, "tokenizer_config.json"), encoding="utf-8") as f:
        tcfg = json.load(f)
    tcfg["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in tcfg["added_tokens_decoder"].items()}
    tcfg["model_max_length"] = CONFIG["max_position_embeddings"]
    with open(os.path.join(PRESET, "generation_config.json"), encoding="utf-8") as f:
        gen = json.load(f)
    for key in ("bos_token_id", "pad_token_id"):
        gen[key] = remap[gen[key]]
    gen["eos_token_id"] = [remap[i] for i in gen["eos_token_id"]]

    def dump(name, obj, **kw):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            json.dump(obj, f, ensure_ascii=False, **kw)
            f.write("\n")
    dump("config.json", CONFIG, indent=2)
    dump("generation_config.json", gen, indent=2)
    dump("tokenizer_config.json", tcfg, indent=2)
    dump("tokenizer.json", tok, separators=(",", ":"))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors(CONFIG, random.Random(SEED)))
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()

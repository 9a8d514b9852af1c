"""Writes a QwQ-32B-shaped bf16 checkpoint with random weights, sharded as the release is, for timing the loader on
the GPU machine (its 64 GB disk cannot hold all 64 layers: pass --layers). Usage:
    python3 bench/loading/write_checkpoint.py OUT_DIR --layers 16
The config is the release's with num_hidden_layers changed; tokenizer files are copied from the embedded preset."""
import argparse, json, os, shutil, sys
import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=16)
p.add_argument("--shard-gb", type=float, default=4.0)
a = p.parse_args()
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
preset = os.path.join(root, "src", "QwQ.Cuda", "Presets", "qwq-32b")
cfg = json.load(open(os.path.join(root, "tests", "fixtures", "qwq-32b", "config.json")))
cfg["num_hidden_layers"] = a.layers
os.makedirs(a.out, exist_ok=True)
json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"))
for f in os.listdir(preset):
    if f.endswith(".json") or f.endswith(".gz"):
        shutil.copy(os.path.join(preset, f), a.out)

h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
d = h // nq
shapes = [("model.embed_tokens.weight", (v, h))]
for l in range(a.layers):
    pre = f"model.layers.{l}."
    shapes += [(pre + "input_layernorm.weight", (h,)), (pre + "post_attention_layernorm.weight", (h,)),
               (pre + "self_attn.q_proj.weight", (nq * d, h)), (pre + "self_attn.q_proj.bias", (nq * d,)),
               (pre + "self_attn.k_proj.weight", (nkv * d, h)), (pre + "self_attn.k_proj.bias", (nkv * d,)),
               (pre + "self_attn.v_proj.weight", (nkv * d, h)), (pre + "self_attn.v_proj.bias", (nkv * d,)),
               (pre + "self_attn.o_proj.weight", (h, nq * d)),
               (pre + "mlp.gate_proj.weight", (i, h)), (pre + "mlp.up_proj.weight", (i, h)), (pre + "mlp.down_proj.weight", (h, i))]
shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]

g = torch.Generator(device="cuda").manual_seed(1)
shards, cur, size = [], {}, 0
for name, shape in shapes:
    t = (torch.randn(shape, generator=g, device="cuda") * 0.02).to(torch.bfloat16).cpu()
    cur[name] = t
    size += t.numel() * 2
    if size >= a.shard_gb * 1e9:
        shards.append(cur); cur, size = {}, 0
if cur: shards.append(cur)
index = {"metadata": {"total_size": sum(t.numel() * 2 for s in shards for t in s.values())}, "weight_map": {}}
for k, s in enumerate(shards):
    fn = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(s, os.path.join(a.out, fn), metadata={"format": "pt"})
    for name in s: index["weight_map"][name] = fn
json.dump(index, open(os.path.join(a.out, "model.safetensors.index.json"), "w"))
print(f"wrote {len(shards)} shards, {index['metadata']['total_size'] / 1e9:.1f} GB, to {a.out}", file=sys.stderr)

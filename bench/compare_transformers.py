#!/usr/bin/env python3
"""transformers on the same shapes as `qwq bench`, for `qwq bench --compare`.

    python3 bench/compare_transformers.py --config CONFIG.json --prefill 512,2048 --decode 1024 --steps 32 --out OUT.json

Builds Qwen2ForCausalLM from the config with random bf16 weights directly on the GPU (no checkpoint), then
times prefill (one forward over n tokens) and decode (ms/token at a context) with transformers' fastest
batch-1 setting: a static KV cache and torch.compile (CUDA graphs). Writes
{"mode": ..., "prefill_ms": {n: ms}, "decode_ms": {ctx: ms}}.
"""
import argparse, json, time

import torch
from transformers import AutoConfig, Qwen2ForCausalLM
from transformers.cache_utils import StaticCache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--decode", default="1024")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", required=True)
    ap.add_argument("--eager", action="store_true", help="skip torch.compile")
    a = ap.parse_args()
    prefill = [int(x) for x in a.prefill.split(",") if x]
    decode = [int(x) for x in a.decode.split(",") if x]

    cfg = AutoConfig.from_pretrained(a.config)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.eval()
    max_len = max(prefill + [c + a.steps + 1 for c in decode])
    cache = StaticCache(config=cfg, max_batch_size=1, max_cache_len=max_len, device="cuda", dtype=torch.bfloat16)

    def step(ids, pos):
        return model(input_ids=ids, cache_position=pos, past_key_values=cache, use_cache=True).logits

    decode_fn = step if a.eager else torch.compile(step, mode="reduce-overhead", fullgraph=True)
    res = {"mode": "eager static cache" if a.eager else "static cache + torch.compile", "prefill_ms": {}, "decode_ms": {}}
    with torch.inference_mode():
        for n in prefill:
            ids = torch.randint(0, 150000, (1, n), device="cuda")
            times = []
            for _ in range(3):
                cache.reset()
                torch.cuda.synchronize(); t = time.perf_counter()
                step(ids, torch.arange(n, device="cuda"))
                torch.cuda.synchronize(); times.append((time.perf_counter() - t) * 1e3)
            res["prefill_ms"][n] = sorted(times)[1]
            print(f"transformers prefill {n}: {res['prefill_ms'][n]:.1f} ms", flush=True)
        for ctx in decode:
            cache.reset()
            ids = torch.randint(0, 150000, (1, ctx), device="cuda")
            step(ids, torch.arange(ctx, device="cuda"))
            tok = torch.randint(0, 150000, (1, 1), device="cuda")
            for i in range(3):  # compile and capture
                decode_fn(tok, torch.tensor([ctx + i], device="cuda"))
            torch.cuda.synchronize(); t = time.perf_counter()
            for i in range(a.steps):
                logits = decode_fn(tok, torch.tensor([ctx + 3 + i], device="cuda"))
                tok = logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            res["decode_ms"][ctx] = (time.perf_counter() - t) * 1e3 / a.steps
            print(f"transformers decode at {ctx}: {res['decode_ms'][ctx]:.2f} ms/token", flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

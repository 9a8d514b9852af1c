#!/usr/bin/env python3
"""transformers on the same shapes as `qwq bench`, for `qwq bench --compare`.

    python3 bench/compare_transformers.py --config CONFIG.json --prefill 512,2048 --decode 1024 --steps 32 --out OUT.json

Builds Qwen2ForCausalLM from the config with random bf16 weights directly on the GPU (no checkpoint), then
times prefill (one eager forward over n tokens into a static cache) and decode (ms/token at a context) with
transformers' fastest batch-1 setting: generate() with a static KV cache, which compiles its decoding forward
with torch.compile (CUDA graphs) by itself. Writes
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
        del cache
        torch.cuda.empty_cache()
        # decode: transformers' own recipe for its fastest batch-1 mode (static cache + compiled forward with
        # CUDA graphs), timed as generate(1 + steps tokens) minus generate(1 token) over the same prompt
        model.generation_config.cache_implementation = "static"
        model.generation_config.pad_token_id = 0
        # generate() compiles the decoding forward itself (CUDA graphs) when the cache is static
        model.generation_config.disable_compile = a.eager

        def gen(ids, n):
            torch.cuda.synchronize(); t = time.perf_counter()
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            torch.cuda.synchronize(); return (time.perf_counter() - t) * 1e3

        for ctx in decode:
            ids = torch.randint(0, 150000, (1, ctx), device="cuda")
            for _ in range(2):  # compile and capture
                gen(ids, 1 + a.steps)
            one = sorted(gen(ids, 1) for _ in range(3))[1]
            full = sorted(gen(ids, 1 + a.steps) for _ in range(3))[1]
            res["decode_ms"][ctx] = (full - one) / a.steps
            print(f"transformers decode at {ctx}: {res['decode_ms'][ctx]:.2f} ms/token", flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

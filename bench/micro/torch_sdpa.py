#!/usr/bin/env python3
"""torch's scaled_dot_product_attention at QwQ-32B's prefill shape, the figure issue #13's attention target is set
against ("ahead of torch's 627 TFLOP/s at 16k and 335 at 2k on the same card", measured on an H100).

Causal, one sequence, 40 query / 8 KV heads, head_dim 128, bf16, every SDPA backend this torch has (the default
dispatch first), so that a card other than the H100 gets its own torch figure beside ours
(bench/micro/attention_prefill_sm90.cu). FLOPs are counted as that micro-benchmark counts them:
4 * nq * D * T(T+1)/2 (causal, no prefix). GQA runs with enable_gqa=True; a backend that refuses it runs on K/V
repeated to 40 heads beforehand (the repeat is not timed; the row says so).

Each (backend, T) is timed twice, forward then backward over the list, and keeps the faster (the cards are power-bound
in prefill: a long run before a case lowers its clock, bench/NOTES.md session 19). Also checks each backend's output
against the math backend in fp32 at T = 2048 (||out - ref|| / ||ref||), so a figure is only printed for a backend that
computes the right thing.

GPU machine: python3 bench/micro/torch_sdpa.py [--out file.json]
"""
import argparse
import contextlib
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

NQ, NKV, D = 40, 8, 128


def inputs(t, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, NQ, t, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, NKV, t, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, NKV, t, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def using(backend):
    """The backend forced (None: torch's default dispatch)."""
    return sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()


def runner(backend, q, k, v):
    """A closure that runs the backend once, and whether it needed K/V repeated (None if the backend refuses)."""
    def gqa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    kr, vr = k.repeat_interleave(NQ // NKV, dim=1), v.repeat_interleave(NQ // NKV, dim=1)
    def repeated():
        return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
    for fn, rep in ((gqa, False), (repeated, True)):
        try:
            with using(backend):
                fn()
            torch.cuda.synchronize()
            return fn, rep
        except RuntimeError:
            continue
    return None, None


def time_ms(backend, fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with using(backend):
        for _ in range(3):
            fn()
        best = float("inf")
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_sdpa: no CUDA device", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {gpu}")
    backends = [("default", None)] + [(b.name, b) for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                                             SDPBackend.EFFICIENT_ATTENTION)]
    # correctness at 2k against the math backend in fp32
    q, k, v = inputs(2048, 1)
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(NQ // NKV, 1),
                                         v.float().repeat_interleave(NQ // NKV, 1), is_causal=True)
    ok = {}
    for name, b in backends:
        fn, rep = runner(b, q, k, v)
        if fn is None:
            print(f"{name:20s} refused this shape")
            continue
        with using(b):
            out = fn().float()
        rel = ((out - ref).norm() / ref.norm()).item()
        good = rel == rel and rel <= 1e-2
        print(f"{name:20s} rel {rel:.2e} {'PASS' if good else 'FAIL'}{' (K/V repeated)' if rep else ''}")
        if good:
            ok[name] = b
    figures = {}
    cases = [(t, name) for t in (2048, 16384) for name in ok]
    for order in (cases, list(reversed(cases))):
        for t, name in order:
            q, k, v = inputs(t, 2)
            fn, rep = runner(ok[name], q, k, v)
            ms = time_ms(ok[name], fn, 20 if t <= 4096 else 8)
            key = (t, name)
            figures[key] = min(figures.get(key, (float("inf"), rep))[0], ms), rep
            del q, k, v, fn
            torch.cuda.empty_cache()
    rows = []
    for t, name in cases:
        ms, rep = figures[(t, name)]
        tflops = 4 * NQ * D * t * (t + 1) / 2 / (ms * 1e-3) / 1e12
        print(f"T={t:5d} {name:20s} {ms:8.3f} ms {tflops:7.1f} TFLOP/s{' (K/V repeated)' if rep else ''}")
        rows.append({"tokens": t, "backend": name, "ms": round(ms, 4), "tflops": round(tflops, 1),
                     "kv_repeated": rep, "causal": True, "heads": f"{NQ}/{NKV}", "head_dim": D})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": gpu, "torch": torch.__version__, "figures": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

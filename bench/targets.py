#!/usr/bin/env python3
"""The issues' targets (#9, #13, and #10's tensor-parallel ones) against what bench/targets.sh measured: one Markdown table, target by target.

    python3 bench/targets.py OUT          (OUT: bench/targets.sh's folder; also works on any folder of qwq bench JSON)

Reads every `qwq bench` JSON under OUT (the `figures` each carries its conditions: kind, batch, context or tokens,
weights, kv_cache, tensor_parallel), the rope-switch records, the attention micro-benchmark's text, torch's SDPA JSON
and the test steps' logs (the 131k tests, the tensor-parallel tests). A target with no measurement says so rather than passing. Where several runs measured one
figure the table gives their range and judges the median. The targets are the issues' (set on an H100 80GB); the
header names the GPU the figures came from, since an H200's memory is 1.4x faster and its figures are not the H100's.
"""
import glob
import json
import os
import re
import statistics
import sys

# (issue, what, figure conditions, at least). Conditions: kind, batch, context or tokens, weights, kv_cache, and
# tensor_parallel (1 where not named).
FIGURE_TARGETS = [
    ("#9", "FP8 decode, batch 1 at 1k", dict(kind="decode", batch=1, context=1024, weights="fp8", kv_cache="bf16"), 80),
    ("#9", "FP8 prefill 2k", dict(kind="prefill", tokens=2048, weights="fp8", kv_cache="bf16"), 13000),
    ("#9", "FP8 decode, batch 32 at 1k (aggregate)", dict(kind="decode", batch=32, context=1024, weights="fp8", kv_cache="bf16"), 1800),
    ("#9", "INT4-AWQ decode, batch 1 at 1k", dict(kind="decode", batch=1, context=1024, weights="int4-awq", kv_cache="bf16"), 140),
    ("#9", "INT4-AWQ prefill 2k", dict(kind="prefill", tokens=2048, weights="int4-awq", kv_cache="bf16"), 6000),
    ("#13", "decode at 32k, FP8 KV cache", dict(kind="decode", batch=1, context=32768, weights="bf16", kv_cache="fp8"), 41),
    ("#13", "prefill 16k", dict(kind="prefill", tokens=16384, weights="bf16", kv_cache="bf16"), 8500),
    ("#13", "prefill 2k", dict(kind="prefill", tokens=2048, weights="bf16", kv_cache="bf16"), 9500),
    ("#10", "TP2 bf16 decode, batch 1 at 1k", dict(kind="decode", batch=1, context=1024, weights="bf16", kv_cache="bf16", tensor_parallel=2), 80),
    ("#10", "TP4 bf16 decode, batch 1 at 1k", dict(kind="decode", batch=1, context=1024, weights="bf16", kv_cache="bf16", tensor_parallel=4), 140),
    ("#10", "TP2 FP8 decode, batch 1 at 1k", dict(kind="decode", batch=1, context=1024, weights="fp8", kv_cache="bf16", tensor_parallel=2), 140),
]
# Tests whose passing is a target: (issue, what, bench/targets.sh's folder for its log).
TEST_TARGETS = [
    ("#9", "full-width FP8 and AWQ checkpoints against transformers: logits ≤ 2e-2, greedy tokens (the test)", "goldens"),
    ("#13", "131,072 positions with FP8 weights and the FP8 KV cache on one GPU (the test)", "long"),
    ("#10", "131,072 positions in bf16 (YaRN preset) on two GPUs (the test)", "long-tp2"),
    ("#10", "the tensor-parallel GPU tests (TensorParallel, Nccl, Sharding, AllReduce)", "tp-tests"),
]
# Figures the issues name without a number of their own: shown for reference.
REFERENCE_FIGURES = [
    ("#9", "bf16 decode, batch 1 at 1k (\"stays where it is\": 44.6 on the H100)", dict(kind="decode", batch=1, context=1024, weights="bf16", kv_cache="bf16")),
    ("#8", "bf16 decode, batch 8 at 1k (aggregate)", dict(kind="decode", batch=8, context=1024, weights="bf16", kv_cache="bf16")),
]
ATTENTION_16K, ATTENTION_H100_TORCH_16K, ATTENTION_H100_TORCH_2K = 630.0, 627.0, 335.0
SWITCH_MS = 10.0


def reports(root):
    for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("report"), dict):
            yield path, data["report"]


def matches(fig, cond):
    if fig.get("tensor_parallel", 1) != cond.get("tensor_parallel", 1):
        return False
    return all(fig.get(key) == want for key, want in cond.items() if key != "tensor_parallel")


def judged(values, at_least=None, at_most=None):
    if not values:
        return "not measured", "–"
    lo, hi, med = min(values), max(values), statistics.median(values)
    shown = f"{med:,.1f}" if len(values) == 1 else f"{med:,.1f} ({lo:,.1f}–{hi:,.1f}, {len(values)} runs)"
    if at_least is not None:
        return shown, "yes" if med >= at_least else "no"
    return shown, "yes" if med <= at_most else "no"


def attention_micro(root):
    """The engine's ping-pong entry's TFLOP/s by (T, cached) from bench/micro/attention_prefill_sm90.cu's output."""
    found = {}
    for path in glob.glob(os.path.join(root, "**", "micro.txt"), recursive=True):
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"T=\s*(\d+)\+(\d+)\s+sm90a engine pp entry\s+[\d.]+ ms\s+([\d.]+) TFLOP/s", line)
                if m:
                    found.setdefault((int(m.group(1)), int(m.group(2))), []).append(float(m.group(3)))
    return found


def torch_sdpa(root):
    """torch's best backend's TFLOP/s by T, and its GPU, from bench/micro/torch_sdpa.py's JSON."""
    best, gpu = {}, None
    for path in glob.glob(os.path.join(root, "**", "torch-sdpa.json"), recursive=True):
        with open(path) as f:
            data = json.load(f)
        gpu = data.get("gpu", gpu)
        for fig in data.get("figures", []):
            best[fig["tokens"]] = max(best.get(fig["tokens"], 0.0), fig["tflops"])
    return best, gpu


def test_run(root, folder):
    """A test step's outcome from the runner's summary in OUT/FOLDER/test.log (bench/targets.sh writes it there)."""
    for path in glob.glob(os.path.join(root, "**", folder, "test.log"), recursive=True):
        with open(path, errors="replace") as f:
            text = f.read()
        if "total:" not in text:
            return "cut short (see its log)", "–"
        failed = re.search(r"failed:\s*(\d+)", text)
        ok = re.search(r"succeeded:\s*(\d+)", text)
        skipped = re.search(r"skipped:\s*(\d+)", text)
        if failed and ok and failed.group(1) == "0" and int(ok.group(1)) > 0:
            return f"passed ({ok.group(1)} passed, {skipped.group(1) if skipped else 0} skipped)", "yes"
        if failed and failed.group(1) != "0":
            return "failed (see its log)", "no"
        return "skipped or cut short (see its log)", "–"
    return "not run", "–"


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: python3 bench/targets.py OUT_DIR (bench/targets.sh's folder)", file=sys.stderr)
        return 2
    root = sys.argv[1]
    figures, switches, gpus, commits = [], [], set(), set()
    for _, rep in reports(root):
        gpus.add(rep.get("gpu", "?"))
        commits.add(str(rep.get("commit", "?"))[:12])
        figures.extend(rep.get("figures") or [])
        for sw in rep.get("rope_switch") or []:
            switches.append(sw)

    rows = []
    for issue, what, cond, at_least in FIGURE_TARGETS:
        shown, met = judged([f["tokens_per_second"] for f in figures if matches(f, cond)], at_least=at_least)
        rows.append((issue, what, f"≥ {at_least:,} tok/s", shown, met))

    micro = attention_micro(root)
    torch_best, torch_gpu = torch_sdpa(root)
    shown, met = judged(micro.get((16384, 0), []), at_least=ATTENTION_16K)
    rows.append(("#13", "prefill attention at 16k, causal, GQA 40/8, d 128 (TFLOP/s)", f"≥ {ATTENTION_16K:.0f}", shown, met))
    for t, h100 in ((16384, ATTENTION_H100_TORCH_16K), (2048, ATTENTION_H100_TORCH_2K)):
        ours = micro.get((t, 0), [])
        bar = torch_best.get(t)
        label = f"ahead of torch on this card ({bar:.1f})" if bar else f"ahead of torch (H100: {h100:.0f}; torch not measured here)"
        shown, met = judged(ours, at_least=bar if bar else h100)
        if met == "yes" and bar is None:
            met = "yes (against the H100's torch)"
        rows.append(("#13", f"prefill attention at {t // 1024}k against torch's SDPA (TFLOP/s)", label, shown, met))

    deltas = [sw["alone_switch_step_ms"] - sw["alone_step_ms"] for sw in switches
              if sw.get("context") == 32768 and sw.get("method") == "rerotate"
              and "alone_switch_step_ms" in sw and "alone_step_ms" in sw]
    shown, met = judged(deltas, at_most=SWITCH_MS)
    rows.append(("#13", "the adaptive-YaRN switch at 32k (the switch step minus a step, re-rotation; ms)", f"< {SWITCH_MS:.0f} ms", shown, met))

    for issue, what, folder in TEST_TARGETS:
        shown, met = test_run(root, folder)
        rows.append((issue, what, "passes", shown, met))

    for issue, what, cond in REFERENCE_FIGURES:
        shown, _ = judged([f["tokens_per_second"] for f in figures if matches(f, cond)], at_least=0)
        rows.append((issue, what, "for reference", shown, "–"))

    print(f"# Issue targets on {', '.join(sorted(gpus)) or 'no GPU results'}" + (f" (torch on {torch_gpu})" if torch_gpu else ""))
    print()
    print(f"From `{root}` (commits: {', '.join(sorted(commits)) or '–'}). The targets are set on an H100 80GB; figures from "
          "another card are that card's. Synthetic QwQ-32B, one GPU unless a row names TP2 or TP4; \"median\" judges "
          "several runs.")
    print()
    print("| issue | target | bar | measured | met |")
    print("|---|---|---|---:|---|")
    for issue, what, bar, shown, met in rows:
        print(f"| {issue} | {what} | {bar} | {shown} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

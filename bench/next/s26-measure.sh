#!/usr/bin/env bash
# Session 26's plan for the next session's device time (bench/NOTES.md, session 26): one device call (~7 min), on an
# H200 or an H100 (on an x2/x4, run bench/targets.sh's TP steps first: they need that kind, this does not).
# Here first, on a branch from main:
#   git am bench/next/s26-decode-l2-prefetch.patch
#   tests/stage-device.sh; tests/device-aside.sh out (carry limit 64 MiB; "back" after the call); carry [".device"]
# Device: bench/next/s26-measure.sh
#   PTX rebuilt with the patch ($OUT/ptx.tgz: only attention_decode's modules change), the kernel tests it names (a
#   narrow filter: session 26's wider one ran into the full-size engine tests and spent its 240 s there), then A/Bs on
#   this one build, the prefetch on ("after") against --no-decode-prefetch ("before"), both arms on the PTX built here
#   (QWQ_AB_BEFORE_PTX_DIR: the embedded PTX no longer fits the changed launch): fp8 and int4 two rounds, bf16 one;
#   then one fp8 decode step under --profile-step, where o_proj's GEMV (gemv_fp8_tile_m1 (320,1,1)) took 13.4 µs a
#   layer serialised in session 25.
#   Predicted: fp8 batch 1 at 64 and 1k +2-4%, int4 +1-2%, bf16 ~+1%; fp8 at 16k and batch 8 unchanged (the gate turns
#   the prefetch off there: 3,200 positions at batch 1, 400 at batch 8); o_proj 13.4 → ~7-9 µs in the profile.
#   Land it if the tests pass and batch 1 gains with nothing losing; bench/NOTES.md either way.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s26-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
grep -q "pf_max_ctx" kernels/attention_decode.cu || { echo "s26-measure: git am bench/next/s26-decode-l2-prefetch.patch first (header)" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -E "error" "$out/build.log" | head
(cd kernels && tar czf "$out/ptx.tgz" ptx)
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 150 dotnet QwQ.Cuda.Tests.dll --filter \
  "FullyQualifiedName~AttentionKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~DecodeL2Prefetch|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
export QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_BEFORE_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=90 QWQ_AB_BEFORE_EXTRA=--no-decode-prefetch
bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-fp8" -- --synthetic qwq-32b --quantize fp8 --prefill 64 --decode 64,1024,16384 --batch 8 2>&1 | grep -E "exit"
bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-int4" -- --synthetic qwq-32b --quantize int4 --prefill 64 --decode 1024 --batch 8 2>&1 | grep -E "exit"
bench/device-ab.sh "$QWQ_TESTS" 1 "$out/ab-bf16" -- --synthetic qwq-32b --prefill 64 --decode 1024 2>&1 | grep -E "exit"
for ab in ab-fp8 ab-int4 ab-bf16; do sed -n '/| figure/,$p' "$out/$ab/ab.md" 2>/dev/null; done
mkdir -p "$out/profile"
(cd "$QWQ_TESTS" && timeout 90 dotnet qwq.dll bench --synthetic qwq-32b --quantize fp8 --prefill 64 --decode 64 --profile-step \
  --commit "$(cat "$root/.device/COMMIT")-s26-prefetch" --out "$out/profile") > "$out/profile/bench.log" 2>&1; echo "profile rc=$?"
grep -E "gemv_fp8_tile_m1 \((320|448)|Graph replay" "$out/profile"/*.md | head
tar czf "$out/logs.tgz" -C "$out" build.log tests.log profile && rm -rf "$out/build.log" "$out/tests.log" "$out/profile"

#!/usr/bin/env bash
# Session 26's plan for the next session's device time (bench/NOTES.md, session 26): one device call (~7.5 min), on an
# H200 or an H100 (on an x2/x4, run bench/targets.sh's TP steps first: they need that kind, this does not).
# Here first, on a branch from main:
#   git am bench/next/s26-tile-prefetch.patch bench/next/s26-decode-l2-prefetch.patch   (in that order)
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm of the first A/B: main's C# and PTX)
#   tests/stage-device.sh; tests/device-aside.sh out (carry limit 64 MiB; "back" after the call); carry [".device"]
# Device: bench/next/s26-measure.sh
#   PTX rebuilt with both patches ($OUT/ptx.tgz: gemv_fp8's and attention_decode's modules change), the kernel tests they
#   name (a narrow filter: session 26's wider one ran into the full-size engine tests and spent its 240 s there), then:
#   ab-tile: the fp8 tile GEMV's deeper prefetch alone: this build with --no-decode-prefetch against main's CLI, two
#     alternating rounds. Predicted fp8 batch 1 +1.5-3%, batch 8 ~0.
#   ab-fp8, ab-int4: the decode attention's prefetch of o_proj on ("after") against --no-decode-prefetch ("before"),
#     both arms this build on the PTX built here (QWQ_AB_BEFORE_PTX_DIR: the embedded PTX no longer fits the changed
#     launch), two rounds. Predicted fp8 batch 1 at 64 and 1k +1-3% on top of the tile prefetch (less than alone: the
#     o GEMV's blocks now prefetch their whole share themselves, during the combine), int4 +1-2%; fp8 16k and batch 8
#     unchanged (gated off: 3,200 positions at batch 1, 400 at batch 8).
#   profile: one fp8 decode step under --profile-step with both: o_proj's GEMV (gemv_fp8_tile_m1 (320,1,1)) took
#     13.4 µs a layer serialised in session 25, qkv's (448,1,1) 15.6.
#   Land each that gains at batch 1 with nothing losing and its tests passing; bench/NOTES.md either way.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s26-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
grep -q "pf_max_ctx" kernels/attention_decode.cu && grep -q "kTilePrefetchChunks" kernels/gemv_fp8.cu \
  || { echo "s26-measure: git am both bench/next/s26-*.patch first (header)" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -E "error" "$out/build.log" | head
(cd kernels && tar czf "$out/ptx.tgz" ptx)
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 120 dotnet QwQ.Cuda.Tests.dll --filter \
  "FullyQualifiedName~AttentionKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~DecodeL2Prefetch|FullyQualifiedName~Fp8KernelTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
export QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=90
# the device tool returns at most 8 files, and a call cut by its limit returns what is there: one tarball an A/B
pack() { sed -n '/| figure/,$p' "$out/$1/ab.md" 2>/dev/null; tar czf "$out/$1.tgz" -C "$out" "$1" && rm -rf "${out:?}/$1"; }
if [ -s .device/base-cli.tar.xz ]; then
  mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
  QWQ_AB_AFTER_EXTRA=--no-decode-prefetch bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-tile" -- --synthetic qwq-32b \
    --quantize fp8 --prefill 64 --decode 64,1024 --batch 8 2>&1 | grep -E "exit"
  pack ab-tile
fi
export QWQ_AB_BEFORE_PTX_DIR=$QWQ_PTX_DIR QWQ_AB_BEFORE_EXTRA=--no-decode-prefetch
bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-fp8" -- --synthetic qwq-32b --quantize fp8 --prefill 64 --decode 64,1024,16384 --batch 8 2>&1 | grep -E "exit"
pack ab-fp8
bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-int4" -- --synthetic qwq-32b --quantize int4 --prefill 64 --decode 1024 --batch 8 2>&1 | grep -E "exit"
pack ab-int4
mkdir -p "$out/profile"
(cd "$QWQ_TESTS" && timeout 90 dotnet qwq.dll bench --synthetic qwq-32b --quantize fp8 --prefill 64 --decode 64 --profile-step \
  --commit "$(cat "$root/.device/COMMIT")-s26-prefetch" --out "$out/profile") > "$out/profile/bench.log" 2>&1; echo "profile rc=$?"
grep -E "gemv_fp8_tile_m1 \((320|448)|Graph replay" "$out/profile"/*.md | head
tar czf "$out/logs.tgz" -C "$out" build.log tests.log profile && rm -rf "$out/build.log" "$out/tests.log" "$out/profile"

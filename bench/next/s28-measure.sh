#!/usr/bin/env bash
# Session 28, second call: the even-runs build offered up to 4 rows only (call 1: the tuner took it at 8 rows too, -2.0% there), rope.cu as on main.
# beside the batches-in-turn one, the decode tuner choosing per product and row count; and rope.cu's bias_rope_pair
# folded into the flag form of rope_rotate (PTX expected identical or a reorder).
#   Here: bench/build-base-cli.sh main .device/base-cli.tar.xz; mkdir -p .device/old-ptx and copy main's
#   kernels/ptx/{rope,gemv_int4}.ptx there; tests/stage-device.sh; tests/device-aside.sh out; carry [".device"].
# Predicted: int4 batch 1 at 1k +2.5-3.5% (session 21 measured even runs for every row count: +3.3% at 1, -2.1% at 8),
# batch 8 unchanged (the tuner keeps the batches in turn there); the tuner's picks are in each run's bench.log.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s28-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -E "error" "$out/build.log" | head
tar czf "$out/ptx.tgz" kernels/ptx/gemv_int4.ptx kernels/ptx/rope.ptx kernels/ptx/sm90/gemv_int4.ptx kernels/ptx/sm90/rope.ptx
for m in rope gemv_int4; do
  # the body without the stamp line: what changed besides the source hash
  diff <(grep -v "^// source" .device/old-ptx/$m.ptx) <(grep -v "^// source" kernels/ptx/$m.ptx) > "$out/$m.ptx.diff"
  echo "$m.ptx: $(grep -c '^[<>]' "$out/$m.ptx.diff") lines differ"
done
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 200 dotnet QwQ.Cuda.Tests.dll --filter \
  "FullyQualifiedName~Int4KernelTests|FullyQualifiedName~TensorCoreVariant|FullyQualifiedName~Rope|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~Int4Engine|FullyQualifiedName~AwqEngine") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
export QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=120
pack() { sed -n '/| figure/,$p' "$out/$1/ab.md" 2>/dev/null; tar czf "$out/$1.tgz" -C "$out" "$1" && rm -rf "${out:?}/$1"; }
mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-int4" -- --synthetic qwq-32b --quantize int4 --prefill 64 \
  --decode 1024 --batch 1,4,8 2>&1 | grep -E "exit"
grep -h "tuned\|EvenRuns\|evenruns" "$out"/ab-int4/after-r1/bench.log | head -40
pack ab-int4
tar czf "$out/logs.tgz" -C "$out" build.log tests.log && rm -f "$out/build.log" "$out/tests.log"

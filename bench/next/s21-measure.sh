#!/usr/bin/env bash
# Session 21's plan for the next session's device time (bench/NOTES.md, session 21), one device call (~3 min).
# Here first: git am bench/next/s21-int4-tile-deal.patch (on a branch), then tests/stage-device.sh (the staged build
# embeds the tree's kernels/ptx, still main's: the A/B's base arm), then carry [".device"] with kernels/ptx moved out
# (the carry is over 64 MiB with it; this script rebuilds it on the device for the other arm).
#   device: bench/next/s21-measure.sh   PTX rebuilt with the patch ($OUT/ptx.tgz: land gemv_int4.ptx and
#                                        sm90/gemv_int4.ptx from it, the only files that change); the int4 kernel tests
#                                        and the PTX checks; int4 batch 1 and 8 at 1k against main, two alternating
#                                        rounds. Predicted: batch 1 +3% (session 21's contiguous runs: 126.4 -> 130.5),
#                                        batch 8 unchanged (the contiguous runs: -2.1%). Land it, or record why not.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s21-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
grep -q "constexpr int GPB" kernels/gemv_int4.cu || { echo "s21-measure: git am bench/next/s21-int4-tile-deal.patch first" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -q "FAILED" "$out/build.log" && { grep -E "error|FAILED" "$out/build.log" | head; exit 1; }
(cd kernels && tar czf "$out/ptx.tgz" ptx)
source tests/device-env.sh
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 200 dotnet QwQ.Cuda.Tests.dll \
  --filter "FullyQualifiedName~Int4KernelTests|FullyQualifiedName~Int4EngineTests|FullyQualifiedName~PtxFreshness|FullyQualifiedName~KernelEntry") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=80 bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab" -- --synthetic qwq-32b \
  --quantize int4 --prefill 512 --decode 1024 --batch 8 2>&1 | grep -E "exit|decode at|decode batch"
sed -n '/| figure/,$p' "$out/ab/ab.md" 2>/dev/null

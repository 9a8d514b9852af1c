#!/usr/bin/env bash
# Session 16's plan for the next session's device time (bench/NOTES.md, session 16), one subcommand a device call.
#   here:   bench/next/s16-measure.sh prepare     (then tests/stage-device.sh; move kernels/ptx out of the tree for
#                                                 the call if the carry is over 64 MiB; carry [".device", "tmp-device"])
#   device: bench/next/s16-measure.sh micro       (~2 min: the decoupled patch's micro-benchmark, its ptxas report)
#   device: bench/next/s16-measure.sh decode-micro (~3 min: bench/micro/attention_decode.cu, first run: the fp8-KV
#                                                 split kernel's baseline at 1-4 blocks an SM, every batch and context)
#   device: bench/next/s16-measure.sh suite N     (~5-9 min each: the GPU suite's third N with the TMA prefill, never
#                                                 run whole on a GPU; part 1 exercises it across the engine)
#   device: bench/next/s16-measure.sh ncu-decode  (~2 min: ncu stall reasons of the fp8-KV decode split kernel at QwQ's
#                                                 shape, from a kernel test rather than the bench process, where ncu
#                                                 failed in session 15; the test's contexts reach 3,001 keys, so
#                                                 it shows a tile's chain, not the 32k grid's occupancy)
# prepare writes tmp-device/s16/dec/ (kernels/, bench/micro/ of main + s16-sm90a-decoupled.patch); tmp-device/ must be
# in .git/info/exclude. Logs land in $OUT.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
dest=tmp-device/s16
out=${OUT:-/tmp/s16-out}
case "${1:-}" in
prepare)
  set -e
  grep -qx "tmp-device/" .git/info/exclude || echo "tmp-device/" >> .git/info/exclude
  rm -rf "$dest" && mkdir -p "$dest/dec"
  wt=$(mktemp -d)
  git worktree add -q --detach "$wt" HEAD
  (cd "$wt" && git am -q "$root/bench/next/s16-sm90a-decoupled.patch")
  git -C "$wt" archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/dec"
  git worktree remove --force "$wt"
  du -sh "$dest"
  ;;
decode-micro)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  timeout 200 nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/attndec bench/micro/attention_decode.cu > "$out/nvcc-decode.log" 2>&1
  echo "nvcc: rc=$?"; grep -E "error|spill" "$out/nvcc-decode.log" | head
  timeout 300 /tmp/attndec > "$out/micro-decode.log" 2>&1
  echo "micro: rc=$?"; cat "$out/micro-decode.log"
  ;;
micro)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  (cd "$dest/dec" && timeout 150 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
    -o /tmp/attn90-dec bench/micro/attention_prefill_sm90.cu -lcuda) > "$out/nvcc-dec.log" 2>&1
  echo "nvcc: rc=$? $(grep -c C75 "$out/nvcc-dec.log") C75xx lines"
  grep -B1 -A2 "_tmaILi2E" "$out/nvcc-dec.log" | grep -E "registers|spill" | sort | uniq -c
  # a protocol bug shows as a hang: the timeout bounds it
  timeout 120 /tmp/attn90-dec tma > "$out/micro-dec.log" 2>&1
  echo "micro: rc=$?"
  grep -E "FAIL|TFLOP|ALL PASS|SOME" "$out/micro-dec.log"
  ;;
suite)
  mkdir -p "$out"
  part=${2:?"suite takes the part: 1, 2 or 3"}
  timeout 560 tests/run-on-device.sh --part "$part" > "$out/suite-$part.log" 2>&1
  echo "suite part $part: rc=$?"
  grep -E "total:|failed:|succeeded:|skipped:" "$out/suite-$part.log"
  grep -E "^failed" -A8 "$out/suite-$part.log" | head -60
  ;;
ncu-decode)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  source tests/device-env.sh
  (cd "$QWQ_TESTS" && timeout 200 ncu --kernel-name regex:attention_decode_paged_fp8_d128 --launch-count 3 \
    --section WarpStateStats --section SchedulerStats --section SpeedOfLight --section Occupancy \
    dotnet QwQ.Cuda.Tests.dll --filter "Name~Fp8Decode_QwqShape") > "$out/ncu-decode.log" 2>&1
  echo "ncu: rc=$?"
  grep -E "Stall|Issue Slots|Eligible|Active Warps|Duration|Memory Throughput|No Eligible" "$out/ncu-decode.log" | head -40
  ;;
*)
  echo "usage: bench/next/s16-measure.sh prepare | micro | decode-micro | suite 1|2|3 | ncu-decode" >&2
  exit 2
  ;;
esac

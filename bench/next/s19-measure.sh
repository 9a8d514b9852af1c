#!/usr/bin/env bash
# Session 19's plan for the next session's device time (bench/NOTES.md, session 19), one subcommand a device call.
# Here first: tests/stage-device.sh; carry [".device"] (kernels/ptx moved out if the carry is over 64 MiB: the steps
# that need kernels build them on the device).
#   device: bench/next/s19-measure.sh sanitizer   (~3 min: compute-sanitizer memcheck, racecheck and synccheck over the
#                                                  ping-pong prefill entry's small equality cases, embedded PTX;
#                                                  issue #13 asks the Hopper attention to be sanitizer-clean. Expect
#                                                  racecheck to be silent on the last tile's V zeroing, which both
#                                                  warpgroups write with the same zeros (wgmma reads go through the
#                                                  async proxy); if it reports a hazard there, make one warpgroup zero
#                                                  and the other wait on a 256-thread named barrier)
#   device: bench/next/s19-measure.sh micro       (~1.5 min: the attention micro-benchmark's "k128 wsr" variants, with the
#                                                  new "s3 qreg pp k128 wsr": predicted +1-3% over "s3 pp k128 wsr"
#                                                  if ptxas fits it in 240 registers without C75xx; then the header
#                                                  patch applied and the PTX rebuilt, $OUT/ptx.tgz: compare it
#                                                  with the committed one without its first line)
#   device: bench/next/s19-measure.sh suite2      (~3 min: GPU suite part 2 on the staged build, not run on aad373b)
#   device: bench/next/s19-measure.sh profile     (~1.5 min: the 16k prefill kernel by kernel, --profile-step: where the
#                                                  ~470 ms over the GEMM floor go now that attention is ~15% of it)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s19-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
case "${1:-}" in
sanitizer)
  source tests/device-env.sh
  cases="Name~HopperPingPongPrefillEqualsPortable_T256s0|Name~HopperPingPongPrefillEqualsPortable_T200s37|Name~HopperPingPongPrefillEqualsPortable_T1s2000|Name~HopperPingPongPrefillEqualsPortable_T130s37"
  for tool in memcheck racecheck synccheck; do
    (cd "$QWQ_TESTS" && timeout 200 compute-sanitizer --tool "$tool" --target-processes all \
      dotnet QwQ.Cuda.Tests.dll --filter "$cases") > "$out/$tool.log" 2>&1
    echo "$tool: rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|succeeded:|total:" "$out/$tool.log" | head -4
  done
  ;;
micro)
  timeout 300 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/attn90 \
    bench/micro/attention_prefill_sm90.cu -lcuda > "$out/micro-nvcc.log" 2>&1
  echo "nvcc rc=$?"; grep -E "error|C75" "$out/micro-nvcc.log" | head -6
  timeout 150 /tmp/attn90 "k128 wsr" > "$out/micro-k128-wsr.log" 2>&1; echo "micro rc=$?"
  grep -E "FAIL|TFLOP|ALL" "$out/micro-k128-wsr.log" | grep -v mma.sync
  git apply bench/next/s19-attention-header.patch && ./build.sh --kernels-only > "$out/build.log" 2>&1
  echo "header patch + build rc=$?"; tar czf "$out/ptx.tgz" kernels/ptx
  ;;
suite2)
  timeout 330 tests/run-on-device.sh --part 2 > "$out/part2.log" 2>&1; echo "part2 rc=$?"
  grep -E "^\s+failed |total:|failed:|succeeded:|skipped:" "$out/part2.log" | head -20
  ;;
profile)
  source tests/device-env.sh
  commit=$(cat .device/COMMIT 2>/dev/null || echo unknown)
  timeout 300 dotnet "$QWQ_TESTS/qwq.dll" bench --synthetic qwq-32b --prefill 16384 --decode 1024 --profile-step \
    --commit "$commit-prefill-profile" --out "$out" > "$out/profile.log" 2>&1; echo "profile rc=$?"
  grep -E "^prefill|kernel|%" "$out/profile.log" | head -40
  ;;
*)
  echo "usage: bench/next/s19-measure.sh sanitizer | micro | suite2 | profile" >&2
  exit 2
  ;;
esac

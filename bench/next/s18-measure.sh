#!/usr/bin/env bash
# Session 18's plan for the next session's device time (bench/NOTES.md, session 18), one subcommand a device call.
#   here:   bench/next/s18-measure.sh prepare   (writes tmp-device/s18/new: kernels/ and bench/micro/ of main +
#                                                s18-wg-weight-ring.patch; tmp-device/ must be in .git/info/exclude;
#                                                then tests/stage-device.sh and carry [".device", "tmp-device"], with
#                                                kernels/ptx moved out if the carry is over 64 MiB)
#   device: bench/next/s18-measure.sh micro     (~2 min: bench/micro/tc_gemv.cu -DQWQ_WGMMA built from that tree, two
#                                                rounds: the landed warpgroup plans (wg-*) and the weight-ring ones (wgr-*)
#                                                in the same binary, every plan must PASS; ptxas lines for spills and
#                                                C75xx (a serialised wgmma))
# If a wgr plan beats the landed one on a product (best split each, both rounds), give it an entry in
# kernels/sm90a/gemv_tc_sm90a.cu (QWQ_GEMV_TC_WG with WRING), a TensorCoreVariant the tuner times, its kernel and
# engine tests (as Warpgroup's), rebuild the PTX there, and A/B fp8 batch 16/32 as session 18 did (bench/NOTES.md).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
dest=tmp-device/s18
out=${OUT:-/tmp/s18-out}
case "${1:-}" in
prepare)
  set -e
  grep -qx "tmp-device/" .git/info/exclude || echo "tmp-device/" >> .git/info/exclude
  rm -rf "$dest/new" && mkdir -p "$dest/new"
  git archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/new"
  (cd "$dest/new" && patch -p1 --quiet < "$root/bench/next/s18-wg-weight-ring.patch")
  du -sh "$dest"
  ;;
micro)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  (cd "$dest/new" && timeout 300 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -DQWQ_WGMMA -Xptxas -v \
    -o /tmp/tc-wr bench/micro/tc_gemv.cu > "$out/nvcc-tc-wr.log" 2>&1)
  echo "nvcc rc=$? $(ls /tmp/tc-wr 2>&1)"; grep -E "error|C75" "$out/nvcc-tc-wr.log" | head -5
  grep -A2 "wg_plan" "$out/nvcc-tc-wr.log" | grep -E "registers|spill" | sort | uniq -c | head -12
  for r in 1 2; do timeout 200 /tmp/tc-wr > "$out/micro-tc-wr-$r.log" 2>&1; echo "round $r: rc=$?"; done
  grep -hE "FAIL" "$out"/micro-tc-wr-*.log | head
  for r in 1 2; do echo "== round $r"; grep -E "^==|  wg" "$out/micro-tc-wr-$r.log" | cut -c1-60; done
  ;;
*)
  echo "usage: bench/next/s18-measure.sh prepare | micro" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Session 17's plan for the next session's device time (bench/NOTES.md, session 17), one subcommand a device call.
#   here:   bench/next/s17-measure.sh prepare   (writes tmp-device/s17/{base,new}: kernels/ and bench/micro/ of main,
#                                                and of main + s17-gemv-tc-f16-pow2.patch; tmp-device/ must be in
#                                                .git/info/exclude; then tests/stage-device.sh and carry
#                                                [".device", "tmp-device"], kernels/ptx moved out if over 64 MiB)
#   device: bench/next/s17-measure.sh micro     (~2 min: bench/micro/tc_gemv.cu built from both trees, two rounds each;
#                                                every candidate must PASS against the current kernel; compare "current"
#                                                between the trees, shape by shape)
#   device: bench/next/s17-measure.sh ptx       (~1 min: the patched tree's PTX into $OUT/ptx.tgz, and the tensor-core
#                                                GEMV and fp8 kernel tests on it)
#   device: bench/next/s17-measure.sh ab        (~6 min: fp8 weights at batch 16 and 32, main's embedded PTX against
#                                                the patch's, two alternating rounds; needs the ptx step's
#                                                kernels/ptx in the same call, so run "ptx" first in that call)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
dest=tmp-device/s17
out=${OUT:-/tmp/s17-out}
case "${1:-}" in
prepare)
  set -e
  grep -qx "tmp-device/" .git/info/exclude || echo "tmp-device/" >> .git/info/exclude
  rm -rf "$dest/base" "$dest/new" && mkdir -p "$dest/base" "$dest/new"
  git archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/base"
  wt=$(mktemp -d)
  git worktree add -q --detach "$wt" HEAD
  (cd "$wt" && git am -q "$root/bench/next/s17-gemv-tc-f16-pow2.patch")
  git -C "$wt" archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/new"
  git worktree remove --force "$wt"
  du -sh "$dest"
  ;;
micro)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  for t in base new; do
    (cd "$dest/$t" && timeout 200 nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/tc-$t bench/micro/tc_gemv.cu > "$out/nvcc-tc-$t.log" 2>&1) &
  done
  wait
  for t in base new; do echo "nvcc $t: $(ls /tmp/tc-$t 2>&1)"; grep -B1 -A2 "fp8h_n32" "$out/nvcc-tc-$t.log" | grep -E "registers|spill" | sort | uniq -c; done
  for r in 1 2; do
    for t in base new; do timeout 150 /tmp/tc-$t > "$out/micro-tc-$t-$r.log" 2>&1; echo "micro $t round $r: rc=$?"; done
  done
  grep -E "FAIL" "$out"/micro-tc-new-*.log | head
  for t in base new; do echo "== $t"; grep -E "^==|current|f16-" "$out/micro-tc-$t-1.log" | cut -c1-60; done
  ;;
ptx)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  cp -r "$dest/new/kernels/." kernels/  # the patched sources over the tree's (the tree is main)
  ./build.sh --kernels-only > "$out/build.log" 2>&1; tail -1 "$out/build.log"
  tar czf "$out/ptx.tgz" kernels/ptx
  source tests/device-env.sh >/dev/null 2>&1
  (QWQ_PTX_DIR=$PWD/kernels/ptx timeout 200 tests/run-on-device.sh --filter "FullyQualifiedName~TensorCoreGemv|FullyQualifiedName~Fp8Kernel|FullyQualifiedName~Fp8Gemm" > "$out/tests.log" 2>&1)
  echo "tests: rc=$?"; grep -E "total:|failed:|succeeded:" "$out/tests.log"; grep -E "^failed" -A8 "$out/tests.log" | head -30
  ;;
ab)
  mkdir -p "$out"
  source tests/device-env.sh >/dev/null 2>&1
  QWQ_PTX_DIR=$PWD/kernels/ptx QWQ_AB_AFTER=$(cat .device/COMMIT)-f16pow2 QWQ_AB_BEFORE=$(cat .device/COMMIT) QWQ_AB_TIMEOUT=150 \
    bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab" -- --synthetic qwq-32b --quantize fp8 --prefill 512 --decode 1024 --batch 16,32 2>&1 | tail -16
  (cd "$out" && tar czf ab.tgz ab && rm -rf ab)
  ;;
*)
  echo "usage: bench/next/s17-measure.sh prepare | micro | ptx | ab" >&2
  exit 2
  ;;
esac

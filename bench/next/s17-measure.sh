#!/usr/bin/env bash
# Session 17's plan for the next session's device time (bench/NOTES.md, session 17), one subcommand a device call.
#   here:   bench/next/s17-measure.sh prepare   (writes tmp-device/s17/{base,new,pre,both}: kernels/ and bench/micro/ of
#                                                main, of main + s17-gemv-tc-f16-pow2.patch, of main +
#                                                s17-prefill-lazy-rescale.patch, and of main + both; tmp-device/ must
#                                                be in .git/info/exclude; then tests/stage-device.sh and carry
#                                                [".device", "tmp-device"], kernels/ptx moved out if over 64 MiB)
#   device: bench/next/s17-measure.sh micro     (~2 min: bench/micro/tc_gemv.cu built from both trees, two rounds each;
#                                                every candidate must PASS against the current kernel; compare "current"
#                                                between the trees, shape by shape)
#   device: bench/next/s17-measure.sh micro-prefill (~2 min: bench/micro/attention_prefill_sm90.cu tma from main and
#                                                from the prefill patch; compare "mma.sync (current)" and the engine's
#                                                "sm90 wg2 s3 ovl tma" between the trees)
#   device: bench/next/s17-measure.sh ptx       (~2 min: both patches' PTX into $OUT/ptx.tgz, and the tensor-core GEMV,
#                                                fp8 and attention kernel tests on it)
#   device: bench/next/s17-measure.sh ab        (~6 min: fp8 weights at batch 16 and 32, main's embedded PTX against
#                                                both patches', two alternating rounds; needs the ptx step's
#                                                kernels/ptx in the same call, so run "ptx" first in that call)
#   device: bench/next/s17-measure.sh ab-prefill (~5 min: bf16 prefill 2k and 16k the same way, after "ptx")
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
dest=tmp-device/s17
out=${OUT:-/tmp/s17-out}
case "${1:-}" in
prepare)
  set -e
  grep -qx "tmp-device/" .git/info/exclude || echo "tmp-device/" >> .git/info/exclude
  rm -rf "$dest/base" "$dest/new" "$dest/pre" "$dest/both" && mkdir -p "$dest/base"
  git archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/base"
  tree_with() {  # folder, patches...
    local into=$1 wt
    shift
    wt=$(mktemp -d)
    git worktree add -q --detach "$wt" HEAD
    for p in "$@"; do (cd "$wt" && git am -q "$root/bench/next/$p"); done
    mkdir -p "$dest/$into"
    git -C "$wt" archive HEAD kernels bench/micro ":(exclude)kernels/ptx" | tar -x -C "$dest/$into"
    git worktree remove --force "$wt"
  }
  tree_with new s17-gemv-tc-f16-pow2.patch
  tree_with pre s17-prefill-lazy-rescale.patch
  tree_with both s17-gemv-tc-f16-pow2.patch s17-prefill-lazy-rescale.patch
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
micro-prefill)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  for t in base pre; do
    (cd "$dest/$t" && timeout 200 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
      -o /tmp/attn90-$t bench/micro/attention_prefill_sm90.cu -lcuda > "$out/nvcc-attn90-$t.log" 2>&1) &
  done
  wait
  for t in base pre; do echo "nvcc $t: $(ls /tmp/attn90-$t 2>&1), $(grep -c C75 "$out/nvcc-attn90-$t.log") C75xx lines"; done
  for r in 1 2; do
    for t in base pre; do timeout 120 /tmp/attn90-$t tma > "$out/micro-attn90-$t-$r.log" 2>&1; echo "micro $t round $r: rc=$?"; done
  done
  grep -hE "FAIL|ALL PASS|SOME" "$out"/micro-attn90-pre-*.log | sort | uniq -c
  for t in base pre; do echo "== $t"; grep -E "^T=.*(current|wg2 s3 ovl tma )" "$out/micro-attn90-$t-1.log" "$out/micro-attn90-$t-2.log"; done
  ;;
ptx)
  export PATH=/usr/local/cuda/bin:$PATH
  mkdir -p "$out"
  cp -r "$dest/both/kernels/." kernels/  # both patches' sources over the tree's (the tree is main)
  ./build.sh --kernels-only > "$out/build.log" 2>&1; tail -1 "$out/build.log"
  tar czf "$out/ptx.tgz" kernels/ptx
  source tests/device-env.sh >/dev/null 2>&1
  (QWQ_PTX_DIR=$PWD/kernels/ptx timeout 300 tests/run-on-device.sh --filter "FullyQualifiedName~TensorCoreGemv|FullyQualifiedName~Fp8Kernel|FullyQualifiedName~Fp8Gemm|FullyQualifiedName~Attention|FullyQualifiedName~Fp8Kv|FullyQualifiedName~HopperPrefillPath" > "$out/tests.log" 2>&1)
  echo "tests: rc=$?"; grep -E "total:|failed:|succeeded:" "$out/tests.log"; grep -E "^failed" -A8 "$out/tests.log" | head -30
  ;;
ab)
  mkdir -p "$out"
  source tests/device-env.sh >/dev/null 2>&1
  QWQ_PTX_DIR=$PWD/kernels/ptx QWQ_AB_AFTER=$(cat .device/COMMIT)-f16pow2 QWQ_AB_BEFORE=$(cat .device/COMMIT) QWQ_AB_TIMEOUT=150 \
    bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab" -- --synthetic qwq-32b --quantize fp8 --prefill 512 --decode 1024 --batch 16,32 2>&1 | tail -16
  (cd "$out" && tar czf ab.tgz ab && rm -rf ab)
  ;;
ab-prefill)
  mkdir -p "$out"
  source tests/device-env.sh >/dev/null 2>&1
  QWQ_PTX_DIR=$PWD/kernels/ptx QWQ_AB_AFTER=$(cat .device/COMMIT)-lazyrescale QWQ_AB_BEFORE=$(cat .device/COMMIT) QWQ_AB_TIMEOUT=150 \
    bench/device-ab.sh "$QWQ_TESTS" 2 "$out/abp" -- --synthetic qwq-32b --prefill 2048,16384 --decode 1024 2>&1 | tail -12
  (cd "$out" && tar czf abp.tgz abp && rm -rf abp)
  ;;
*)
  echo "usage: bench/next/s17-measure.sh prepare | micro | micro-prefill | ptx | ab | ab-prefill" >&2
  exit 2
  ;;
esac

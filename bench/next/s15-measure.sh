#!/usr/bin/env bash
# Measures session 15's two bench/next patches against main in two device calls (README in this folder).
#   here:   bench/next/s15-measure.sh prepare     (then tests/stage-device.sh; carry [".device", "tmp-device"])
#   device: bench/next/s15-measure.sh micro       (~4 min: three micro-benchmark builds, their SASS counts, their runs)
#   device: bench/next/s15-measure.sh engine      (~8 min: the softmax patch's PTX, kernel tests, A/B against main)
#   device: bench/next/s15-measure.sh splits      (~7 min: main's decode at batches 1 and 8, 1k and 32k, with
#           --decode-blocks-per-sm 1 and 2 for the bf16 cache and 1, 2 and 4 for fp8; no kernel rebuilt)
# prepare writes tmp-device/s15/{main,softmax,tma}/ (kernels/, bench/micro/, build.sh as each tree has them: main,
# main + s15-softmax-ex2-ftz, main + both patches); tmp-device/ must be in .git/info/exclude.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
dest=tmp-device/s15
case "${1:-}" in
prepare)
  set -e
  grep -qx "tmp-device/" .git/info/exclude || echo "tmp-device/" >> .git/info/exclude
  rm -rf "$dest" && mkdir -p "$dest"
  base=$(git rev-parse HEAD)
  export_tree() { mkdir -p "$dest/$1" && git archive "$2" kernels bench/micro build.sh ":(exclude)kernels/ptx" | tar -x -C "$dest/$1"; }
  export_tree main "$base"
  wt=$(mktemp -d)
  git worktree add -q --detach "$wt" "$base"
  (cd "$wt" && git am -q "$root/bench/next/s15-softmax-ex2-ftz.patch")
  export_tree softmax "$(git -C "$wt" rev-parse HEAD)"
  (cd "$wt" && git am -q -3 "$root/bench/next/s15-sm90a-tma.patch")
  export_tree tma "$(git -C "$wt" rev-parse HEAD)"
  git -C "$wt" log --oneline -3 > "$dest/commits.txt"
  git worktree remove --force "$wt"
  du -sh "$dest"
  ;;
micro)
  export PATH=/usr/local/cuda/bin:$PATH
  out=${OUT:-/tmp/s15-out}; mkdir -p "$out"
  for v in main softmax tma; do
    (cd "$dest/$v" && timeout 120 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
      -o /tmp/attn90-$v bench/micro/attention_prefill_sm90.cu -lcuda) > "$out/nvcc-$v.log" 2>&1
    echo "nvcc $v: rc=$? $(grep -c C75 "$out/nvcc-$v.log") C75xx lines"
    # SASS of each kernel: instructions in all, and the exponent's neighbours
    cuobjdump -sass /tmp/attn90-$v 2>/dev/null | awk -v v=$v '
      /Function :/ { if (f) printf "%s %-70s %6d instr %4d MUFU.EX2 %4d FSETP %4d FMUL %4d LDGSTS %4d UTMALDG\n", v, substr(f,1,70), n, ex, fs, fm, lg, tm; f=$3; n=ex=fs=fm=lg=tm=0; next }
      /^[ \t]+\/\*[0-9a-f]+\*\// { n++; if (/MUFU.EX2/) ex++; if (/FSETP/) fs++; if (/ FMUL/) fm++; if (/LDGSTS/) lg++; if (/UTMALDG/) tm++ }
      END { if (f) printf "%s %-70s %6d instr %4d MUFU.EX2 %4d FSETP %4d FMUL %4d LDGSTS %4d UTMALDG\n", v, substr(f,1,70), n, ex, fs, fm, lg, tm }' \
      > "$out/sass-$v.txt"
    grep -E "sm90_d128|sm90a" "$out/sass-$v.txt" | head -20
    timeout 90 /tmp/attn90-$v > "$out/micro-$v.log" 2>&1
    echo "micro $v: rc=$?"
    grep -E "FAIL|TFLOP|ALL PASS|SOME" "$out/micro-$v.log"
  done
  ;;
engine)
  [ -n "${QWQ_TESTS:-}" ] || source tests/device-env.sh
  export PATH=/usr/local/cuda/bin:$PATH
  out=${OUT:-/tmp/s15-out}; mkdir -p "$out"
  (cd "$dest/softmax" && timeout 90 ./build.sh --kernels-only) > "$out/build-softmax.log" 2>&1
  echo "build softmax: rc=$?"
  (cd "$dest/softmax" && tar czf "$out/ptx-softmax.tgz" kernels/ptx)
  ptx=$root/$dest/softmax/kernels/ptx
  QWQ_PTX_DIR=$ptx timeout 200 tests/run-on-device.sh --filter "FullyQualifiedName~AttentionKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~Hopper|FullyQualifiedName~KernelEntry|FullyQualifiedName~CudaModelTests" > "$out/tests-softmax.log" 2>&1
  echo "tests softmax: rc=$?"; grep -E "total:|failed:|succeeded:|skipped:|Expected|But was" "$out/tests-softmax.log" | head -12
  QWQ_PTX_DIR=$ptx QWQ_AB_AFTER=s15-softmax QWQ_AB_BEFORE=$(cat .device/COMMIT) QWQ_AB_TIMEOUT=150 \
    bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab" -- --synthetic qwq-32b --prefill 2048,16384 --decode 1024,32768 --batch 8
  (cd "$out" && tar czf ab.tgz ab && rm -rf ab)
  ;;
splits)
  [ -n "${QWQ_TESTS:-}" ] || source tests/device-env.sh
  out=${OUT:-/tmp/s15-out}; mkdir -p "$out/splits"
  for run in "bf16 2" "bf16 1" "fp8 4" "fp8 2" "fp8 1"; do
    set -- $run
    (cd "$QWQ_TESTS" && timeout 110 dotnet qwq.dll bench --synthetic qwq-32b-yarn --kv-cache "$1" --prefill 64 \
      --decode 1024,32768 --batch 8 --decode-blocks-per-sm "$2" --commit "$(cat "$root/.device/COMMIT")-bps$2" \
      --out "$out/splits/$1-bps$2") > "$out/splits/$1-bps$2.log" 2>&1
    echo "$1 --decode-blocks-per-sm $2: rc=$?"; grep -E "^decode|decode attention:" "$out/splits/$1-bps$2.log"
  done
  (cd "$out" && tar czf splits.tgz splits && rm -rf splits)
  ;;
*)
  echo "usage: bench/next/s15-measure.sh prepare|micro|engine|splits" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Session 24's plan for the next session's device time (bench/NOTES.md, session 24): one device call (~5 min).
# Here first, on a branch from main:
#   git am bench/next/s24-rope-helpers.patch bench/next/s24-silu-fp8.patch   (independent; either alone applies too)
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm: main's C# and embedded PTX)
#   tests/stage-device.sh; mv kernels/ptx and bench/results out of the tree (carry limit 64 MiB); carry [".device"]
# Device: bench/next/s24-measure.sh both
#   PTX rebuilt with the patches ($OUT/ptx.tgz: every module restamped, common.cuh changed), the tests that cover the
#   rope write kernels, SiLU·mul, the fp8 quantization and the engines, then against main, two alternating rounds: fp8
#   prefill 2k / 16k, and bf16 16k (must not move).
#   rope-helpers: a refactor, the same arithmetic: the tests pass unchanged, no figure moves.
#   silu-fp8: predicted fp8 16k +3-3.5% (SiLU·mul 53 ms + down's quantization ~41 ms of 1,310 -> ~50 ms), 2k alike.
#   Land what passes and gains (bench/NOTES.md either way); with only one patch applied, run the step of its name.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s24-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
case "${1:-}" in
  helpers|silu|both)
    [ "$1" = silu ] || grep -q "row_rope" kernels/rope.cu || { echo "s24-measure: git am s24-rope-helpers.patch first (header)" >&2; exit 2; }
    [ "$1" = helpers ] || grep -q "quantize_fp8_silu_mul_rows" kernels/quantize.cu || { echo "s24-measure: git am s24-silu-fp8.patch first (header)" >&2; exit 2; }
    ./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
    grep -E "error|FAILED" "$out/build.log" | head
    (cd kernels && tar czf "$out/ptx.tgz" ptx)
    (cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 240 dotnet QwQ.Cuda.Tests.dll --filter \
      "FullyQualifiedName~RopeKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~CudaModelTests|FullyQualifiedName~AdaptiveYarnGpuTests|FullyQualifiedName~Fp8KvCacheGpuTests|FullyQualifiedName~ActivationKernelTests|FullyQualifiedName~Fp8KernelTests|FullyQualifiedName~Fp8GemmTests|FullyQualifiedName~Fp8EngineTests") \
      > "$out/tests.log" 2>&1; echo "tests rc=$?"
    grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
    if [ -s .device/base-cli.tar.xz ]; then
      mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
      QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-fp8" -- --synthetic qwq-32b \
        --quantize fp8 --prefill 2048,16384 --decode 64 2>&1 | grep -E "exit|prefill of"
      QWQ_AB_TIMEOUT=100 QWQ_PTX_DIR=$root/kernels/ptx bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-bf16" -- --synthetic qwq-32b \
        --prefill 16384 --decode 64 2>&1 | grep -E "exit|prefill of"
      for ab in ab-fp8 ab-bf16; do sed -n '/| figure/,$p' "$out/$ab/ab.md" 2>/dev/null; done
    fi
    tar czf "$out/logs.tgz" -C "$out" build.log tests.log && rm -f "$out/build.log" "$out/tests.log" ;;
  *) echo "usage: bench/next/s24-measure.sh helpers|silu|both (its header says what it does)" >&2; exit 2 ;;
esac

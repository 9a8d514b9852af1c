#!/usr/bin/env bash
# Session 22's plan for the next session's device time (bench/NOTES.md, session 22): two device calls.
# Here first, on a branch from main:
#   git am bench/next/s22-fp8wgb-n16.patch bench/next/s22-gateup-bf16.patch
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm: main's C# and embedded PTX; the patches' C#
#                                                              needs their PTX entries, so the base cannot be the patched
#                                                              CLI on main's PTX)
#   tests/stage-device.sh; mv kernels/ptx /tmp/ptx-hold (carry 64 MiB); carry [".device"]
# Device, call 1: bench/next/s22-measure.sh patches   (~9 min)
#   PTX rebuilt with both patches ($OUT/ptx.tgz: land it; the bodies that change are sm90a/gemv_tc_sm90a (the n16 entry)
#   and activation (the bf16 SiLU·mul), every other one restamped only), the tests the two commits name, then against
#   main, two alternating rounds each: fp8 decode at 1k batch 16 and 32 (the n16 warpgroup build; predicted batch 16
#   +1-3%, 32 and 1 unchanged), and bf16 prefill 2k / 16k (the bf16 gate_up; predicted 16k +1.0-1.6%, 2k ~+1%). The two
#   patches touch different figures (fp8's prefill gate_up runs on the FP8 GEMM, which keeps fp32; decode rows stay
#   under 128), so one build serves both A/Bs. Land each that gains, or record why not (bench/NOTES.md); the bench log's
#   "tuned:" lines say which products took the n16 build.
# Device, call 2: bench/next/s22-measure.sh lt   (~5 min; stage again first with call 1's PTX in kernels/ptx, so that
#   the build embeds the patches' entries: the patched C# needs them and this step passes no QWQ_PTX_DIR)
#   The tuned cuBLASLt prefill (main since session 22, opt-in: --prefill-gemm CublasLtTuned) against cuBLASLt's first
#   picks (--prefill-gemm CublasLt) on one build, two alternating rounds, then its GPU tests: both arms keep gate_up in
#   fp32 (TryApplyBf16Out serves cublasGemmEx only), so this isolates the tuning. Predicted: 16k prefill +0..3% (the
#   products run 624-689 TFLOP/s against the 8192^3 GEMM's ~775; the first pick may not be the fastest candidate at
#   these shapes); 2k unchanged (a 2048-row prompt is not the 4096-row chunk the tuning times). If it gains, the next
#   step is a bf16-output cuBLASLt plan (to keep call 1's gain too) and then the default; else record it.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s22-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
case "${1:-}" in
  patches)
    grep -q "fp8wgb_n16" kernels/sm90a/gemv_tc_sm90a.cu && grep -q "silu_mul_bf16_bf16" kernels/activation.cu \
      || { echo "s22-measure: git am both patches first (header)" >&2; exit 2; }
    [ -s .device/base-cli.tar.xz ] || { echo "s22-measure: bench/build-base-cli.sh main .device/base-cli.tar.xz first" >&2; exit 2; }
    ./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
    grep -q "FAILED" "$out/build.log" && { grep -E "error|FAILED" "$out/build.log" | head; exit 1; }
    grep -A3 "gemv_tc_fp8wgb_n16\|silu_mul_bf16_bf16" "$out/build.log" | grep -E "registers|spill" | head -4
    (cd kernels && tar czf "$out/ptx.tgz" ptx)
    (cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 240 dotnet QwQ.Cuda.Tests.dll --filter \
      "FullyQualifiedName~TensorCoreGemvKernelTests|FullyQualifiedName~TensorCoreVariantTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~Fp8EngineTests|FullyQualifiedName~ActivationKernelTests|FullyQualifiedName~CudaModelTests|FullyQualifiedName~Int4EngineTests|FullyQualifiedName~HopperPrefillPathTests") \
      > "$out/tests.log" 2>&1; echo "tests rc=$?"
    grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
    mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
    QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-fp8" -- --synthetic qwq-32b \
      --quantize fp8 --prefill 512 --decode 1024 --batch 16,32 2>&1 | grep -E "exit|decode at|decode batch"
    QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-bf16" -- --synthetic qwq-32b \
      --prefill 2048,16384 --decode 64 2>&1 | grep -E "exit|prefill of"
    for ab in ab-fp8 ab-bf16; do sed -n '/| figure/,$p' "$out/$ab/ab.md" 2>/dev/null; done
    tar czf "$out/logs.tgz" -C "$out" build.log tests.log && rm -f "$out/build.log" "$out/tests.log" ;;
  lt)
    QWQ_AB_BEFORE_EXTRA="--prefill-gemm CublasLt" QWQ_AB_AFTER_EXTRA="--prefill-gemm CublasLtTuned" QWQ_AB_AFTER=lt-tuned \
      QWQ_AB_BEFORE=lt-first-pick QWQ_AB_TIMEOUT=100 \
      bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-lt" -- --synthetic qwq-32b --prefill 2048,16384 --decode 64 2>&1 | grep -E "exit|prefill of"
    sed -n '/| figure/,$p' "$out/ab-lt/ab.md" 2>/dev/null
    (cd "$QWQ_TESTS" && timeout 120 dotnet QwQ.Cuda.Tests.dll --filter "FullyQualifiedName~CublasLtPrefillMatchesCublas") \
      > "$out/tests-lt.log" 2>&1; echo "lt tests rc=$?"
    grep -E "^\s*failed |total:|failed:|succeeded:" "$out/tests-lt.log" ;;
  *) echo "usage: bench/next/s22-measure.sh patches|lt (its header says what each does)" >&2; exit 2 ;;
esac

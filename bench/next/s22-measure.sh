#!/usr/bin/env bash
# Session 22's plan for the next session's device time (bench/NOTES.md, session 22), one device call (~8 min): the
# patch below, then the tuned cuBLASLt prefill that landed opt-in.
# Here first, on a branch from main:
#   git am bench/next/s22-fp8wgb-n16.patch
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm: main's C# and embedded PTX; the patch's C#
#                                                              loads no bf16-x build from PTX without the n16 entry, so
#                                                              the base cannot be the patch's CLI on main's PTX)
#   tests/stage-device.sh; mv kernels/ptx /tmp/ptx-hold (carry 64 MiB); carry [".device"]
# Device: bench/next/s22-measure.sh   PTX rebuilt with the n16 entry ($OUT/ptx.tgz: land sm90a/gemv_tc_sm90a.ptx and the
#                                      restamped rest from it; only that body should change), the kernel tests, then fp8
#                                      batch 16 and 32 at 1k against main, two alternating rounds. Predicted: batch 16
#                                      +1-3% (the 16-row products -2..-4% plus the conversion launches), batch 32 and 1
#                                      unchanged. Land it if batch 16 gains, or record why not (bench/NOTES.md); the
#                                      bench log's "tuned:" lines say which products took the n16 build.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s22-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
grep -q "fp8wgb_n16" kernels/sm90a/gemv_tc_sm90a.cu || { echo "s22-measure: git am bench/next/s22-fp8wgb-n16.patch first" >&2; exit 2; }
[ -s .device/base-cli.tar.xz ] || { echo "s22-measure: bench/build-base-cli.sh main .device/base-cli.tar.xz first" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -q "FAILED" "$out/build.log" && { grep -E "error|FAILED" "$out/build.log" | head; exit 1; }
grep -A3 "gemv_tc_fp8wgb_n16" "$out/build.log" | grep -E "registers|spill" | head -2
(cd kernels && tar czf "$out/ptx.tgz" ptx)
source tests/device-env.sh
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 200 dotnet QwQ.Cuda.Tests.dll \
  --filter "FullyQualifiedName~TensorCoreGemvKernelTests|FullyQualifiedName~TensorCoreVariantTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~Fp8EngineTests") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab" -- --synthetic qwq-32b \
  --quantize fp8 --prefill 512 --decode 1024 --batch 16,32 2>&1 | grep -E "exit|decode at|decode batch"
sed -n '/| figure/,$p' "$out/ab/ab.md" 2>/dev/null
# The tuned cuBLASLt prefill (main since session 22, opt-in: --prefill-gemm CublasLtTuned) against cublasGemmEx, one
# build, two alternating rounds, then its GPU test. Predicted: 16k prefill +0..3% (the products run 624-689 TFLOP/s
# against the 8192^3 GEMM's ~775; cuBLAS's first pick may not be the fastest of its candidates at these shapes); 2k
# unchanged (a 2048-row prompt is not the 4096-row chunk the tuning times; its plans stay the first pick). If it gains,
# make it the default (EngineOptions.PrefillGemm) and say so in README; if not, record it in NOTES.
QWQ_AB_AFTER_EXTRA="--prefill-gemm CublasLtTuned" QWQ_AB_AFTER=lt-tuned QWQ_AB_BEFORE=gemmex QWQ_AB_TIMEOUT=100 \
  bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab-lt" -- --synthetic qwq-32b --prefill 2048,16384 --decode 64 2>&1 | grep -E "exit|prefill of"
sed -n '/| figure/,$p' "$out/ab-lt/ab.md" 2>/dev/null
(cd "$QWQ_TESTS" && timeout 120 dotnet QwQ.Cuda.Tests.dll --filter "FullyQualifiedName~TunedCublasLtPrefillMatchesCublas|FullyQualifiedName~CublasLtPrefillMatchesCublas") \
  > "$out/tests-lt.log" 2>&1; echo "lt tests rc=$?"; grep -E "^\s*failed |total:|failed:|succeeded:" "$out/tests-lt.log"
tar czf "$out/logs.tgz" "$out/build.log" "$out/tests.log" "$out/tests-lt.log" && rm -f "$out/build.log" "$out/tests.log" "$out/tests-lt.log"

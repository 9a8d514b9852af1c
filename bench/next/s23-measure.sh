#!/usr/bin/env bash
# Session 23's plan for the next session's device time (bench/NOTES.md, session 23): one device call (~6 min).
# Here first, on a branch from main:
#   git am bench/next/s23-qkv-bf16.patch
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm: main's C# and embedded PTX; the patch's C#
#                                                              needs its PTX entries, so the base cannot be the patched
#                                                              CLI on main's PTX)
#   tests/stage-device.sh; mv kernels/ptx and bench/results out of the tree (carry limit 64 MiB); carry [".device"]
# Device: bench/next/s23-measure.sh qkv
#   PTX rebuilt with the patch ($OUT/ptx.tgz: land it; the bodies that change are rope and sm90/rope, the two new
#   qkv_bias_rope_paged_bf16_* entries, every other module restamped only if a .cuh changed: none does), the tests the
#   commit names, then against main, two alternating rounds each: bf16 prefill 2k / 16k and the fp8-KV 16k prefill.
#   Predicted: 16k +0.4-0.6% (the rope kernel 24.5 -> ~16 ms, the qkv GEMM writing half), 2k about +0.5%, fp8-KV
#   alike. Land it if it gains (bench/NOTES.md either way). Compare only within the call: H200 machines differ by ~1.5%
#   (session 23).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s23-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
case "${1:-}" in
  qkv)
    grep -q "qkv_bias_rope_paged_##P##_bf16" kernels/rope.cu || { echo "s23-measure: git am the patch first (header)" >&2; exit 2; }
    [ -s .device/base-cli.tar.xz ] || { echo "s23-measure: bench/build-base-cli.sh main .device/base-cli.tar.xz first" >&2; exit 2; }
    ./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
    grep -q "FAILED" "$out/build.log" && { grep -E "error|FAILED" "$out/build.log" | head; exit 1; }
    (cd kernels && tar czf "$out/ptx.tgz" ptx)
    (cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 240 dotnet QwQ.Cuda.Tests.dll --filter \
      "FullyQualifiedName~RopeKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~CudaModelTests|FullyQualifiedName~HopperPrefillPathTests") \
      > "$out/tests.log" 2>&1; echo "tests rc=$?"
    grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
    mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
    QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-bf16" -- --synthetic qwq-32b \
      --prefill 2048,16384 --decode 64 2>&1 | grep -E "exit|prefill of"
    QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-fp8kv" -- --synthetic qwq-32b \
      --kv-cache fp8 --prefill 16384 --decode 64 2>&1 | grep -E "exit|prefill of"
    for ab in ab-bf16 ab-fp8kv; do sed -n '/| figure/,$p' "$out/$ab/ab.md" 2>/dev/null; done
    tar czf "$out/logs.tgz" -C "$out" build.log tests.log && rm -f "$out/build.log" "$out/tests.log" ;;
  *) echo "usage: bench/next/s23-measure.sh qkv (its header says what it does)" >&2; exit 2 ;;
esac

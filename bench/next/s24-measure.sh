#!/usr/bin/env bash
# Session 24's plan for the next session's device time (bench/NOTES.md, session 24): one short device call (~2 min).
# Here first, on a branch from main:
#   git am bench/next/s24-rope-helpers.patch
#   tests/stage-device.sh; mv kernels/ptx and bench/results out of the tree (carry limit 64 MiB); carry [".device"]
# Device: bench/next/s24-measure.sh helpers
#   PTX rebuilt with the patch ($OUT/ptx.tgz: land rope.ptx and sm90/rope.ptx from it), then the tests that cover the
#   three rope write kernels and the engine. A refactor: the arithmetic is the same, so the tests must pass unchanged
#   and the prefill/decode figures must not move (add the A/B of s23's header if in doubt).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s24-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
case "${1:-}" in
  helpers)
    grep -q "row_rope" kernels/rope.cu || { echo "s24-measure: git am the patch first (header)" >&2; exit 2; }
    ./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
    grep -E "error|FAILED" "$out/build.log" | head
    (cd kernels && tar czf "$out/ptx.tgz" ptx)
    (cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 240 dotnet QwQ.Cuda.Tests.dll --filter \
      "FullyQualifiedName~RopeKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~CudaModelTests|FullyQualifiedName~AdaptiveYarnGpuTests|FullyQualifiedName~Fp8KvCacheGpuTests") \
      > "$out/tests.log" 2>&1; echo "tests rc=$?"
    grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
    tar czf "$out/logs.tgz" -C "$out" build.log tests.log && rm -f "$out/build.log" "$out/tests.log" ;;
  *) echo "usage: bench/next/s24-measure.sh helpers (its header says what it does)" >&2; exit 2 ;;
esac

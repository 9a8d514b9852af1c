#!/usr/bin/env bash
# Session 25's plan for the next session's device time (bench/NOTES.md, session 25): one device call (~6 min).
# Here first, on a branch from main:
#   git am bench/next/s25-decode-fused-combine.patch bench/next/s25-quantize-helper.patch   (independent; the second a
#   refactor of quantize.cu: the same codes, its tests below)
#   bench/build-base-cli.sh main .device/base-cli.tar.xz     (the base arm: main's C# and embedded PTX)
#   tests/stage-device.sh; tests/device-aside.sh out (carry limit 64 MiB; "back" after the call); carry [".device"]
# Device: bench/next/s25-measure.sh
#   PTX rebuilt with the patch ($OUT/ptx.tgz: only attention_decode's modules change), the decode micro-benchmark
#   (split+combine against the split kernel merging by tickets, every batch/context/blocks-a-SM, both checked against a
#   CPU reference), the tests that cover the decode attention and the engines' decode, then against main, two
#   alternating rounds: fp8 batch 1 and 8 at 64 and 1k, and bf16 batch 1 and 8 at 1k and 32k.
#   Predicted: the combine launch is ~2.5 µs a layer in the graph, the last block's merge ~1 µs at 1k: fp8 batch 1 at
#   1k ~+1%, at 64 positions ~+1.6%; bf16 ~+0.6%; batch 8 ~+1%; 32k within ±0.5% (64 splits merged by 8 blocks instead
#   of 40: watch it). Land it if the tests pass and nothing loses; bench/NOTES.md either way.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s25-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
source tests/device-env.sh
grep -q "int\* __restrict__ tickets" kernels/attention_decode.cu || { echo "s25-measure: git am bench/next/s25-decode-fused-combine.patch first (header)" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -E "error|FAILED" "$out/build.log" | head
(cd kernels && tar czf "$out/ptx.tgz" ptx)
(nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/attndec bench/micro/attention_decode.cu > "$out/micro-build.log" 2>&1 \
  && timeout 150 /tmp/attndec > "$out/micro.txt" 2>&1; echo "micro rc=$?")
grep -E "check|FAIL|b1 1024|b8 1024" "$out/micro.txt" | grep -E "FAIL|\*" | head -20
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 240 dotnet QwQ.Cuda.Tests.dll --filter \
  "FullyQualifiedName~AttentionKernelTests|FullyQualifiedName~Fp8KvKernelTests|FullyQualifiedName~KernelEntry|FullyQualifiedName~PtxFreshness|FullyQualifiedName~CudaModelTests|FullyQualifiedName~Fp8KvCacheGpuTests|FullyQualifiedName~BatchedStep|FullyQualifiedName~Fp8EngineTests|FullyQualifiedName~Fp8KernelTests|FullyQualifiedName~Fp8GemmTests") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
if [ -s .device/base-cli.tar.xz ]; then
  mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base
  QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-fp8" -- --synthetic qwq-32b \
    --quantize fp8 --prefill 64 --decode 64,1024 --batch 8 2>&1 | grep -E "exit"
  QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=100 bench/device-ab.sh /tmp/base/qwq-base 2 "$out/ab-bf16" -- --synthetic qwq-32b \
    --prefill 64 --decode 1024,32768 --batch 8 2>&1 | grep -E "exit"
  for ab in ab-fp8 ab-bf16; do sed -n '/| figure/,$p' "$out/$ab/ab.md" 2>/dev/null; done
fi
tar czf "$out/logs.tgz" -C "$out" build.log micro-build.log tests.log && rm -f "$out/build.log" "$out/micro-build.log" "$out/tests.log"

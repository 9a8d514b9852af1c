#!/usr/bin/env bash
# Session 20's plan for the next session's device time (bench/NOTES.md, session 20), one device call.
# Here first: git apply bench/next/s20-int4-umulhi.patch, then tests/stage-device.sh (the staged build embeds the
# tree's kernels/ptx, still main's: there is no nvcc here; that is the A/B's base arm), then carry [".device"] with
# kernels/ptx moved out if the carry is over 64 MiB (the script rebuilds it on the device for the other arm).
#   device: bench/next/s20-measure.sh      (~4 min: the PTX rebuilt with the patch; the SASS of gemv_int4_n8_g128
#                                           counted (SHF should fall by 12 a chunk-loop body and IMAD.HI appear: if
#                                           ptxas turned the multiplies back into shifts, the patch is moot); the int4
#                                           kernel and engine tests and the PTX checks on it; int4 batch 1/8/32 at 1k
#                                           against main's embedded PTX, two alternating rounds.
#                                           Predicted: ALU work a chunk 49 -> 37 instructions, FMA 36 -> 48; if the
#                                           ALU pipe bounds, int4 batch 1 7.85 -> ~7.1-7.4 ms (+6-10%), batch 8 alike,
#                                           batch 32 +2-4%; unchanged if it did not. Land it (with $OUT/ptx.tgz, every
#                                           PTX file restamped: int4.cuh is a shared header) or record why not.)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${OUT:-/tmp/s20-out}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
grep -q "int4_shr4_multiplier" kernels/int4.cuh || { echo "s20-measure: apply bench/next/s20-int4-umulhi.patch first" >&2; exit 2; }
./build.sh --kernels-only > "$out/build.log" 2>&1; echo "build rc=$?"
grep -A3 "gemv_int4_n8_g128:\|gemv_int4_n32_g128:" "$out/build.log" | grep -E "spill|registers" | head -4
tar czf "$out/ptx.tgz" kernels/ptx
ptxas -arch=sm_90 -O3 -o /tmp/int4.cubin kernels/ptx/sm90/gemv_int4.ptx && cuobjdump -sass /tmp/int4.cubin |
  awk '/Function : gemv_int4_n8_g128$/{f=1} f&&/Function : /&&!/n8_g128$/{f=0} f' > "$out/sass-n8-g128.txt"
echo "n8_g128 SASS: SHF $(grep -c ' SHF' "$out/sass-n8-g128.txt"), IMAD.HI $(grep -c 'IMAD.HI' "$out/sass-n8-g128.txt"), LOP3 $(grep -c ' LOP3' "$out/sass-n8-g128.txt")"
source tests/device-env.sh
(cd "$QWQ_TESTS" && QWQ_PTX_DIR=$root/kernels/ptx timeout 150 dotnet QwQ.Cuda.Tests.dll \
  --filter "FullyQualifiedName~Int4KernelTests|FullyQualifiedName~Int4EngineTests|FullyQualifiedName~PtxFreshness|FullyQualifiedName~KernelEntry") \
  > "$out/tests.log" 2>&1; echo "tests rc=$?"
grep -E "^\s*failed |total:|failed:|succeeded:|skipped:" "$out/tests.log"
QWQ_PTX_DIR=$root/kernels/ptx QWQ_AB_TIMEOUT=90 bench/device-ab.sh "$QWQ_TESTS" 2 "$out/ab" -- --synthetic qwq-32b \
  --quantize int4 --prefill 512 --decode 1024 --batch 8,32 2>&1 | grep -E "exit|decode at|batch"
sed -n '/| figure/,$p' "$out/ab/ab.md" 2>/dev/null | head -8

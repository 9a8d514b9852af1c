#!/usr/bin/env bash
# Every figure the open issues (#9 quantized weights, #13 long context) set a target for, measured on this machine, then
# bench/targets.py's table: target, measured, met or not. Why: the targets are set on an H100, which has not been lent
# since 2026-11-28; the session that gets one should measure them all in one or two device calls, not write a script.
# On the GPU machine, after tests/stage-device.sh here (carry .device; a step that needs nvcc builds from the tree):
#   source tests/device-env.sh && bench/targets.sh OUT [STEP ...]
# STEP, default all, in this order (roughly 9 minutes on an H200, from the single runs of sessions 19-22: split across two
# device calls of 600 s, e.g.
# "bf16 fp8 int4" then "kv32k switch attention long targets"):
#   bf16       qwq bench: prefill 2k / 16k, decode batch 1 and 8 at 1k
#   fp8        --quantize fp8: prefill 2k, decode batch 1 and 32 at 1k
#   int4       --quantize int4: prefill 2k, decode batch 1 at 1k
#   kv32k      --kv-cache fp8: decode at 32k
#   switch     --synthetic qwq-32b-yarn --rope-switch-stall --rope-switch-method rerotate: the adaptive-YaRN switch at 32k
#   attention  bench/micro/attention_prefill_sm90.cu "engine pp" and bench/micro/torch_sdpa.py (needs nvcc and sm_90a)
#   long       the test AllOf131072PositionsWorkWithFp8WeightsAndFp8KvOnOneH100 (131,072 positions, fp8 weights and KV)
#   goldens    issue #9's fidelity check at full width, not in the default list (~8 minutes: a call of its own):
#              make_quantized_goldens.py --full-width writes full-awq (~160 s on an H200) and full-fp8 (~260 s) with
#              transformers' goldens under QWQ_FULL_WIDTH_GOLDENS (default /tmp/qwq-full-width; a model whose
#              goldens.json is there already is not rebuilt), then FullWidthQuantizedGoldenTests (~45 s)
# and, on a host of 2 or 4 GPUs (issue #10; not in the default list: name them, e.g. "tp-tests tp2 long-tp2 targets" on
# an x2, add "tp4" on an x4; NCCL_NVLS_ENABLE=0 is set for them, as the device notes require):
#   tp-tests   the tensor-parallel GPU tests (TensorParallel, Nccl, Sharding, AllReduce; ~80 s on 2 x H200, session 26)
#   tp2        --tensor-parallel 2: bf16 prefill 2k, decode batch 1 and 8 at 1k; fp8 decode batch 1 and 8 at 1k
#   tp4        --tensor-parallel 4: bf16 prefill 2k, decode batch 1 and 8 at 1k; fp8 decode batch 1 at 1k
#   long-tp2   the test AllOf131072PositionsWorkWithYarnOnTwoGpus (131,072 positions in bf16 on two GPUs)
#   serve      not a target, not in the default list: `qwq serve --synthetic qwq-32b` under bench/serve_load.py's 64
#              streaming clients for 60 s (~2 minutes with the load), OUT/serve/load.json and serve.log; README's figure
#   targets    bench/targets.py OUT > OUT/targets.md (also run after every other step list, so each call leaves one)
# Each bench run is cut at QWQ_TARGETS_TIMEOUT seconds (240). Results: OUT/STEP/*.json, *.log (a test step's
# OUT/STEP/test.log); OUT/targets.md.
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bench/targets.sh OUT_DIR [bf16|fp8|int4|kv32k|switch|attention|long|goldens|tp-tests|tp2|tp4|long-tp2|serve|targets ...]" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
[ -n "${QWQ_TESTS:-}" ] || { echo "targets: source tests/device-env.sh first" >&2; exit 2; }
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(bf16 fp8 int4 kv32k switch attention long)
timeout=${QWQ_TARGETS_TIMEOUT:-240}

bench() { # name qwq-bench-arguments...
  local name=$1 dest="$out/$1"
  shift
  mkdir -p "$dest"
  (cd "$QWQ_TESTS" && timeout "$timeout" dotnet qwq.dll bench "$@" --out "$dest") > "$dest/bench.log" 2>&1
  echo "$name: exit $?"
  grep -E "^(decode|prefill|rope switch)" "$dest/bench.log" | sed "s/^/  /"
}

tests() { # name seconds filter [runner arguments]: the test runner over a filter, its summary in OUT/name/test.log
  local name=$1 seconds=$2 filter=$3
  mkdir -p "$out/$name"
  (cd "$QWQ_TESTS" && timeout "$seconds" dotnet QwQ.Cuda.Tests.dll --filter "$filter" "${@:4}") > "$out/$name/test.log" 2>&1
  echo "$name: exit $?"
  grep -E "^\s*(passed|failed|skipped) |total:|succeeded:|failed:|skipped:" "$out/$name/test.log" | grep -v "^\s*passed " | sed "s/^/  /"
}
export NCCL_NVLS_ENABLE=0  # the device notes: NVLink multicast can take a shared host down

for step in "${steps[@]}"; do
  case $step in
    bf16) bench bf16 --synthetic qwq-32b --prefill 2048,16384 --decode 1024 --batch 8 ;;
    fp8) bench fp8 --synthetic qwq-32b --quantize fp8 --prefill 2048 --decode 1024 --batch 32 ;;
    int4) bench int4 --synthetic qwq-32b --quantize int4 --prefill 2048 --decode 1024 ;;
    kv32k) bench kv32k --synthetic qwq-32b --kv-cache fp8 --prefill 512 --decode 32768 ;;
    switch) bench switch --synthetic qwq-32b-yarn --rope-switch-stall --rope-switch-method rerotate --prefill 512 --decode 1024 ;;
    attention)
      mkdir -p "$out/attention"
      if command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
        PATH=/usr/local/cuda/bin:$PATH nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o /tmp/qwq-targets-attn90 \
          "$root/bench/micro/attention_prefill_sm90.cu" -lcuda > "$out/attention/build.log" 2>&1 &&
          timeout 120 /tmp/qwq-targets-attn90 "engine pp" > "$out/attention/micro.txt" 2>&1
        echo "attention micro: exit $?"
        grep -E "TFLOP|FAIL" "$out/attention/micro.txt" | sed "s/^/  /"
      else
        echo "attention micro: no nvcc here" | tee "$out/attention/micro.txt"
      fi
      timeout 150 python3 "$root/bench/micro/torch_sdpa.py" --out "$out/attention/torch-sdpa.json" > "$out/attention/torch-sdpa.log" 2>&1
      echo "torch sdpa: exit $?"
      grep -E "^T=" "$out/attention/torch-sdpa.log" | sed "s/^/  /" ;;
    long) tests long 300 "FullyQualifiedName~AllOf131072PositionsWorkWithFp8WeightsAndFp8KvOnOneH100" ;;
    tp-tests) tests tp-tests 240 "FullyQualifiedName~TensorParallel|FullyQualifiedName~Nccl|FullyQualifiedName~Sharding|FullyQualifiedName~AllReduce" ;;
    tp2)
      bench tp2-bf16 --synthetic qwq-32b --tensor-parallel 2 --prefill 2048 --decode 1024 --batch 8
      bench tp2-fp8 --synthetic qwq-32b --quantize fp8 --tensor-parallel 2 --prefill 64 --decode 1024 --batch 8 ;;
    tp4)
      bench tp4-bf16 --synthetic qwq-32b --tensor-parallel 4 --prefill 2048 --decode 1024 --batch 8
      bench tp4-fp8 --synthetic qwq-32b --quantize fp8 --tensor-parallel 4 --prefill 64 --decode 1024 ;;
    long-tp2) tests long-tp2 300 "FullyQualifiedName~AllOf131072PositionsWorkWithYarnOnTwoGpus" ;;
    goldens)
      mkdir -p "$out/goldens"
      export QWQ_FULL_WIDTH_GOLDENS=${QWQ_FULL_WIDTH_GOLDENS:-/tmp/qwq-full-width}
      for m in full-awq full-fp8; do
        [ -f "$QWQ_FULL_WIDTH_GOLDENS/$m/goldens.json" ] && continue
        timeout 330 python3 "$root/tests/goldens/make_quantized_goldens.py" --full-width "$QWQ_FULL_WIDTH_GOLDENS" \
          --device cuda --only $m > "$out/goldens/gen-$m.log" 2>&1
        echo "goldens $m: exit $?"
      done
      # the per-prompt errors are the test's output: shown for passed tests too
      tests goldens 200 "FullyQualifiedName~FullWidthQuantizedGoldenTests" --output Detailed --show-stdout All
      grep -E "^full-(awq|fp8)" "$out/goldens/test.log" | sed "s/^/  /" ;;
    serve)
      mkdir -p "$out/serve"
      (cd "$QWQ_TESTS" && exec dotnet qwq.dll serve --synthetic qwq-32b --port 8000) > "$out/serve/serve.log" 2>&1 &
      server=$!
      for _ in $(seq 1 300); do curl -s -o /dev/null http://127.0.0.1:8000/health && break; sleep 1; done
      timeout 200 python3 "$root/bench/serve_load.py" http://127.0.0.1:8000 --clients 64 --seconds 60 --max-tokens 256 > "$out/serve/load.json" 2>&1
      echo "serve: exit $?"
      sed "s/^/  /" "$out/serve/load.json"
      curl -s http://127.0.0.1:8000/metrics | grep -E "^qwq_kv_blocks" | sed "s/^/  /" # used: 0 once every request ended
      kill "$server"; wait "$server" 2>/dev/null ;;
    targets) ;;
    *) echo "targets: unknown step '$step' (bf16 fp8 int4 kv32k switch attention long goldens tp-tests tp2 tp4 long-tp2 serve targets)" >&2; exit 2 ;;
  esac
done
python3 "$root/bench/targets.py" "$out" > "$out/targets.md"
cat "$out/targets.md"

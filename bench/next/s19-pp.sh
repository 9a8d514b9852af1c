#!/usr/bin/env bash
# Session 19, device: the ping-pong sm90a prefill attention in the micro-benchmark (all variants; ptxas lines for spills
# and C75xx). Writes $OUT/attn-pp-*.
export PATH=/usr/local/cuda/bin:$PATH
out=${OUT:-/tmp/s19-out}; mkdir -p "$out"
timeout 300 nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/attn90 \
  bench/micro/attention_prefill_sm90.cu -lcuda > "$out/attn-pp-nvcc.log" 2>&1
echo "nvcc rc=$?"; grep -E "error|C75" "$out/attn-pp-nvcc.log" | head -8
grep -E "registers|spill" "$out/attn-pp-nvcc.log" | sort | uniq -c | head -30
timeout 240 /tmp/attn90 "${1:-sm90}" > "$out/attn-pp-micro.log" 2>&1; echo "micro rc=$?"
grep -E "FAIL|blocks/SM|TFLOP|PASS$|ALL" "$out/attn-pp-micro.log" | grep -vE " PASS$" | head -60

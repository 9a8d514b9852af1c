#!/usr/bin/env bash
# Runs the test suite on the GPU machine, from the repository root, after tests/stage-device.sh here (carry
# .device). Arguments go to the test runner (e.g. --filter "FullyQualifiedName~Engine"). The set-up (runtime, test
# build, fixtures) is tests/device-env.sh: source that one to run qwq.dll or the tests in your own shell.
#   tests/run-on-device.sh --part 1|2|3 [runner arguments]
# runs one third of the suite by namespace: the whole suite no longer fits one device call (600 s; on 2 × H200 at
# 731d410 it had run 415 tests, none failed, when a 400-s limit cut it, in the 131,072-position tests). Part 1: the
# engine and batching tests (the full-size and full-context ones among them); 2: kernels, quantization, native; 3: the
# rest (sharding, reference, CLI, evaluation, ...). The three together are the suite.
set -euo pipefail
if [ "${1:-}" = "--part" ]; then
  engine="FullyQualifiedName~QwQ.Cuda.Tests.Engine.|FullyQualifiedName~QwQ.Cuda.Tests.Batching."
  kernels="FullyQualifiedName~QwQ.Cuda.Tests.Kernels.|FullyQualifiedName~QwQ.Cuda.Tests.Quantiz|FullyQualifiedName~QwQ.Cuda.Tests.Native."
  case "${2:-}" in
    1) filter=$engine ;;
    2) filter=$kernels ;;
    3) filter="FullyQualifiedName!~QwQ.Cuda.Tests.Engine.&FullyQualifiedName!~QwQ.Cuda.Tests.Batching.&FullyQualifiedName!~QwQ.Cuda.Tests.Kernels.&FullyQualifiedName!~QwQ.Cuda.Tests.Quantiz&FullyQualifiedName!~QwQ.Cuda.Tests.Native." ;;
    *) echo "run-on-device: --part takes 1, 2 or 3, got '${2:-}'" >&2; exit 2 ;;
  esac
  shift 2
  set -- --filter "$filter" "$@"
fi
source "$(dirname "${BASH_SOURCE[0]}")/device-env.sh"
cd "$QWQ_TESTS" && dotnet QwQ.Cuda.Tests.dll "$@"

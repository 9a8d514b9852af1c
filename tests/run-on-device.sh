#!/usr/bin/env bash
# Runs the test suite on the GPU machine, from the repository root, after tests/stage-device.sh here (carry
# .device). The fixtures are copied from the tree; arguments go to the test runner (e.g. --filter
# "FullyQualifiedName~Engine"). It also sets up the runtime, so `qwq.dll` in .device/QwQ.Cuda.Tests runs after it.
set -euo pipefail
source .device/on-device.sh
if [ -s .device/aspnetcore-runtime.tar.xz ] && [ ! -d /tmp/dotnet/shared/Microsoft.AspNetCore.App ]; then
  tar -xJf .device/aspnetcore-runtime.tar.xz -C /tmp/dotnet   # staged by tests/stage-device.sh
fi
t=.device/QwQ.Cuda.Tests
if [ -s .device/tests.tar.xz ] && [ ! -d "$t" ]; then tar -xJf .device/tests.tar.xz -C .device; fi   # staged compressed
mkdir -p "$t/fixtures/qwq-32b"
cp -r tests/fixtures/. "$t/fixtures/"
cp src/QwQ.Cuda/Presets/qwq-32b/*.json src/QwQ.Cuda/Presets/qwq-32b/*.gz "$t/fixtures/qwq-32b/"
mkdir -p "$t/fixtures/eval-examples" && cp bench/eval/examples/*.jsonl "$t/fixtures/eval-examples/"
cd "$t" && dotnet QwQ.Cuda.Tests.dll "$@"

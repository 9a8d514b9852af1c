#!/usr/bin/env bash
# Runs the test suite on the GPU machine, from the repository root, after
#   ../shared/device/stage.sh tests/QwQ.Cuda.Tests/QwQ.Cuda.Tests.csproj
# here (carry .device). The fixtures are copied from the tree, so .device/QwQ.Cuda.Tests/fixtures (and the
# satellite-language folders) can be deleted after staging to keep the carry under 64 MiB;
# arguments go to the test runner (e.g. --filter "FullyQualifiedName~Engine").
set -euo pipefail
source .device/on-device.sh
t=.device/QwQ.Cuda.Tests
mkdir -p "$t/fixtures/qwq-32b"
cp -r tests/fixtures/. "$t/fixtures/"
cp src/QwQ.Cuda/Presets/qwq-32b/*.json src/QwQ.Cuda/Presets/qwq-32b/*.gz "$t/fixtures/qwq-32b/"
cd "$t" && dotnet QwQ.Cuda.Tests.dll "$@"

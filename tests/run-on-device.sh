#!/usr/bin/env bash
# Runs the test suite on the GPU machine, from the repository root, after tests/stage-device.sh here (carry
# .device). Arguments go to the test runner (e.g. --filter "FullyQualifiedName~Engine"). The set-up (runtime, test
# build, fixtures) is tests/device-env.sh: source that one to run qwq.dll or the tests in your own shell.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device-env.sh"
cd "$QWQ_TESTS" && dotnet QwQ.Cuda.Tests.dll "$@"

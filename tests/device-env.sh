# Source on the GPU machine, from any folder, after tests/stage-device.sh here (carry .device):
#   source tests/device-env.sh && dotnet "$QWQ_TESTS/qwq.dll" bench --synthetic qwq-32b ...
# Puts the carried .NET runtime (and the ASP.NET Core framework the server and tests need) on the path, unpacks the
# test build with its fixtures once per machine, and sets QWQ_TESTS to that folder: the CLI (qwq.dll) and the test
# runner (QwQ.Cuda.Tests.dll) then run in the calling shell. tests/run-on-device.sh runs the suite through it. Why a
# file to source: a script run as a child cannot set up its caller's shell (session 14 lost a device call to a bench
# that ran after run-on-device.sh without dotnet on its path).
_qwq_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$_qwq_root/.device/on-device.sh"
if [ -s "$_qwq_root/.device/aspnetcore-runtime.tar.xz" ] && [ ! -d /tmp/dotnet/shared/Microsoft.AspNetCore.App ]; then
  tar -xJf "$_qwq_root/.device/aspnetcore-runtime.tar.xz" -C /tmp/dotnet   # staged by tests/stage-device.sh
fi
export QWQ_TESTS="$_qwq_root/.device/QwQ.Cuda.Tests"
if [ -s "$_qwq_root/.device/tests.tar.xz" ] && [ ! -d "$QWQ_TESTS" ]; then
  tar -xJf "$_qwq_root/.device/tests.tar.xz" -C "$_qwq_root/.device"   # staged compressed
fi
# the fixtures travel in the tree, not in the build: copied every time, so a warm machine gets the tree's current ones
mkdir -p "$QWQ_TESTS/fixtures/qwq-32b" "$QWQ_TESTS/fixtures/eval-examples"
cp -r "$_qwq_root/tests/fixtures/." "$QWQ_TESTS/fixtures/"
cp "$_qwq_root"/src/QwQ.Cuda/Presets/qwq-32b/*.json "$_qwq_root"/src/QwQ.Cuda/Presets/qwq-32b/*.gz "$QWQ_TESTS/fixtures/qwq-32b/"
cp "$_qwq_root"/bench/eval/examples/*.jsonl "$QWQ_TESTS/fixtures/eval-examples/"
unset _qwq_root

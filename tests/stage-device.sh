#!/usr/bin/env bash
# Stages the test build for the GPU machine (which has no .NET) into .device/, within the device tool's 64 MiB carry:
#   tests/stage-device.sh        then carry [".device"] and run tests/run-on-device.sh there.
# On top of ../shared/device/stage.sh (the base runtime): the ASP.NET Core shared framework (the server and the
# tests need it), and a test build without what the carry cannot afford: the server's client tests and their
# OpenAI client assemblies (they need no GPU; CI runs them), the fixtures (the tree has them: run-on-device.sh copies
# them), satellite resource folders and symbols.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
../shared/device/stage.sh
t=.device/QwQ.Cuda.Tests
rm -rf "$t"
dotnet build tests/QwQ.Cuda.Tests/QwQ.Cuda.Tests.csproj -c Release -o "$t" -p:ExcludeServerClientTests=true -nologo -v q
rm -rf "$t"/fixtures "$t"/{cs,de,es,fr,it,ja,ko,pl,pt-BR,ru,tr,zh-Hans,zh-Hant} "$t"/*.pdb
# The test build travels compressed (about a third of its size); run-on-device.sh unpacks it.
tar -C .device -cf - QwQ.Cuda.Tests | xz -T0 -6 > .device/tests.tar.xz && rm -rf "$t"
asp=.device/aspnetcore-runtime.tar.xz
if [ ! -s "$asp" ]; then
  dn=$(dirname "$(readlink -f "$(command -v dotnet)")")
  ver=$(ls "$dn/shared/Microsoft.AspNetCore.App" | sort -V | tail -1)
  tar -C "$dn" -cf - "shared/Microsoft.AspNetCore.App/$ver" | xz -T0 -9 > "$asp.tmp" && mv "$asp.tmp" "$asp"
fi
# what was staged, for results written on the device (bench/device-ab.sh); "-dirty": uncommitted changes built too
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests kernels bench/QwQ.Cuda.Bench || echo -dirty)" > .device/COMMIT
# The tree's files (tracked, and untracked ones git does not ignore) and .device: what the device tool carries. Over
# 64 MiB, the folders to move out of the tree for the call and back after (sessions 23-24 moved kernels/ptx and
# bench/results: the test build embeds the PTX, and QWQ_PTX_DIR points the tests at a PTX built on the device).
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$(( (tree + $(du -sb .device | cut -f1)) / 1048576 ))
echo "carry: $total MiB of 64"
if [ "$total" -gt 64 ]; then
  echo "over the carry: tests/device-aside.sh out (kernels/ptx, bench/results) before the call, back after it; the largest folders:"
  for d in kernels/ptx bench/results tests/fixtures src docs; do
    [ -d "$d" ] && echo "  $d $(( $(git ls-files -co --exclude-standard -z -- "$d" | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}') / 1048576 )) MiB"
  done
fi

#!/usr/bin/env bash
# Stages the test build for the GPU machine (which has no .NET) into .device/, within the device tool's 64 MiB carry:
#   tests/stage-device.sh        then carry [".device"] and run tests/run-on-device.sh there.
# On top of ../shared/device/stage.sh: the ASP.NET Core shared framework (the server and its tests need it; the
# shared recipe packs only the base runtime), and without what the carry cannot afford — the fixtures (the tree has
# them: run-on-device.sh copies them), satellite resource folders, symbols, and the OpenAI client assemblies (only
# the server tests use them, which need no GPU and run in CI).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
../shared/device/stage.sh tests/QwQ.Cuda.Tests/QwQ.Cuda.Tests.csproj
t=.device/QwQ.Cuda.Tests
rm -rf "$t"/fixtures "$t"/{cs,de,es,fr,it,ja,ko,pl,pt-BR,ru,tr,zh-Hans,zh-Hant} "$t"/*.pdb \
       "$t"/OpenAI.dll "$t"/Microsoft.Extensions.AI.OpenAI.dll "$t"/System.ClientModel.dll
asp=.device/aspnetcore-runtime.tar.xz
if [ ! -s "$asp" ]; then
  dn=$(dirname "$(readlink -f "$(command -v dotnet)")")
  ver=$(ls "$dn/shared/Microsoft.AspNetCore.App" | sort -V | tail -1)
  tar -C "$dn" -cf - "shared/Microsoft.AspNetCore.App/$ver" | xz -T0 -9 > "$asp.tmp" && mv "$asp.tmp" "$asp"
fi
echo "carry: $(( ($(git ls-files -co --exclude-standard | xargs du -cb 2>/dev/null | tail -1 | cut -f1) + $(du -sb .device | cut -f1)) / 1048576 )) MiB of 64"

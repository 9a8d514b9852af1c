#!/usr/bin/env bash
# Builds the qwq CLI at another commit (the base of an A/B, usually main) into a tarball the GPU machine can unpack:
#   bench/build-base-cli.sh REV .device/base-cli.tar.xz      (.device travels with the carry; ~4 MB)
# On the device: mkdir -p /tmp/base && tar -xJf .device/base-cli.tar.xz -C /tmp/base, then
# bench/device-ab.sh /tmp/base/qwq-base ROUNDS OUT -- ... Satellite resources and symbols are left out (carry size).
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: bench/build-base-cli.sh REV OUT.tar.xz" >&2; exit 2; fi
rev=$1 out=$2
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/src"
git -C "$work/src" checkout -q "$rev"
dotnet build "$work/src/src/QwQ.Cuda.Cli/QwQ.Cuda.Cli.csproj" -c Release -o "$work/qwq-base" -nologo -v q > "$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
(cd "$work/qwq-base" && rm -rf ./*.pdb cs de es fr it ja ko pl pt-BR ru tr zh-Hans zh-Hant)
git -C "$work/src" rev-parse --short HEAD > "$work/qwq-base/COMMIT"
mkdir -p "$(dirname "$out")"
tar -C "$work" -cf - qwq-base | xz -T0 -9 > "$out"
echo "$out: qwq at $(cat "$work/qwq-base/COMMIT"), $(( $(stat -c %s "$out") / 1024 )) KiB"

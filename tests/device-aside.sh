#!/usr/bin/env bash
# Moves the tree's two largest folders that a device call does not need out of the checkout, and back:
#   tests/device-aside.sh out    before `run` when tests/stage-device.sh says the carry passes 64 MiB
#   tests/device-aside.sh back   right after the call (before any commit: while they are out, git sees them deleted)
# kernels/ptx: the staged test build embeds the PTX, and calls that build kernels point QWQ_PTX_DIR at the PTX they
# build; bench/results: results come back through $OUT. Sessions 23-25 moved them by hand each call.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
aside=/tmp/qwq-aside-$(echo "$root" | md5sum | cut -c1-8)
folders=(kernels/ptx bench/results)
case "${1:-}" in
  out)
    if [ -e "$aside" ]; then echo "device-aside: $aside exists: run 'tests/device-aside.sh back' first" >&2; exit 1; fi
    for f in "${folders[@]}"; do mkdir -p "$aside/$(dirname "$f")" && mv "$f" "$aside/$f"; done
    echo "moved ${folders[*]} to $aside; 'tests/device-aside.sh back' after the call" ;;
  back)
    if [ ! -d "$aside" ]; then echo "device-aside: nothing aside ($aside)" >&2; exit 1; fi
    for f in "${folders[@]}"; do
      if [ -e "$f" ]; then echo "device-aside: $f exists in the tree; left $aside/$f where it is" >&2; exit 1; fi
      mv "$aside/$f" "$f"
    done
    rm -rf "$aside"
    echo "restored ${folders[*]}" ;;
  *) echo "usage: tests/device-aside.sh out|back (its header says why)" >&2; exit 2 ;;
esac

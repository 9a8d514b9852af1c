#!/usr/bin/env bash
# An A/B on the GPU machine: the tree's build against a base build, both in one call, alternating rounds, so both arms
# see the same machine (the device is lent per call; two calls can be two machines).
#   source tests/device-env.sh
#   bench/device-ab.sh BASE ROUNDS OUT -- --synthetic qwq-32b --decode 1024 --batch 8 ...
# BASE: a folder holding the base's qwq.dll (e.g. main's CLI, built here with `dotnet build src/QwQ.Cuda.Cli -c
# Release -o DIR` at the base commit, carried as a tarball and unpacked). The tree's arm is $QWQ_TESTS/qwq.dll with
# QWQ_PTX_DIR passed through (the kernels built on the machine); the base keeps the PTX it embeds. Writes
# OUT/{after,before}-rN/*.json and .log, then OUT/ab.md: `qwq bench compare` of every round. Commits in the results:
# QWQ_AB_AFTER and QWQ_AB_BEFORE, by default what .device/COMMIT (tests/stage-device.sh) and BASE/COMMIT
# (bench/build-base-cli.sh) say. Each run is cut at QWQ_AB_TIMEOUT seconds (300).
# QWQ_AB_AFTER_EXTRA / QWQ_AB_BEFORE_EXTRA: arguments added to one arm's bench only, for an A/B of an option on one
# build (BASE may then be "$QWQ_TESTS" itself), e.g. QWQ_AB_BEFORE_EXTRA="--prefill-gemm CublasLt"
# QWQ_AB_AFTER_EXTRA="--prefill-gemm CublasLtTuned". When that build's kernels were built on the machine (their launch
# arguments changed, so its embedded PTX no longer fits it), QWQ_AB_BEFORE_PTX_DIR gives the base arm a PTX folder too
# (set it to QWQ_PTX_DIR's; nothing else reaches the base arm).
# At the end the runs' folders go into OUT/runs.tar.gz (QWQ_AB_PACK=0 keeps them as they are): the device tool brings
# back at most 8 files from $OUT, and two rounds write 12 (session 19 lost the before arm's JSON files twice).
set -uo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  echo "usage: bench/device-ab.sh BASE_DIR ROUNDS OUT_DIR -- qwq-bench-arguments" >&2
  exit 2
fi
base=$1 rounds=$2 out=$3
shift 4
[ -n "${QWQ_TESTS:-}" ] || { echo "device-ab: source tests/device-env.sh first" >&2; exit 2; }
[ -f "$base/qwq.dll" ] || { echo "device-ab: no qwq.dll in $base" >&2; exit 2; }
case $rounds in ''|*[!0-9]*) echo "device-ab: ROUNDS must be a whole number, got '$rounds'" >&2; exit 2 ;; esac
mkdir -p "$out"
timeout=${QWQ_AB_TIMEOUT:-300}
after_commit=${QWQ_AB_AFTER:-$(cat "$QWQ_TESTS/../COMMIT" 2>/dev/null || echo after)}
before_commit=${QWQ_AB_BEFORE:-$(cat "$base/COMMIT" 2>/dev/null || echo before)}
arm() { # name dir commit round env-assignment-or-empty bench-arguments...
  local name=$1 dir=$2 commit=$3 round=$4 assign=$5 dest="$out/$1-r$4"
  shift 5
  mkdir -p "$dest"
  # env -u first: a QWQ_PTX_DIR exported to this script (QWQ_PTX_DIR=... bench/device-ab.sh ...) must not reach the base
  # arm, which would then run the tree's kernels too (sessions 15 and 16 lost an A/B that way: both arms on the new PTX)
  (cd "$dir" && env -u QWQ_PTX_DIR $assign timeout "$timeout" dotnet qwq.dll bench "$@" --commit "$commit" --out "$dest") > "$dest/bench.log" 2>&1
  echo "$name round $round: exit $?"
  grep -E "^(decode|prefill|rope switch|kernels)" "$dest/bench.log" | sed "s/^/  $name: /"
}
for ((r = 1; r <= rounds; r++)); do
  # the arms alternate which goes first, so neither always runs on a warmer machine
  if (( r % 2 )); then
    arm after "$QWQ_TESTS" "$after_commit" "$r" "${QWQ_PTX_DIR:+QWQ_PTX_DIR=$QWQ_PTX_DIR}" "$@" ${QWQ_AB_AFTER_EXTRA:-}
    arm before "$base" "$before_commit" "$r" "${QWQ_AB_BEFORE_PTX_DIR:+QWQ_PTX_DIR=$QWQ_AB_BEFORE_PTX_DIR}" "$@" ${QWQ_AB_BEFORE_EXTRA:-}
  else
    arm before "$base" "$before_commit" "$r" "${QWQ_AB_BEFORE_PTX_DIR:+QWQ_PTX_DIR=$QWQ_AB_BEFORE_PTX_DIR}" "$@" ${QWQ_AB_BEFORE_EXTRA:-}
    arm after "$QWQ_TESTS" "$after_commit" "$r" "${QWQ_PTX_DIR:+QWQ_PTX_DIR=$QWQ_PTX_DIR}" "$@" ${QWQ_AB_AFTER_EXTRA:-}
  fi
done
shopt -s nullglob
before=("$out"/before-r*/*.json) after=("$out"/after-r*/*.json)
if [ ${#before[@]} -gt 0 ] && [ ${#after[@]} -gt 0 ]; then
  dotnet "$QWQ_TESTS/qwq.dll" bench compare --before "${before[@]}" --after "${after[@]}" > "$out/ab.md" && cat "$out/ab.md"
  if [ "${QWQ_AB_PACK:-1}" != 0 ]; then
    runs=("$out"/before-r* "$out"/after-r*)
    tar -czf "$out/runs.tar.gz" -C "$out" "${runs[@]#"$out"/}" && rm -rf "${runs[@]}"
  fi
else
  echo "device-ab: a side wrote no results (see $out/*/bench.log)" >&2
  exit 1
fi

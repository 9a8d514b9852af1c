#!/usr/bin/env bash
# Compiles every kernels/*.cu twice: to kernels/ptx/<name>.ptx (PTX for compute_80: portable to sm_80 and newer;
# the driver JIT-compiles it for the actual GPU) and to kernels/ptx/sm90/<name>.ptx (compute_90: the same kernels
# with programmatic dependent launch, kernel_entry_barrier in kernels/common.cuh; loaded on sm_90 and newer).
# kernels/sm90a/*.cu (wgmma: only on the arch-specific target, whose code runs on compute capability 9.0 alone) are
# compiled once, for compute_90a, to kernels/ptx/sm90a/<name>.ptx; PtxLibrary loads them on 9.0 only. Not with
# -arch=sm_90a: with CUDA 13 that gave a compute_90 module which ptxas refused ("wgmma ... not supported on .target
# sm_90"); -ptx -arch=compute_90a writes .target sm_90a.
# The PTX is committed and embedded into QwQ.Cuda.dll.
# No --use_fast_math: RoPE and SiLU rely on accurate sincosf / expf.
# Host compiler: $NVCC_CCBIN if set; otherwise nvcc's default, falling back to clang-14 when nvcc rejects it.
# Also prints ptxas resource usage (registers / spills / smem) for sm_90 when this nvcc supports it.
# Then builds the solution (Release). Without nvcc the committed PTX is used as it is.
#   ./build.sh                 kernels (if nvcc is here) + dotnet build
#   ./build.sh --kernels-only  regenerate kernels/ptx only
set -euo pipefail
kernels_only=0
[ "${1:-}" = "--kernels-only" ] && kernels_only=1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kdir="$root/kernels"
outdir="$kdir/ptx"
NVCC="${NVCC:-nvcc}"
flags=(-ptx -arch=compute_80 -O3 -std=c++17)

dotnet_build() {
    [ $kernels_only -eq 1 ] && return 0
    echo "== dotnet build -c Release"
    dotnet build "$root/QwQ.Cuda.sln" -c Release -nologo -v q
}

if ! command -v "$NVCC" >/dev/null 2>&1; then
    if [ $kernels_only -eq 1 ]; then echo "build.sh: '$NVCC' not found (set NVCC or add the CUDA toolkit to PATH)" >&2; exit 1; fi
    echo "build.sh: no nvcc here: using the committed kernels/ptx (install the CUDA toolkit to rebuild them)"
    dotnet_build
    exit 0
fi
mkdir -p "$outdir" "$outdir/sm90" "$outdir/sm90a"

shopt -s nullglob
sources=("$kdir"/*.cu)
if [ ${#sources[@]} -eq 0 ]; then echo "build.sh: no kernels/*.cu found" >&2; exit 1; fi
arch_sources=("$kdir"/sm90a/*.cu)

# Pick a host compiler by probing with a trivial kernel.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '__global__ void probe() {}\n' > "$tmp/probe.cu"
ccbin=()
if [ -n "${NVCC_CCBIN:-}" ]; then
    ccbin=(-ccbin "$NVCC_CCBIN")
elif ! "$NVCC" -ptx -arch=compute_80 "$tmp/probe.cu" -o "$tmp/probe.ptx" >/dev/null 2>&1; then
    if command -v clang-14 >/dev/null 2>&1 && "$NVCC" -ccbin clang-14 -ptx -arch=compute_80 "$tmp/probe.cu" -o "$tmp/probe.ptx" >/dev/null 2>&1; then
        ccbin=(-ccbin clang-14)
        echo "build.sh: nvcc's default host compiler is unsupported; using clang-14"
    else
        echo "build.sh: nvcc cannot compile with its default host compiler; set NVCC_CCBIN" >&2
        "$NVCC" -ptx -arch=compute_80 "$tmp/probe.cu" -o "$tmp/probe.ptx" >&2 || true
        exit 1
    fi
fi

source_hash() {
    { tr -d '\r' < "$1"; for h in "${headers[@]}"; do tr -d '\r' < "$h"; done; } | sha256sum | cut -d' ' -f1
}
headers=()
while IFS= read -r h; do headers+=("$h"); done < <(LC_ALL=C ls -1 "$kdir"/*.cuh 2>/dev/null | LC_ALL=C sort)

if ! "$NVCC" --list-gpu-arch 2>/dev/null | grep -q compute_90; then
    echo "build.sh: this nvcc cannot target compute_90 (kernels/ptx/sm90 needs CUDA 12.0 or newer)" >&2
    exit 1
fi

# One kernel file: both builds, stamped, and the sm_90 resource usage. Writes its log to $tmp/<name>.log and
# touches $tmp/<name>.failed on a compile error; the files compile in parallel (the int4 and tensor-core GEMVs
# take most of a minute each).
compile_one() {
    local src="$1" name hash
    name="$(basename "$src" .cu)"
    echo "== $name.cu -> kernels/ptx/$name.ptx, kernels/ptx/sm90/$name.ptx"
    if ! "$NVCC" "${ccbin[@]}" "${flags[@]}" -I"$kdir" "$src" -o "$tmp/$name.ptx" \
        || ! "$NVCC" "${ccbin[@]}" -ptx -arch=compute_90 -O3 -std=c++17 -I"$kdir" "$src" -o "$tmp/$name.sm90.ptx"; then
        echo "build.sh: FAILED to compile $name.cu" >&2
        touch "$tmp/$name.failed"
        return
    fi
    # Stamp the PTX with a hash of its inputs (this .cu, then every kernels/*.cuh in name order, CRs removed so a
    # Windows checkout hashes the same) so a CPU test can catch PTX that was not rebuilt after a source change.
    # Drop the toolchain-specific header comments so PTX diffs only show real changes.
    hash="$(source_hash "$src")"
    { echo "// qwq-source-sha256: $hash"; grep -v -E '^// (Compiler Build ID|Cuda compilation tools|Based on NVVM)' "$tmp/$name.ptx"; } > "$outdir/$name.ptx"
    { echo "// qwq-source-sha256: $hash"; grep -v -E '^// (Compiler Build ID|Cuda compilation tools|Based on NVVM)' "$tmp/$name.sm90.ptx"; } > "$outdir/sm90/$name.ptx"
    # Resource usage (registers / spills / smem) of the sm_90 build, for the log.
    "$NVCC" "${ccbin[@]}" -cubin -arch=sm_90 -O3 -std=c++17 -I"$kdir" -Xptxas -v "$src" -o /dev/null 2>&1 \
        | sed -n -E "s/^ptxas info *: Compiling entry function '([^']+)'.*/  \1:/p; s/^ptxas info *: (Used .*)/    \1/p; s/^ *([0-9]+ bytes stack frame.*)/    \1/p" || true
}

# One kernels/sm90a file: compute_90a only, stamped like the others (the .cu, then every kernels/*.cuh: it includes
# them as ../*.cuh), and its sm_90a resource usage. Log and failure marker: $tmp/sm90a.<name>.log / .failed.
compile_arch_one() {
    local src="$1" name hash
    name="$(basename "$src" .cu)"
    echo "== sm90a/$name.cu -> kernels/ptx/sm90a/$name.ptx"
    if ! "$NVCC" "${ccbin[@]}" -ptx -arch=compute_90a -O3 -std=c++17 -I"$kdir" "$src" -o "$tmp/sm90a.$name.ptx"; then
        echo "build.sh: FAILED to compile sm90a/$name.cu" >&2
        touch "$tmp/sm90a.$name.failed"
        return
    fi
    hash="$(source_hash "$src")"
    { echo "// qwq-source-sha256: $hash"; grep -v -E '^// (Compiler Build ID|Cuda compilation tools|Based on NVVM)' "$tmp/sm90a.$name.ptx"; } > "$outdir/sm90a/$name.ptx"
    # -gencode, not -arch=sm_90a (see the top of this file); look for "wgmma ... serialized" warnings here too.
    "$NVCC" "${ccbin[@]}" -cubin -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 -I"$kdir" -Xptxas -v "$src" -o /dev/null 2>&1 \
        | sed -n -E "s/^ptxas info *: Compiling entry function '([^']+)'.*/  \1:/p; s/^ptxas info *: (Used .*)/    \1/p; s/^ *([0-9]+ bytes stack frame.*)/    \1/p; s/^(ptxas warning.*)/    \1/p" || true
}

for src in "${sources[@]}"; do
    compile_one "$src" > "$tmp/$(basename "$src" .cu).log" 2>&1 &
done
for src in "${arch_sources[@]}"; do
    compile_arch_one "$src" > "$tmp/sm90a.$(basename "$src" .cu).log" 2>&1 &
done
wait
failed=0
for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    cat "$tmp/$name.log"
    [ -e "$tmp/$name.failed" ] && failed=1
done
for src in "${arch_sources[@]}"; do
    name="$(basename "$src" .cu)"
    cat "$tmp/sm90a.$name.log"
    [ -e "$tmp/sm90a.$name.failed" ] && failed=1
done

# Remove PTX whose source is gone (stale files would otherwise still be embedded).
for ptx in "$outdir"/*.ptx "$outdir"/sm90/*.ptx; do
    name="$(basename "$ptx" .ptx)"
    if [ ! -f "$kdir/$name.cu" ]; then echo "build.sh: removing stale ${ptx#"$kdir"/}"; rm -f "$ptx"; fi
done
for ptx in "$outdir"/sm90a/*.ptx; do
    name="$(basename "$ptx" .ptx)"
    if [ ! -f "$kdir/sm90a/$name.cu" ]; then echo "build.sh: removing stale ${ptx#"$kdir"/}"; rm -f "$ptx"; fi
done

if [ $failed -ne 0 ]; then echo "build.sh: one or more kernels failed to compile" >&2; exit 1; fi
echo "build.sh: ${#sources[@]} kernel file(s) compiled to kernels/ptx/, ${#arch_sources[@]} to kernels/ptx/sm90a/"
dotnet_build

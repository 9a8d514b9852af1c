# Compiles every kernels/*.cu to kernels/ptx/<name>.ptx (PTX for compute_80, portable to sm_80+; the driver
# JIT-compiles it for the actual GPU) and to kernels/ptx/sm90/<name>.ptx (compute_90, with programmatic dependent
# launch; loaded on sm_90 and newer), and every kernels/sm90a/*.cu (wgmma, arch-specific: runs on compute capability 9.0
# only) for compute_90a to kernels/ptx/sm90a/<name>.ptx. Windows counterpart of build.sh; same flags, no --use_fast_math.
# Host compiler: $env:NVCC_CCBIN if set, else nvcc's default (cl.exe must be on PATH: run from a
# "Developer PowerShell for VS"). Prints ptxas resource usage for sm_90.
# Then builds the solution (Release). Without nvcc the committed PTX is used as it is.
#   ./build.ps1                kernels (if nvcc is here) + dotnet build
#   ./build.ps1 -KernelsOnly   regenerate kernels/ptx only
param([switch]$KernelsOnly)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$root = Split-Path -Parent $MyInvocation.MyCommand.Path
$kdir = Join-Path $root 'kernels'
$outdir = Join-Path $kdir 'ptx'
$nvcc = if ($env:NVCC) { $env:NVCC } else { 'nvcc' }
function Invoke-DotnetBuild {
    if ($KernelsOnly) { return }
    Write-Host '== dotnet build -c Release'
    dotnet build (Join-Path $root 'QwQ.Cuda.sln') -c Release -nologo -v q
    if ($LASTEXITCODE -ne 0) { throw 'build.ps1: dotnet build failed' }
}
if (-not (Get-Command $nvcc -ErrorAction SilentlyContinue)) {
    if ($KernelsOnly) { throw "build.ps1: '$nvcc' not found (set NVCC or add the CUDA toolkit to PATH)" }
    Write-Host 'build.ps1: no nvcc here: using the committed kernels/ptx (install the CUDA toolkit to rebuild them)'
    Invoke-DotnetBuild
    exit 0
}
New-Item -ItemType Directory -Force -Path (Join-Path $outdir 'sm90') | Out-Null
New-Item -ItemType Directory -Force -Path (Join-Path $outdir 'sm90a') | Out-Null

$sources = @(Get-ChildItem -Path $kdir -Filter '*.cu' | Sort-Object Name)
if ($sources.Count -eq 0) { throw 'build.ps1: no kernels/*.cu found' }
$archDir = Join-Path $kdir 'sm90a'
$archSources = @(if (Test-Path $archDir) { Get-ChildItem -Path $archDir -Filter '*.cu' | Sort-Object Name })

$ccbin = @()
if ($env:NVCC_CCBIN) { $ccbin = @('-ccbin', $env:NVCC_CCBIN) }
$flags = @('-ptx', '-arch=compute_80', '-O3', '-std=c++17')
if (-not (((& $nvcc --list-gpu-arch 2>$null) -join "`n") -match 'compute_90')) {
    throw 'build.ps1: this nvcc cannot target compute_90 (kernels/ptx/sm90 needs CUDA 12.0 or newer)'
}

# Hash of a kernel's inputs (the .cu, then every kernels/*.cuh in ordinal name order, CR bytes removed):
# must match build.sh and the CPU test that flags stale PTX.
[string[]]$headers = @(Get-ChildItem -Path $kdir -Filter '*.cuh' | Where-Object { $_.Extension -eq '.cuh' } | ForEach-Object { $_.FullName })
[Array]::Sort($headers, [StringComparer]::Ordinal)
function Get-SourceHash([string]$cuPath) {
    $bytes = New-Object System.Collections.Generic.List[byte]
    foreach ($p in @($cuPath) + $headers) {
        foreach ($b in [System.IO.File]::ReadAllBytes($p)) { if ($b -ne 13) { $bytes.Add($b) } }
    }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try { return (($sha.ComputeHash($bytes.ToArray()) | ForEach-Object { $_.ToString('x2') }) -join '') }
    finally { $sha.Dispose() }
}

# Writes nvcc's PTX at $ptxPath to $dest, stamped with the hash of $cuPath's inputs (Get-SourceHash) and without the
# toolchain-specific header comments, so PTX diffs only show real changes; LF line endings.
function Write-StampedPtx([string]$ptxPath, [string]$cuPath, [string]$dest) {
    $lines = @("// qwq-source-sha256: $(Get-SourceHash $cuPath)") +
        @(Get-Content $ptxPath | Where-Object { $_ -notmatch '^// (Compiler Build ID|Cuda compilation tools|Based on NVVM)' })
    [System.IO.File]::WriteAllText($dest, (($lines -join "`n") + "`n"))
}

$tmp = Join-Path ([System.IO.Path]::GetTempPath()) ("qwq-ptx-" + [guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Force -Path $tmp | Out-Null
$failed = $false
try {
    foreach ($src in $sources) {
        $name = [System.IO.Path]::GetFileNameWithoutExtension($src.Name)
        Write-Host "== $name.cu -> kernels/ptx/$name.ptx"
        $tmpPtx = Join-Path $tmp "$name.ptx"
        & $nvcc @ccbin @flags "-I$kdir" $src.FullName -o $tmpPtx
        if ($LASTEXITCODE -ne 0) { Write-Error "build.ps1: FAILED to compile $name.cu" -ErrorAction Continue; $failed = $true; continue }
        Write-StampedPtx $tmpPtx $src.FullName (Join-Path $outdir "$name.ptx")
        $tmpPtx90 = Join-Path $tmp "$name.sm90.ptx"
        & $nvcc @ccbin -ptx -arch=compute_90 -O3 -std=c++17 "-I$kdir" $src.FullName -o $tmpPtx90
        if ($LASTEXITCODE -ne 0) { Write-Error "build.ps1: FAILED to compile $name.cu for compute_90" -ErrorAction Continue; $failed = $true; continue }
        Write-StampedPtx $tmpPtx90 $src.FullName (Join-Path (Join-Path $outdir 'sm90') "$name.ptx")
        $report = & $nvcc @ccbin -cubin -arch=sm_90 -O3 -std=c++17 "-I$kdir" -Xptxas -v $src.FullName -o (Join-Path $tmp "$name.cubin") 2>&1
        foreach ($line in $report) {
            $s = "$line"
            if ($s -match "Compiling entry function '([^']+)'") { Write-Host "  $($Matches[1]):" }
            elseif ($s -match 'ptxas info\s*:\s*(Used .*)') { Write-Host "    $($Matches[1])" }
            elseif ($s -match '^\s*(\d+ bytes stack frame.*)') { Write-Host "    $($Matches[1])" }
        }
    }
    # kernels/sm90a: compute_90a only (-ptx -arch=compute_90a writes .target sm_90a; with CUDA 13, -arch=sm_90a gave a
    # compute_90 module that ptxas refused), stamped with the same hash (the .cu, then every kernels/*.cuh).
    foreach ($src in $archSources) {
        $name = [System.IO.Path]::GetFileNameWithoutExtension($src.Name)
        Write-Host "== sm90a/$name.cu -> kernels/ptx/sm90a/$name.ptx"
        $tmpPtx = Join-Path $tmp "sm90a.$name.ptx"
        & $nvcc @ccbin -ptx -arch=compute_90a -O3 -std=c++17 "-I$kdir" $src.FullName -o $tmpPtx
        if ($LASTEXITCODE -ne 0) { Write-Error "build.ps1: FAILED to compile sm90a/$name.cu" -ErrorAction Continue; $failed = $true; continue }
        Write-StampedPtx $tmpPtx $src.FullName (Join-Path (Join-Path $outdir 'sm90a') "$name.ptx")
    }
    # Remove PTX whose source is gone (stale files would otherwise still be embedded).
    foreach ($ptx in @(Get-ChildItem -Path $outdir -Filter '*.ptx') + @(Get-ChildItem -Path (Join-Path $outdir 'sm90') -Filter '*.ptx')) {
        $name = [System.IO.Path]::GetFileNameWithoutExtension($ptx.Name)
        if (-not (Test-Path (Join-Path $kdir "$name.cu"))) { Write-Host "build.ps1: removing stale $name.ptx"; Remove-Item $ptx.FullName }
    }
    foreach ($ptx in @(Get-ChildItem -Path (Join-Path $outdir 'sm90a') -Filter '*.ptx')) {
        $name = [System.IO.Path]::GetFileNameWithoutExtension($ptx.Name)
        if (-not (Test-Path (Join-Path $archDir "$name.cu"))) { Write-Host "build.ps1: removing stale sm90a/$name.ptx"; Remove-Item $ptx.FullName }
    }
}
finally {
    Remove-Item -Recurse -Force $tmp -ErrorAction SilentlyContinue
}
if ($failed) { throw 'build.ps1: one or more kernels failed to compile' }
Write-Host "build.ps1: $($sources.Count) kernel file(s) compiled to kernels/ptx/, $($archSources.Count) to kernels/ptx/sm90a/"
Invoke-DotnetBuild

#!/usr/bin/env bash
# One prepared GPU check (benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh OUTDIR [--dry-run] [--commit SHA]
# On an H100/H200 it installs the package in place (building the inside-mesh extension, CPU + CUDA; no
# dependencies are fetched: the GPU image has torch, Triton, ninja, h5py and pytest-benchmark), then runs
# the check within an 8-minute budget. --dry-run skips the install and runs tiny sizes on CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [--dry-run] [--commit SHA]}
mkdir -p "$out"
py=${PYTHON:-python3}
started=$(date +%s)
status=skipped
if [[ " $* " != *" --dry-run "* ]]; then
  if MAX_JOBS=${MAX_JOBS:-16} timeout 300 "$py" -m pip install --no-deps --no-build-isolation --no-index -e . \
      >"$out/install.log" 2>&1; then
    status=ok
  else
    status=failed  # reported; the extension is then built on first use (JIT)
  fi
  echo "install: $status in $(( $(date +%s) - started )) s"
fi
exec "$py" benchmarks/gpu_check.py "$@" --started-at "$started" --install-status "$status"

#!/usr/bin/env bash
# The GPU check of sqtorch (at most ~9 minutes, its timeouts, on one CUDA GPU); prints one markdown table and writes
# it, with one log per check, to $OUT (or /tmp/sqtorch_gpu_check). What it runs: bench/gpu_check.py.
#   bash bench/gpu_check.sh        (after: pip install -e ".[dev]" with a CUDA build of torch)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 bench/gpu_check.py "$@"

#!/usr/bin/env bash
# Ready for the first GPU: one command, one table (benchmarks/gpu_check.py says what each row
# checks and why its limits are what they are). On a machine with an NVIDIA GPU, after
# pip install -e ".[cuda]":
#   bash benchmarks/gpu_check.sh [--mirror DIR]
# and on a CPU, what of it a CPU can run (a check of the script, not of a GPU):
#   bash benchmarks/gpu_check.sh --cpu
# Exits 1 if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled WANDB_SILENT=true
exec python3 benchmarks/gpu_check.py "$@"

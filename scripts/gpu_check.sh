#!/usr/bin/env bash
# Every CUDA path of hpmkd on one GPU in a few minutes: bf16, device-resident data, compile,
# CUDA graphs, NCCL DDP, vmapped and stream-parallel teachers, the teacher prediction cache, the
# parallel launcher with three members on one GPU; then hpmkd vs a plain loop in img/s and the
# projected time of the 240-epoch CRD ResNet-56 -> ResNet-20 run. Details: scripts/gpu_check.py.
#
#   scripts/gpu_check.sh                   # the table; exit 1 if any check failed
#   scripts/gpu_check.sh --print-commands  # the `hpmkd train` commands it runs, nothing run
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --print-commands "* ]] &&
    [[ "$(uv run python -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" != "True" ]]; then
    echo "gpu_check: no CUDA GPU visible to torch here; nothing checked"
    exit 0
fi
exec uv run python scripts/gpu_check.py "$@"

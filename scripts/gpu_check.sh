#!/usr/bin/env bash
# One-GPU check (a few minutes, at most 10): FSDP/bf16 expert training of a ~1B dense model, a merge and an
# evaluation on the GPU, then the search's candidate loop (merge in place + >= 1M benchmark tokens, against a bare
# forward); prints tokens/s, MFU and candidates/h and writes $OUT/reports/gpu_check.json when OUT is set.
# Run from a checkout after `make install`; extra arguments go to scripts/gpu_check.py (e.g. --steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "error: $PY not found: run make install first" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: no GPU: CUDA is not available on this machine (the GPU check needs one NVIDIA GPU)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec timeout 600 "$PY" scripts/gpu_check.py "$@"

#!/usr/bin/env bash
# The prepared GPU check: one command, about four minutes on one GPU, one JSON report.
#   bash scripts/gpu_check.sh [REPORT.json]     (default: $OUT/gpu_check.json, else ./gpu_check.json)
# Needs a Python with torch (CUDA build) and the package's dependencies (av, hydra-core, numpy; pytest
# for the CUDA tests). Installs nothing from the network: the package goes in with
# `pip install --no-deps --no-build-isolation -e .` when that works offline, else it runs from the
# checkout (PYTHONPATH; pipeline/__init__.py finds conf/ beside it). Python: $PYTHON, else .venv's
# when its torch sees a GPU, else python3. Without a CUDA GPU it says so and exits non-zero.
# What it measures: pipeline/bench/gpu_check.py (README, section "GPU").
# CPU_DRY_RUN=1 runs the same plumbing on the CPU (tiny models, `--device cpu --quick`; the report says
# device cpu): for checking this script where no GPU is, never a substitute for the GPU run.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
report="${1:-${OUT:-.}/gpu_check.json}"
case "$report" in /*) ;; *) report="$PWD/$report" ;; esac
say() { echo "gpu_check.sh: $*" >&2; }

sees_gpu() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ] && sees_gpu "$repo/.venv/bin/python"; then
    python="$repo/.venv/bin/python"
  else
    python="$(command -v python3 || command -v python || true)"
  fi
fi
if [ -z "$python" ] || ! "$python" -c 'import torch' 2>/dev/null; then
  say "no Python with torch found (set PYTHON=/path/to/python)"
  exit 2
fi
device=cuda
extra=()
if [ "${CPU_DRY_RUN:-0}" = 1 ]; then
  say "CPU_DRY_RUN=1: the CPU plumbing check (tiny models), not the GPU check"
  device=cpu
  extra=(--quick)
elif ! sees_gpu "$python"; then
  say "no CUDA GPU is visible to torch in $python ($("$python" -c 'import torch; print(torch.__version__)')); nothing was checked"
  exit 2
fi
missing="$("$python" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("numpy", "av", "hydra", "omegaconf") if importlib.util.find_spec(m) is None))
EOF
)"
if [ -n "$missing" ]; then
  say "missing Python packages for $python: $missing (no network here: install them beforehand)"
  exit 2
fi

cd "$repo" || exit 2
installed="$(cd / && "$python" -c 'import os, pipeline; print(os.path.dirname(os.path.dirname(pipeline.__file__)))' 2>/dev/null)"
if [ "$installed" = "$repo" ]; then
  say "the package is installed from this checkout"
elif PIP_NO_INDEX=1 timeout 60 "$python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
  say "installed the package from this checkout (pip install --no-deps -e .)"
else
  say "pip could not install the package offline: running from the checkout (PYTHONPATH)"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # either way this checkout's code runs

say "writing $report"
timeout -k 5 280 "$python" -m pipeline.gpu_check --device "$device" "${extra[@]}" --out "$report" \
  --budget-s "${BUDGET_S:-250}"
status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  say "stopped after 280 s: the report holds the sections that finished"
fi
exit "$status"

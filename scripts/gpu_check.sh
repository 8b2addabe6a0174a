#!/usr/bin/env bash
# The prepared GPU check: one command, about four minutes on one GPU, one JSON report.
#   bash scripts/gpu_check.sh [REPORT.json]     (default: $OUT/gpu_check.json, else ./gpu_check.json)
# Needs a Python with torch (CUDA build) and the package's dependencies (av, hydra-core, numpy; pytest
# for the CUDA tests). Installs nothing from the network: the package goes in with
# `pip install --no-deps --no-build-isolation -e .` when that works offline, else it runs from the
# checkout (PYTHONPATH, with pipeline/conf linked to conf/ for the run). Python: $PYTHON, else .venv's
# when its torch sees a GPU, else python3. Without a CUDA GPU it says so and exits non-zero.
# What it measures: pipeline/gpu_check.py (README, section "GPU").
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
if ! sees_gpu "$python"; then
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
linked=""
if "$python" -c 'import pipeline.conf' 2>/dev/null && [ "$("$python" -c 'import pipeline, os; print(os.path.dirname(pipeline.__file__))')" = "$repo/pipeline" ]; then
  say "the package is installed from this checkout"
elif PIP_NO_INDEX=1 timeout 120 "$python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  && "$python" -c 'import pipeline.conf' 2>/dev/null; then
  say "installed the package (pip install --no-deps -e .)"
else
  say "pip could not install the package offline: running from the checkout (PYTHONPATH)"
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  if [ ! -e pipeline/conf ]; then
    ln -s ../conf pipeline/conf && linked=pipeline/conf
  fi
fi
cleanup() { if [ -n "$linked" ]; then rm -f "$linked"; fi; }
trap cleanup EXIT

say "writing $report"
timeout -k 10 290 "$python" -m pipeline.gpu_check --device cuda --out "$report" --budget-s "${BUDGET_S:-230}"
status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  say "stopped after 290 s: the report holds the sections that finished"
fi
exit "$status"

#!/usr/bin/env bash
# What a user installing the package (not a checkout) gets: build the wheel from a clean copy of the
# sources, install it into a fresh venv, then from a temporary folder run --help, the weights CLI, a
# hardware=slurm plan, the demo and a two-point sweep on the tiny model, and check the features written.
# Usage: bash scripts/wheel_check.sh   (PYTHON=python3.11 to pick the interpreter, KEEP=1 keeps the folder)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/wheel_check.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then echo "wheel_check: keeping $work" >&2; else trap 'rm -rf "$work"' EXIT; fi
step() { echo "wheel_check: $*" >&2; }

step "copying the sources (tracked and new files, nothing git ignores) to $work/src"
mkdir -p "$work/src" "$work/dist" "$work/run"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  # --ignore-failed-read: a tracked file deleted in the working tree is left out, not an error.
  git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | tar -C "$repo" --null --files-from=- --ignore-failed-read -cf - 2>/dev/null \
    | tar -C "$work/src" -xf -
else
  cp -r "$repo"/. "$work/src" && rm -rf "$work/src/.venv" "$work/src/build"
fi

step "fresh venv, torch==2.13.0, then the wheel (built with build isolation, as pip does for users)"
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/*.whl)"
"$py" -m pip install -q "$wheel"
step "installed $(basename "$wheel")"

step "OpenCV is the contrib wheel (TV-L1 optical flow) and the only cv2 in the venv"
"$py" -c 'import cv2; cv2.optflow.DualTVL1OpticalFlow_create' \
  || { echo "wheel_check: cv2.optflow missing: the package needs opencv-contrib-python-headless" >&2; exit 1; }
if "$py" -m pip show opencv-python-headless >/dev/null 2>&1; then
  echo "wheel_check: opencv-python-headless was installed beside the contrib wheel (they share cv2/)" >&2
  exit 1
fi

cd "$work/run"
site_pkg="$("$py" -c 'import pathlib, pipeline; print(pathlib.Path(pipeline.__file__).parent)')"
case "$site_pkg" in
  "$work/venv/"*) ;;
  *) echo "wheel_check: pipeline imported from $site_pkg, not from the fresh venv" >&2; exit 1 ;;
esac
touch "$work/before_runs"

step "--help lists the config groups"
"$py" -m pipeline.extract --help >help.txt
for option in "model:" "slowfast_tiny" "data:" "demo" "hardware:" "slurm"; do
  grep -q -- "$option" help.txt || { echo "wheel_check: --help lacks '$option'" >&2; exit 1; }
done

step "python -m pipeline.weights --list"
"$py" -m pipeline.weights --list --cache "$work/weights" > weights.txt  # whole: grep -q in a pipe may close it early
grep -q "slowfast_r50" weights.txt || { cat weights.txt >&2; exit 1; }

step "hardware=slurm composes, validates and plans (dry run)"
"$py" -m pipeline.extract data=demo model=slowfast_tiny model.checkpoint=random hardware=slurm \
  dry_run=true >plan.txt 2>&1 || { cat plan.txt >&2; exit 1; }
grep -q "slurm launcher" plan.txt || { cat plan.txt >&2; exit 1; }

step "demo on the tiny model"
"$py" -m pipeline.extract data=demo model=slowfast_tiny model.checkpoint=random

step "multirun: data.stride=16,32"
"$py" -m pipeline.extract -m data=demo model=slowfast_tiny model.checkpoint=random data.stride=16,32

step "checking the features written under $work/run/outputs"
"$py" - <<'EOF'
"""Every run dir holds one finite (rows, 144) feature file per demo video and a features.h5."""

from pathlib import Path

import numpy as np

expected = {"slowfast_tiny_8x1_s32_fps30", "slowfast_tiny_8x1_s16_fps30"}
runs = {d.name: d for d in Path("outputs/demo").iterdir() if d.is_dir()}
assert expected <= set(runs), f"run dirs {sorted(runs)}, expected {sorted(expected)}"
for name in sorted(expected):
    files = sorted((runs[name] / "features").glob("*.npy"))
    assert len(files) == 4, f"{name}: {len(files)} feature files, expected 4 (one per demo video)"
    for path in files:
        features = np.load(path)
        assert features.ndim == 2 and features.shape[0] > 0 and features.shape[1] == 144, (path, features.shape)
        assert np.isfinite(features).all(), path
    assert (runs[name] / "features.h5").is_file(), f"{name}: no features.h5"
    print(f"{name}: {len(files)} feature files")
EOF
[ -d outputs/demo_videos ] || { echo "wheel_check: demo videos not in the run folder" >&2; exit 1; }

written="$(find "$site_pkg" -newer "$work/before_runs" -not -path '*/__pycache__*' -print)"
if [ -n "$written" ]; then
  echo "wheel_check: the runs wrote into the installed package:" >&2
  echo "$written" >&2
  exit 1
fi
step "ok: the installed wheel runs from $work/run and wrote nothing into $site_pkg"

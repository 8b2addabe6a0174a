#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv by default) and install the package.
# Idempotent: re-installs only when pyproject.toml changed. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)${1:+-$1}"

# Test-only reference: torchvision 0.5.0's video ResNet (the version TSP pins), one source file from its
# wheel into .cache/ (git-ignored). torchvision does not import beside our torch; tests/tsp_reference.py
# loads the file with stand-ins. Run once per checkout, whatever the venv's state.
torchvision_reference() {
  local dir=.cache/torchvision-0.5.0
  [ -f "$dir/torchvision/models/video/resnet.py" ] && return 0
  "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    --python-version 37 torchvision==0.5.0 -d "$dir/wheel"
  "$VENV/bin/python" -c 'import glob, sys, zipfile
(wheel,) = glob.glob(sys.argv[1] + "/wheel/torchvision-0.5.0-*.whl")
zipfile.ZipFile(wheel).extract("torchvision/models/video/resnet.py", sys.argv[1])' "$dir"
  rm -rf "$dir/wheel"
}

if [ -f "$stamp" ]; then
  if [ "${1:-}" = "test" ]; then torchvision_reference; fi
  exit 0
fi
echo "setting up $VENV (once) ..." >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# Pin the torch release: a plain `torch` may pull a multi-GB build; on a GPU node pick your CUDA build first.
"$VENV/bin/python" -m pip show torch >/dev/null 2>&1 || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
# OpenCV comes as opencv-contrib-python-headless (TV-L1 flow is a contrib module). The plain wheel installs
# the same cv2 package: an older venv that has it switches here. Both go, so that the contrib wheel is
# installed whole below (uninstalling one of two wheels that share cv2/ would delete the other's files).
if "$VENV/bin/python" -m pip show opencv-python-headless >/dev/null 2>&1 \
  || "$VENV/bin/python" -m pip show opencv-python >/dev/null 2>&1; then
  echo "replacing opencv-python(-headless) by opencv-contrib-python-headless ..." >&2
  "$VENV/bin/python" -m pip uninstall -q -y opencv-python-headless opencv-python \
    opencv-contrib-python-headless opencv-contrib-python 2>/dev/null || true
fi
if [ "${1:-}" = "test" ]; then
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  # Test-only reference: PyPI slowfast==1.0 declares detectron2 (not installable), so no deps here.
  "$VENV/bin/python" -m pip install -q --no-deps slowfast==1.0 yacs simplejson
  # Test-only reference: pytorchvideo==0.1.5 (its hub models; torchvision is stubbed in the tests).
  "$VENV/bin/python" -m pip install -q --no-deps pytorchvideo==0.1.5 iopath
  # Test-only reference: VideoMAE V2's model file imports timm (torchvision is stood in for in the tests).
  "$VENV/bin/python" -m pip install -q --no-deps timm==1.0.31
  # Test-only reference: decord, the decoder of VideoMAE V2's TAD feature script (what it reads on MP4s
  # with an edit list, and on AV1, which it cannot open: tests/reference/test_videomae_tad_recipe.py).
  "$VENV/bin/python" -m pip install -q decord==0.6.0
  torchvision_reference
else
  "$VENV/bin/python" -m pip install -q -e .
fi
"$VENV/bin/python" -c 'import cv2; cv2.optflow.DualTVL1OpticalFlow_create' \
  || { echo "setup_env: cv2.optflow is missing (another OpenCV wheel shadows the contrib one?)" >&2; exit 1; }
touch "$stamp"

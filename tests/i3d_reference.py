"""Test-side reference of the THUMOS14 I3D feature recipe: Finspire13's extraction ALGORITHM, re-stated.

The released THUMOS14 two-stream I3D features (CMCS, then ActionFormer and most TAD work) come from
Finspire13/pytorch-i3d-feature-extraction `extract_features.py` (a copy is at
../shared/pytorch_i3d/feature_extraction/extract_features.py; line numbers below are that file's) run on
frames and TV-L1 flow images written by yjxiong/dense_flow. This module states what that pipeline computes,
so tests can pin our own extraction to it without CUDA, zip files or PyTorch 0.3:

Frames and flow images (dense_flow, master 4490b4e, `src/dense_flow_gpu.cpp`, `src/common.cpp`):
- The first decoded frame only starts the pairs: for n decoded frames it writes n - 1 RGB images
  (`img_%05d.jpg`, frame k for k = 1..n-1) and n - 1 flow pairs (`x_%05d.jpg`, `y_%05d.jpg`, the flow from
  frame k-1 to frame k), so RGB row and flow row i cover the same image indices (dense_flow_gpu.cpp:59-116).
- With `-w 340 -h 256` frames are cv::resize'd (bilinear, aspect ratio not kept) to 340 x 256 before the
  flow and the RGB JPEG (dense_flow_gpu.cpp:51-68); the script asserts 340 x 256 (extract_features.py:27-28).
- Flow: cuda::OpticalFlowDual_TVL1::create() defaults on the grayscale frames (dense_flow_gpu.cpp:32,70,80);
  each component is mapped to 0..255 by `dense_flow_image` (common.cpp:7-19, bound 20 from `-b=20` in
  build_of.py:48) and JPEG-encoded by cv::imencode(".jpg") at OpenCV's default quality 95 (common.cpp:41-43).

The script (`run`, extract_features.py:164-310):
- Images are read with PIL, sorted by name; values x -> x * 2 / 255 - 1, in [-1, 1] (:23-40), for RGB
  and for each flow image alike; flow channel 0 is x, 1 is y (:133-137).
- Chunks of 16 consecutive images (`chunk_size`, :167) start every `frequency` images (:236-246): with
  m images (m > 16 asserted, :237), starts 0, f, ..., ((m - 16) // f) * f: (m - 16) // f + 1 rows; the
  tail that does not fill a chunk is dropped.
- `--sample_mode` (:281-296): center_crop takes rows 16:240, columns 58:282 of the 256 x 340 frame;
  resize resizes each 340 x 256 image to 224 x 224 with PIL's ANTIALIAS (Lanczos) before scaling
  (:30-31); oversample takes ten crops (:66-83): the four 224 corners and the centre, then the same five of
  the horizontally flipped frames. The flip mirrors flow_x images without negating them.
  (As published the oversample loop calls pdb.set_trace() for every crop of every batch, :285.)
- Each chunk, as a (C, 16, 224, 224) float32 tensor, goes through InceptionI3d.extract_features; the row
  is its (1024, 1, 1, 1) output at [:, :, 0, 0, 0] (:184-192). Output `feature` is (crops, rows, 1024)
  (1 crop unless oversample), saved with `frame_cnt` = m (:300-307).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from tests.reference import REPO_ROOT, skip_or_fail

# piergiaj/pytorch-i3d (with Finspire13's feature_extraction/ folder), beside the checkout as in CI.
PYTORCH_I3D_ENV = "PYTORCH_I3D_SRC"
DEFAULT_PYTORCH_I3D = REPO_ROOT.parent / "shared" / "pytorch_i3d"

CHUNK_SIZE = 16  # extract_features.py:167
FRAME_SIZE = (256, 340)  # (H, W) the script asserts (:27-28)
CROP = 224
CENTER = (16, 58)  # top, left of the centre crop (:72, :292)
FLOW_BOUND = 20  # dense_flow build_of.py:48 (-b=20); its CLI default is 15 (extract_flow_gpu.cpp:16)
SAMPLE_MODES = ("center_crop", "resize", "oversample")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, 16, 224, 224) float32 in [-1, 1] -> (B, D) features, e.g. extract_features(x)[:, :, 0, 0, 0]."""


def dense_flow_image(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """One flow component (float, pixels) as dense_flow stores it: 0 below -bound, 255 above +bound, else
    round(255 * (v + bound) / (2 * bound)) (common.cpp:9, cvRound: to nearest, ties to even)."""
    scaled = np.rint(255.0 * (flow.astype(np.float64) + bound) / (2 * bound))
    return np.where(flow > bound, 255, np.where(flow < -bound, 0, scaled)).astype(np.uint8)


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [-1, 1]: x * 2 / 255 - 1 (extract_features.py:33-35)."""
    return image.astype(float) * 2 / 255 - 1


def chunk_starts(frame_cnt: int, frequency: int, chunk_size: int = CHUNK_SIZE) -> list[int]:
    """First image index of each chunk (extract_features.py:237-244); ValueError where the script asserts."""
    if frame_cnt <= chunk_size:
        raise ValueError(f"{frame_cnt} images: the script needs more than {chunk_size} (assert at :237)")
    last = (frame_cnt - chunk_size) // frequency * frequency
    return list(range(0, last + 1, frequency))


def load_image(image: np.ndarray, resize: bool) -> np.ndarray:
    """One decoded 256 x 340 image (H, W, 3 uint8 or H, W uint8) as the script loads it (:23-40)."""
    if image.shape[:2] != FRAME_SIZE:
        raise ValueError(f"image of {image.shape[:2]}, the script asserts {FRAME_SIZE}")
    if resize:
        image = np.array(Image.fromarray(image).resize((CROP, CROP), Image.Resampling.LANCZOS))
    return to_unit_range(image)


def crops(chunk: np.ndarray, sample_mode: str) -> list[np.ndarray]:
    """(T, H, W, C) -> the crops the sample mode feeds the network, each (T, 224, 224, C) (:66-83, :291-292)."""
    if sample_mode == "resize":
        return [chunk]
    top, left = CENTER
    centre = chunk[:, top : top + CROP, left : left + CROP]
    if sample_mode == "center_crop":
        return [centre]
    if sample_mode != "oversample":
        raise ValueError(f"sample_mode {sample_mode!r}: one of {SAMPLE_MODES}")
    out = []
    for frames in (chunk, chunk[:, :, ::-1]):  # the flip: W reversed, values untouched (flow x too)
        out += [
            frames[:, :CROP, :CROP],
            frames[:, :CROP, -CROP:],
            frames[:, top : top + CROP, left : left + CROP],
            frames[:, -CROP:, :CROP],
            frames[:, -CROP:, -CROP:],
        ]
    return out


def extract(
    images: Sequence[np.ndarray],
    features: FeatureFn,
    *,
    sample_mode: str,
    frequency: int,
    flow_y: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """The script's `feature` array, (crops, rows, D), from decoded images in name order.

    RGB: `images` are (256, 340, 3) uint8 frames. Flow: `images` are the flow_x images and `flow_y` the
    flow_y ones, each (256, 340) uint8, stacked as channels (x, y) (:133-137).
    """
    resize = sample_mode == "resize"
    rows: list[list[np.ndarray]] = []
    for start in chunk_starts(len(images), frequency):
        index = range(start, start + CHUNK_SIZE)
        if flow_y is None:
            chunk = np.stack([load_image(images[i], resize) for i in index])
        else:
            chunk = np.stack(
                [np.stack([load_image(images[i], resize), load_image(flow_y[i], resize)], -1) for i in index]
            )
        batch = [
            torch.from_numpy(np.ascontiguousarray(c)).permute(3, 0, 1, 2).float()
            for c in crops(chunk, sample_mode)
        ]
        with torch.no_grad():
            out = features(torch.stack(batch))
        rows.append([row.numpy() for row in out])
    return np.stack([np.stack([row[c] for row in rows]) for c in range(len(rows[0]))])


def pytorch_i3d_source() -> Path:
    """$PYTORCH_I3D_SRC, else ../shared/pytorch_i3d; skip (fail under CI=true) when pytorch_i3d.py is absent."""
    configured = os.environ.get(PYTORCH_I3D_ENV)
    source = Path(configured).expanduser() if configured else DEFAULT_PYTORCH_I3D
    if not (source / "pytorch_i3d.py").is_file():
        skip_or_fail(f"pytorch-i3d reference not found at {source} (set ${PYTORCH_I3D_ENV})")
    return source


def import_file(name: str, path: Path) -> ModuleType:
    """Import a reference source file as module `name` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        skip_or_fail(f"cannot import {path}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        skip_or_fail(f"reference {path} does not import: {type(exc).__name__}: {exc}")
    return module


def pytorch_i3d() -> ModuleType:
    """piergiaj's pytorch_i3d.py (InceptionI3d), imported from the reference checkout."""
    name = "piergiaj_pytorch_i3d"
    return sys.modules.get(name) or import_file(name, pytorch_i3d_source() / "pytorch_i3d.py")

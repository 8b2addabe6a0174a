"""Test-side references for the VideoMAE family: VideoMAE V2's own model file, and the algorithm of its
TAD feature script, for comparisons with our models and (later) our end-to-end extraction.

`import_finetune_reference()` imports `models/modeling_finetune.py` of OpenGVLab/VideoMAEv2 (at
$VIDEOMAEV2_SRC, by default ../shared/videomaev2 beside the repository). That file imports timm (the
test-only `timm==1.0.31`, installed with --no-deps); timm imports torchvision, which does not import beside
our CPU torch build: while the reference is imported, an import hook stands in for `torchvision` with
placeholder modules (nothing of torchvision runs; the ViT uses only timm's trunc_normal_, to_2tuple,
drop_path and register_model). The stand-ins are removed again once the import is done.

`tad_features(frames, model, data_set)` reproduces `extract_tad_feature.py` (commit 29eab1e), written from
its algorithm:
  - frames: every decoded frame of the video (decord `VideoReader(path, num_threads=1, ctx=cpu(0))`,
    dataset/loader.py:26), RGB uint8 (T, H, W, 3);
  - windows of 16 consecutive frames (`vr.get_batch(np.arange(start_idx, start_idx + 16))`, line 150)
    starting at `range(0, num_frames - 15, 4)` for THUMOS14 (line 92) and `range(0, num_frames - 15, 16)`
    for FineAction (line 95): only whole windows; a video of < 16 frames gives none (their np.vstack of
    an empty list then raises);
  - transform (lines 111-113): `ToFloatTensorInZeroOne` = `vid.permute(3, 0, 1, 2).to(torch.float32) /
    255` (line 17: (T, H, W, C) -> (C, T, H, W), values in [0, 1]) then `Resize((224, 224))` =
    `F.interpolate(vid, size=(224, 224), scale_factor=None, mode='bilinear', align_corners=False)`
    (lines 23-35) on that 4-D tensor: C is the batch, T the channels, H x W resized to 224 x 224 without
    keeping the aspect ratio, no crop, no antialiasing;
  - no mean / std normalisation (unlike fine-tuning, which used ImageNet's);
  - `model.forward_features(frame_q.unsqueeze(0))` (line 156) on (1, 3, 16, 224, 224) in fp32, eval mode,
    no_grad: one row per window; `np.vstack` of the rows (line 160). The model: `vit_giant_patch14_224`,
    img_size=224, num_classes=710, all_frames=16, tubelet_size=2, use_mean_pooling=True (lines 120-128),
    strictly loaded from vit_g_hybrid_pt_1200e_k710_ft.pth (lines 129-134).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tests.reference import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parent.parent
VIDEOMAEV2_ENV = "VIDEOMAEV2_SRC"
DEFAULT_VIDEOMAEV2 = REPO_ROOT.parent / "shared" / "videomaev2"
_MODULE_NAME = "videomaev2_modeling_finetune"

TAD_WINDOW = 16
TAD_SIZE = 224
TAD_STRIDE = {"THUMOS14": 4, "FINEACTION": 16}


# --------------------------------------------------------------------------- the model reference


class _PlaceholderType(type):
    """A stand-in class whose every attribute is another distinct stand-in class (enum-like members)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        member = _PlaceholderType(name, (), {})
        type.__setattr__(cls, name, member)
        return member


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        member = _PlaceholderType(name, (), {})
        setattr(self, name, member)
        return member


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every `torchvision[.x]` import with a placeholder package."""

    def find_spec(
        self, name: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.ops.misc")
    except Exception:  # absent, or a wheel built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def videomaev2_source() -> Path:
    """$VIDEOMAEV2_SRC, else ../shared/videomaev2 beside the repository; skip (fail under CI) if absent."""
    configured = os.environ.get(VIDEOMAEV2_ENV)
    source = Path(configured).expanduser() if configured else DEFAULT_VIDEOMAEV2
    if not (source / "models" / "modeling_finetune.py").is_file():
        skip_or_fail(f"VideoMAE V2 reference not found at {source} (set ${VIDEOMAEV2_ENV})")
    return source


def import_finetune_reference() -> types.ModuleType:
    """Their modeling_finetune module (imported once); skip (fail under CI) when it cannot be imported."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    path = videomaev2_source() / "models" / "modeling_finetune.py"
    stand_in = None if _torchvision_importable() else _TorchvisionStandIn()
    if stand_in is not None:
        sys.meta_path.insert(0, stand_in)
    try:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module  # timm's register_model looks the module up there
        spec.loader.exec_module(module)
    except Exception as exc:  # any import-time failure means "no reference here"
        sys.modules.pop(_MODULE_NAME, None)
        skip_or_fail(f"VideoMAE V2 modeling_finetune.py not importable: {type(exc).__name__}: {exc}")
    finally:
        if stand_in is not None:
            sys.meta_path.remove(stand_in)
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
    return module


def builder_arguments(builder_name: str) -> dict[str, Any]:
    """The keyword arguments their registered builder (e.g. 'vit_giant_patch14_224') passes to
    VisionTransformer, recorded without building the (possibly 1B-parameter) model."""
    ref = import_finetune_reference()
    recorded: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **kwargs: Any) -> None:
            recorded.update(kwargs)

    original = ref.VisionTransformer
    ref.VisionTransformer = Recorder
    try:
        getattr(ref, builder_name)()
    finally:
        ref.VisionTransformer = original
    return recorded


# --------------------------------------------------------------------------- the TAD extraction algorithm


def tad_windows(num_frames: int, data_set: str) -> range:
    """Start frames of their windows: range(0, num_frames - 15, stride), stride 4 (THUMOS14) / 16 (FineAction)."""
    return range(0, num_frames - (TAD_WINDOW - 1), TAD_STRIDE[data_set])


def tad_clip(frames: Sequence[np.ndarray], start: int) -> torch.Tensor:
    """Their input for the window at `start`: (1, 3, 16, 224, 224) float32 in [0, 1], squashed to 224."""
    window = torch.from_numpy(np.stack(frames[start : start + TAD_WINDOW]))  # (16, H, W, 3) uint8
    vid = window.permute(3, 0, 1, 2).to(torch.float32) / 255  # (3, 16, H, W)
    vid = F.interpolate(
        vid, size=(TAD_SIZE, TAD_SIZE), scale_factor=None, mode="bilinear", align_corners=False
    )
    return vid.unsqueeze(0)


def tad_features(
    frames: Sequence[np.ndarray], model: Callable[[torch.Tensor], torch.Tensor], data_set: str = "THUMOS14"
) -> np.ndarray:
    """Rows (windows, C) as extract_tad_feature.py computes them; `model` is their forward_features."""
    rows = []
    for start in tad_windows(len(frames), data_set):
        with torch.no_grad():
            rows.append(model(tad_clip(frames, start)).cpu().numpy())
    return np.vstack(rows)

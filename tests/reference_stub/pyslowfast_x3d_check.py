"""Compare our X3D models with PySlowFast master's X3D (slowfast==1.0 predates X3D).

Usage: python pyslowfast_x3d_check.py /path/to/pyslowfast [name[@crop] ...] -> one JSON line per run.
Each model is built from PySlowFast's own configs/Kinetics/X3D_<size>.yaml (train crop, frames, widths)
and run at our registered test crop unless `@crop` names another. Run in a subprocess only: PySlowFast's
optional dependencies (pytorchvideo, torchvision, ...) are replaced by empty stand-in modules for the
whole interpreter.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

STUBBED = (
    "pytorchvideo",
    "fairscale",
    "detectron2",
    "torchvision",
    "simplejson",
    "psutil",
    "pandas",
    "scipy",
    "sklearn",
    "einops",
    "timm",
    "tensorboard",
    "av",
    "cv2",
    "matplotlib",
)

DEFAULT_RUNS = ("x3d_xs@160", "x3d_xs", "x3d_s", "x3d_m", "x3d_l")


class Swish(nn.Module):
    """x * sigmoid(x) (the one stand-in X3D actually runs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return Swish if name == "Swish" else type(name, (nn.Module,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, name: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def compare(source: Path, run: str) -> dict[str, Any]:
    """Their X3D from their config vs ours from the registry, on the same random weights and clip."""
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import X3D as TheirX3D

    from pipeline.models import build_model, get_spec
    from tests.reference import randomize_  # type: ignore[import-not-found]

    name, _, crop_text = run.partition("@")
    spec = get_spec(name)
    cfg = get_cfg()
    cfg.merge_from_file(str(source / "configs" / "Kinetics" / f"X3D_{name.split('_')[1].upper()}.yaml"))
    cfg.NUM_GPUS = 0
    crop = int(crop_text) if crop_text else spec.crop_size
    theirs = randomize_(TheirX3D(cfg).eval(), seed=1)
    seen: dict[str, torch.Tensor] = {}
    theirs.head.projection.register_forward_hook(
        lambda _m, a, o: seen.update(proj_in=a[0].detach().clone(), proj_out=o.detach().clone())
    )
    theirs.head.conv_5_relu.register_forward_hook(
        lambda _m, _a, o: seen.update(conv5=o.mean((2, 3, 4)).detach().clone())
    )
    clips = torch.randn(1, 3, spec.num_frames, crop, crop, generator=torch.Generator().manual_seed(7))
    ours = build_model(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours_c5 = build_model(name, feature_layer="conv_5")
    ours_c5.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        probabilities = theirs([clips])
        lin5 = ours(clips)
        logits = ours.logits(lin5)
        conv5 = ours_c5(clips)
    positions = seen["proj_in"].shape[1:4]  # (N, T', H', W', C) after their permute
    return {
        "config": {
            "num_frames": cfg.DATA.NUM_FRAMES,
            "sampling_rate": cfg.DATA.SAMPLING_RATE,
            "train_crop": cfg.DATA.TRAIN_CROP_SIZE,
            "test_crop": cfg.DATA.TEST_CROP_SIZE,
            "depth_factor": cfg.X3D.DEPTH_FACTOR,
        },
        "crop": crop,
        "positions": [int(n) for n in positions],
        "lin_5": relative_error(lin5, seen["proj_in"].mean((1, 2, 3))),
        "logits": relative_error(logits, seen["proj_out"].mean((1, 2, 3))),
        "conv_5": relative_error(conv5, seen["conv5"]),
        # Their eval output averages softmax over positions; softmax of our mean logits is close, not equal.
        "softmax_of_mean_logits": relative_error(torch.softmax(logits, dim=1), probabilities),
    }


def enter_reference(source: str) -> None:
    """Make PySlowFast master at `source` importable (with the stand-ins), and our repo and its tests."""
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, source)
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(repo / "tests"))


def main(source: str, runs: list[str]) -> None:
    enter_reference(source)
    torch.manual_seed(0)
    for run in runs or DEFAULT_RUNS:
        print(json.dumps({"run": run, **compare(Path(source), run)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

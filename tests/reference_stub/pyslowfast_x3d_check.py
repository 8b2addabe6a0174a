"""Compare our X3D with the X3D of a PySlowFast source checkout (slowfast==1.0 predates X3D).

Usage: python pyslowfast_x3d_check.py /path/to/SlowFast-checkout  -> one JSON line of relative errors.
Run in a subprocess only: PySlowFast's optional dependencies (pytorchvideo, torchvision, ...) are replaced
by empty stand-in modules for the whole interpreter.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path

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


def main(source: str) -> None:
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, source)
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(repo / "tests"))
    from reference import randomize_  # type: ignore[import-not-found]
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import X3D as TheirX3D

    from pipeline.models import build_model

    torch.manual_seed(0)
    results = {}
    for name, depth_factor in (("x3d_xs", 2.2), ("x3d_l", 5.0)):
        cfg = get_cfg()
        cfg.NUM_GPUS = 0
        cfg.MODEL.ARCH, cfg.MODEL.MODEL_NAME = "x3d", "X3D"
        cfg.RESNET.TRANS_FUNC = "x3d_transform"
        cfg.X3D.WIDTH_FACTOR, cfg.X3D.DEPTH_FACTOR, cfg.X3D.BOTTLENECK_FACTOR = 2.0, depth_factor, 2.25
        cfg.X3D.DIM_C5, cfg.X3D.DIM_C1 = 2048, 12
        cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.INPUT_CHANNEL_NUM = 4, 96, [3]
        theirs = randomize_(TheirX3D(cfg).eval(), seed=1)
        seen: dict[str, torch.Tensor] = {}
        theirs.head.projection.register_forward_hook(
            lambda _m, a, o, seen=seen: seen.update(lin5=a[0].flatten(1), logits=o.flatten(1))
        )
        theirs.head.conv_5_relu.register_forward_hook(
            lambda _m, _a, o, seen=seen: seen.update(conv5=o.mean((2, 3, 4)))
        )
        clips = torch.randn(2, 3, 4, 96, 96)
        ours = build_model(name)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        ours_c5 = build_model(name, feature_layer="conv_5")
        ours_c5.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            theirs([clips])
            lin5 = ours(clips)
            results[name] = {
                "lin_5": relative_error(lin5, seen["lin5"]),
                "conv_5": relative_error(ours_c5(clips), seen["conv5"]),
                "logits": relative_error(ours.logits(lin5), seen["logits"]),
            }
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])

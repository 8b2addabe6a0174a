"""Compare our SlowFast zoo entries with PySlowFast master's SlowFast built from its own config files.

Usage: python pyslowfast_slowfast_check.py /path/to/pyslowfast -> one JSON line per entry.
Each entry's config (configs/SSv2, Charades, Kinetics, AVA/c2) is merged as PySlowFast would; only the
clip is reduced (T=16, 64x64). Standard configs get TRAIN_CROP_SIZE=64 so their head pools the whole map;
multigrid configs keep theirs (PySlowFast pools them globally). The AVA configs name the Kinetics-600
pre-training: the detection head is turned off, 600 classes and Kinetics strides (res5 stride 2, no
dilation) and non-local pooling restored. Run in a subprocess only (stand-in modules, as the X3D check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from pyslowfast_x3d_check import enter_reference, relative_error  # type: ignore[import-not-found]

ENTRIES = {
    "slowfast_r50_16x8_ssv2": "SSv2/SLOWFAST_16x8_R50.yaml",
    "slowfast_r50_16x8_ssv2_multigrid": "SSv2/SLOWFAST_16x8_R50_multigrid.yaml",
    "slowfast_r50_16x8_charades": "Charades/SLOWFAST_16x8_R50.yaml",
    "slowfast_r50_8x8_stepwise_multigrid": "Kinetics/SLOWFAST_8x8_R50_stepwise_multigrid.yaml",
    "slowfast_r101_nl_8x8_k600": "AVA/c2/SLOWFAST_32x2_R101_50_50.yaml",
}
FRAMES, CROP = 16, 64


def compare(source: Path, name: str) -> dict[str, Any]:
    """Their SlowFast from the config vs ours from the registry, same random weights and clip."""
    from slowfast.config.defaults import get_cfg
    from slowfast.models.video_model_builder import SlowFast as TheirSlowFast

    from pipeline.models import build_model
    from tests.reference import randomize_  # type: ignore[import-not-found]

    cfg = get_cfg()
    cfg.merge_from_file(str(source / "configs" / ENTRIES[name]))
    cfg.NUM_GPUS = 0
    cfg.BN.NORM_TYPE = "batchnorm"  # sync_batchnorm (SSv2, Charades) is the same layer in eval, same keys
    cfg.DATA.NUM_FRAMES = FRAMES
    if not cfg.MULTIGRID.SHORT_CYCLE:
        cfg.DATA.TRAIN_CROP_SIZE = CROP
    if cfg.DETECTION.ENABLE:  # the AVA fine-tuning config around the Kinetics-600 backbone
        cfg.DETECTION.ENABLE = False
        cfg.MODEL.NUM_CLASSES = 600
        cfg.MODEL.HEAD_ACT = "softmax"
        cfg.RESNET.SPATIAL_STRIDES = [[1, 1], [2, 2], [2, 2], [2, 2]]
        cfg.RESNET.SPATIAL_DILATIONS = [[1, 1]] * 4
        cfg.NONLOCAL.POOL = [[[1, 2, 2], [1, 2, 2]]] * 4
    theirs = randomize_(TheirSlowFast(cfg).eval(), seed=1)
    with torch.no_grad():  # random dot-product attention explodes (1e33 after 3 blocks): damp it
        for module_name, module in theirs.named_modules():
            if "nonlocal" in module_name and hasattr(module, "conv_theta"):
                module.conv_theta.weight.mul_(0.05)
                module.conv_phi.weight.mul_(0.05)
    seen: dict[str, torch.Tensor] = {}
    theirs.head.projection.register_forward_hook(
        lambda _m, a, o: seen.update(features=a[0].detach().clone(), logits=o.detach().clone())
    )
    ours = build_model(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    clips = torch.randn(2, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(7))
    inputs = ours.pathways(clips)
    with torch.no_grad():
        theirs([t.clone() for t in inputs])
        features = ours.forward_features(inputs)
        logits = ours.logits(features)
    assert isinstance(logits, torch.Tensor)
    return {
        "num_classes": int(cfg.MODEL.NUM_CLASSES),
        "keys": len(theirs.state_dict()),
        "positions": [int(n) for n in seen["features"].shape[1:4]],
        "features": relative_error(features, seen["features"].mean((1, 2, 3))),
        "logits": relative_error(logits, seen["logits"].mean((1, 2, 3))),
        "between_clips": relative_error(features[0], features[1]),
    }


def main(source: str, names: list[str]) -> None:
    enter_reference(source)
    torch.manual_seed(0)
    for name in names or ENTRIES:
        print(json.dumps({"name": name, **compare(Path(source), name)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

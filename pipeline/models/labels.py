"""Class-name lists shipped in pipeline/assets (e.g. kinetics400_labels.txt), and a video's top classes
from its logits (what the sidecars record and `python -m pipeline.inspect --top5` prints)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from pipeline.models.registry import get_spec


class UnknownLabelsError(LookupError):
    """No label asset with that name."""


@lru_cache(maxsize=8)
def load_labels(name: str) -> tuple[str, ...]:
    """Class names of label set `name` (asset `<name>_labels.txt`), in class-index order."""
    asset = resources.files("pipeline").joinpath("assets", f"{name}_labels.txt")
    if not asset.is_file():
        raise UnknownLabelsError(f"label set {name!r}: no asset pipeline/assets/{name}_labels.txt")
    lines = asset.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def class_names(model_name: str) -> tuple[str, ...] | None:
    """Class names of a model's classifier, when the package ships them (KeyError: no such model)."""
    labels = get_spec(model_name).labels
    return load_labels(labels) if labels else None


def top_classes(logits: np.ndarray, names: tuple[str, ...] | None, k: int = 5) -> list[list[Any]]:
    """The video's top-k classes by mean softmax over rows (and crops): [[index, name, probability], ...]."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    flat = np.exp(flat - flat.max(axis=1, keepdims=True))
    mean = (flat / flat.sum(axis=1, keepdims=True)).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:k]
    return [[int(i), names[i] if names and i < len(names) else None, round(float(mean[i]), 6)] for i in best]

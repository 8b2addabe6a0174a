"""Class-name lists shipped in pipeline/assets (e.g. kinetics400_labels.txt)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


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

"""The model registry, the mechanism only: architectures (arch name -> builder) and models (name -> spec).

Each family file (`resnet3d.py`, `x3d.py`, `mvit.py`, ...) registers its own architectures and zoo
entries when it is imported; `pipeline.models` imports every family, so any import of the package sees
them all (as timm does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.models.base import VideoModel
from pipeline.models.spec import ModelSpec

__all__ = [
    "ModelSpec",
    "build_model",
    "get_spec",
    "list_archs",
    "list_models",
    "native_input",
    "register_arch",
    "register_model",
]

Builder = Callable[[ModelSpec, str | None], VideoModel]
"""builder(spec, feature_layer) -> the model, randomly initialised."""

_ARCHS: dict[str, Builder] = {}
_REGISTRY: dict[str, ModelSpec] = {}


def register_arch(arch: str, builder: Builder) -> None:
    """Name an architecture (`spec.arch`) and the builder of its models; ValueError on a duplicate."""
    if arch in _ARCHS:
        raise ValueError(f"arch {arch!r} is already registered")
    _ARCHS[arch] = builder


def list_archs() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_ARCHS)


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a spec; raises ValueError on a duplicate name or an unknown arch."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.arch not in _ARCHS:
        raise ValueError(f"model {spec.name!r}: unknown arch {spec.arch!r}; known: {list_archs()}")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The registered spec; KeyError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def native_input(name: str) -> tuple[int, int | None, int] | None:
    """(num_frames, sampling_rate, crop) a registered model is limited to, or None when it takes any;
    sampling_rate None when only the frame count and the crop are fixed."""
    spec = _REGISTRY.get(name)
    if spec is None or not spec.native_input:
        return None
    return spec.num_frames, spec.sampling_rate if spec.native_rate else None, spec.crop_size


def build_model(name: str, *, feature_layer: str | None = None, **overrides: object) -> VideoModel:
    """Build a randomly initialised model in eval mode (load weights separately).

    `overrides` whose names are ModelSpec fields replace them (e.g. num_classes=10); any other key is an
    architecture option merged into builder_kwargs (e.g. depth=101).
    """
    spec = get_spec(name)
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)} - {"name", "builder_kwargs"}
    spec_overrides: dict[str, Any] = {k: v for k, v in overrides.items() if k in spec_fields}
    arch_overrides = {k: v for k, v in overrides.items() if k not in spec_fields}
    if "builder_kwargs" in overrides:
        raise ValueError("pass architecture options as keywords, not builder_kwargs=")
    if spec_overrides or arch_overrides:
        spec = dataclasses.replace(
            spec, **spec_overrides, builder_kwargs={**spec.builder_kwargs, **arch_overrides}
        )
    model = _ARCHS[spec.arch](spec, feature_layer)
    return model.eval()

"""Registry of known models: name -> ModelSpec, and build_model(name) -> VideoModel."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.models.base import VideoModel
from pipeline.models.resnet3d import ResNet3D
from pipeline.models.spec import ModelSpec
from pipeline.models.x3d import X3D

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "register_model"]

_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
_X3D_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/x3d_models/"
# EPIC-KITCHENS-100 SlowFast release (epic-kitchens/epic-kitchens-slowfast README), direct-download form.
_EPIC_URL = "https://www.dropbox.com/s/uxb6i2xkn91xqzi/SlowFast.pyth?dl=1"

_BUILDERS: dict[str, Callable[[ModelSpec, str | None], VideoModel]] = {
    "slowfast": ResNet3D,
    "slow": ResNet3D,
    "c2d": ResNet3D,
    "i3d": ResNet3D,
    "x3d": X3D,
}

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a spec; raises ValueError on a duplicate name or an unknown arch."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.arch not in _BUILDERS:
        raise ValueError(f"model {spec.name!r}: unknown arch {spec.arch!r}; known: {sorted(_BUILDERS)}")
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
    model = _BUILDERS[spec.arch](spec, feature_layer)
    return model.eval()


def _slowfast(
    name: str,
    file: str,
    *,
    alpha: int,
    fusion_kernel: int,
    num_frames: int = 32,
    url: str | None = None,
    arch_options: Mapping[str, object] | None = None,
    **spec_fields: Any,
) -> ModelSpec:
    """A SlowFast ResNet spec: tau=2, 256 test crop, beta_inv 8, fusion channel ratio 2."""
    return ModelSpec(
        name=name,
        arch="slowfast",
        num_frames=num_frames,
        sampling_rate=2,
        crop_size=256,
        short_side=256,
        feature_dim=2304,
        alpha=alpha,
        zoo_url=url,
        zoo_filename=file,
        builder_kwargs={
            "depth": 50,
            "beta_inv": 8,
            "fusion_conv_channel_ratio": 2,
            "fusion_kernel": fusion_kernel,
            **(arch_options or {}),
        },
        **spec_fields,
    )


def _resnet(
    name: str, arch: str, file: str, num_frames: int, sampling_rate: int, **builder: object
) -> ModelSpec:
    """A Kinetics-400 single-pathway ResNet-50 spec (Slow, C2D, I3D)."""
    return ModelSpec(
        name=name,
        arch=arch,
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        crop_size=256,
        short_side=256,
        feature_dim=2048,
        zoo_url=_ZOO + file,
        zoo_filename=file,
        builder_kwargs={"depth": 50, **builder},
    )


def _x3d(size: str, num_frames: int, sampling_rate: int, crop: int, depth_factor: float) -> ModelSpec:
    """A Kinetics-400 X3D spec; features from lin_5 (2048) by default, or conv_5 (432)."""
    file = f"x3d_{size}.pyth"
    return ModelSpec(
        name=f"x3d_{size}",
        arch="x3d",
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        crop_size=crop,
        short_side=crop,
        feature_dim=2048,
        zoo_url=_X3D_ZOO + file,
        zoo_filename=file,
        feature_layers=("lin_5", "conv_5"),
        builder_kwargs={"width_factor": 2.0, "depth_factor": depth_factor, "bottleneck_factor": 2.25},
    )


def _register_defaults() -> None:
    """The PySlowFast model zoo models, the EPIC-KITCHENS SlowFast, and two tiny test models."""
    register_model(
        _slowfast(
            "slowfast_r50",
            "SLOWFAST_8x8_R50.pkl",
            alpha=4,
            fusion_kernel=7,
            url=_ZOO + "SLOWFAST_8x8_R50.pkl",
        )
    )
    register_model(
        _slowfast(
            "slowfast_r50_4x16",
            "SLOWFAST_4x16_R50.pkl",
            alpha=8,
            fusion_kernel=5,
            url=_ZOO + "SLOWFAST_4x16_R50.pkl",
        )
    )
    # The R101 Kinetics-400 checkpoints were never published in MODEL_ZOO.md ("coming soon"): no URL.
    register_model(
        _slowfast(
            "slowfast_r101_8x8",
            "SLOWFAST_8x8_R101_101_101.pkl",
            alpha=4,
            fusion_kernel=5,
            arch_options={"depth": 101, "num_block_temp_kernel": ((3, 3), (4, 4), (23, 23), (3, 3))},
        )
    )
    register_model(
        _slowfast(
            "slowfast_r101_16x8",
            "SLOWFAST_16x8_R101_50_50.pkl",
            alpha=4,
            fusion_kernel=5,
            num_frames=64,
            arch_options={"depth": 101, "num_block_temp_kernel": ((3, 3), (4, 4), (6, 6), (3, 3))},
        )
    )
    register_model(
        _slowfast(
            "slowfast_r50_epic",
            "SlowFast.pyth",
            alpha=4,
            fusion_kernel=7,
            url=_EPIC_URL,
            channel_order="bgr",
            num_classes={"verb": 97, "noun": 300},
            labels=None,
        )
    )
    register_model(_resnet("slow_r50_8x8", "slow", "SLOWONLY_8x8_R50.pkl", 8, 8))
    register_model(_resnet("slow_r50_4x16", "slow", "SLOWONLY_4x16_R50.pkl", 4, 16))
    register_model(_resnet("c2d_r50", "c2d", "C2D_NOPOOL_8x8_R50.pkl", 8, 8))
    register_model(_resnet("i3d_r50", "i3d", "I3D_8x8_R50.pkl", 8, 8))
    register_model(
        _resnet(
            "i3d_nln_r50",
            "i3d",
            "I3D_NLN_8x8_R50.pkl",
            8,
            8,
            nonlocal_location=(((),), ((1, 3),), ((1, 3, 5),), ((),)),
            nonlocal_instantiation="softmax",
        )
    )
    register_model(_x3d("xs", 4, 12, 182, 2.2))
    register_model(_x3d("s", 13, 6, 182, 2.2))
    register_model(_x3d("m", 16, 5, 256, 2.2))
    register_model(_x3d("l", 16, 5, 356, 5.0))

    tiny = {"width_per_group": 4, "blocks": (1, 1, 1, 1)}
    register_model(
        ModelSpec(
            name="slowfast_tiny",
            arch="slowfast",
            num_frames=8,
            sampling_rate=1,
            crop_size=64,
            short_side=64,
            feature_dim=144,  # slow 4*32 + fast max(1, 128 // 8)
            alpha=4,
            num_classes=10,
            labels=None,
            builder_kwargs={**tiny, "beta_inv": 8, "fusion_conv_channel_ratio": 2, "fusion_kernel": 5},
        )
    )
    register_model(
        ModelSpec(
            name="slow_tiny",
            arch="slow",
            num_frames=4,
            sampling_rate=2,
            crop_size=64,
            short_side=64,
            feature_dim=128,
            num_classes=10,
            labels=None,
            builder_kwargs=dict(tiny),
        )
    )


# pytorchvideo's model zoo (URLs from pytorchvideo/models/hub/slowfast.py, v0.1.5); its checkpoints use
# pytorchvideo's parameter names, renamed on loading (pipeline/checkpoint.py).
_PYTORCHVIDEO_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/"


def _register_pytorchvideo() -> None:
    """Hub models of released feature sets: the SlowFast R101 8x8 of the Ego4D features."""
    register_model(
        _slowfast(
            "slowfast_r101_pytorchvideo",
            "SLOWFAST_8x8_R101.pyth",
            alpha=4,
            fusion_kernel=5,
            url=_PYTORCHVIDEO_ZOO + "SLOWFAST_8x8_R101.pyth",
            arch_options={"depth": 101, "num_block_temp_kernel": ((3, 3), (4, 4), (23, 23), (3, 3))},
            feature_layers=("pool_7x7", "pool"),
        )
    )


_register_defaults()
_register_pytorchvideo()

"""Registry of known models: name -> ModelSpec, and build_model(name) -> VideoModel."""

from __future__ import annotations

import dataclasses
import math
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
# MODEL_ZOO.md "Multigrid Training" (SSv2, Charades, Kinetics stepwise) and "AVA" (Kinetics-600 pre-training).
_MULTIGRID_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/pyslowfast/model_zoo/multigrid/model_zoo/"
_AVA_PRETRAIN_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/ava/pretrain/"
# RESNET.NUM_BLOCK_TEMP_KERNEL of the R50 configs and the "R101_50_50" ones (R50's temporal kernels).
_TEMP_KERNEL_50 = ((3, 3), (4, 4), (6, 6), (3, 3))

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
    """A SlowFast ResNet spec: tau=2, 256 test crop (unless given), beta_inv 8, fusion channel ratio 2."""
    spec_fields = {"crop_size": 256, "short_side": 256, **spec_fields}
    return ModelSpec(
        name=name,
        arch="slowfast",
        num_frames=num_frames,
        sampling_rate=2,
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


def _x3d(
    size: str, num_frames: int, sampling_rate: int, crop: int, train_crop: int, depth_factor: float
) -> ModelSpec:
    """A Kinetics-400 X3D spec; features from lin_5 (2048) by default, or conv_5 (432).

    The head pools with PySlowFast's kernel (num_frames, ceil(train_crop / 32) x2), so the test crop
    (larger) leaves several positions that lin_5 sees one by one.
    """
    file = f"x3d_{size}.pyth"
    spatial_kernel = math.ceil(train_crop / 32)
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
        builder_kwargs={
            "width_factor": 2.0,
            "depth_factor": depth_factor,
            "bottleneck_factor": 2.25,
            "head_pool": (num_frames, spatial_kernel, spatial_kernel),
        },
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
    register_model(_x3d("xs", 4, 12, 182, 160, 2.2))
    register_model(_x3d("s", 13, 6, 182, 160, 2.2))
    register_model(_x3d("m", 16, 5, 256, 224, 2.2))
    register_model(_x3d("l", 16, 5, 356, 312, 5.0))

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


def _register_dataset_zoo() -> None:
    """SlowFast checkpoints of PySlowFast's zoo trained beyond Kinetics-400's 2019 release.

    Settings from configs/SSv2, configs/Charades, configs/Kinetics/SLOWFAST_8x8_R50_stepwise*.yaml and
    configs/AVA/c2 (whose CHECKPOINT_FILE_PATH takes the Kinetics-600 pre-training). SSv2 and Charades set
    DATA.REVERSE_INPUT_CHANNEL (BGR input); the SSv2 and Kinetics multigrid configs test at 224, the
    others at 256.
    """
    for dataset, classes, head_act in (("ssv2", 174, "softmax"), ("charades", 157, "sigmoid")):
        for multigrid in (False, True):
            file = "SLOWFAST_16x8_R50_multigrid.pkl" if multigrid else "SLOWFAST_16x8_R50.pkl"
            crop = 224 if multigrid and dataset == "ssv2" else 256
            folder = "SSv2" if dataset == "ssv2" else "Charades"
            register_model(
                _slowfast(
                    f"slowfast_r50_16x8_{dataset}" + ("_multigrid" if multigrid else ""),
                    file,
                    alpha=4,
                    fusion_kernel=7,
                    num_frames=64,
                    url=f"{_MULTIGRID_ZOO}{folder}/{file}",
                    channel_order="bgr",
                    num_classes=classes,
                    labels=None,
                    head_act=head_act,
                    crop_size=crop,
                    short_side=crop,
                )
            )
    for multigrid in (False, True):
        file = "SLOWFAST_8x8_R50_stepwise" + ("_multigrid" if multigrid else "") + ".pkl"
        crop = 224 if multigrid else 256
        register_model(
            _slowfast(
                "slowfast_r50_8x8_stepwise" + ("_multigrid" if multigrid else ""),
                file,
                alpha=4,
                fusion_kernel=7,
                url=f"{_MULTIGRID_ZOO}Kinetics/{file}",
                crop_size=crop,
                short_side=crop,
            )
        )
    # Kinetics-600 SlowFast R101 + non-local (res4 blocks 6, 13, 20 of the slow pathway, dot product),
    # R50 temporal kernels ("R101_50_50"), fusion kernel 5: the AVA configs' backbone at Kinetics strides.
    k600_r101 = {
        "depth": 101,
        "num_block_temp_kernel": _TEMP_KERNEL_50,
        "nonlocal_location": (((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
        "nonlocal_instantiation": "dot_product",
    }
    for name, file, num_frames in (
        ("slowfast_r101_nl_8x8_k600", "SLOWFAST_32x2_R101_50_50.pkl", 32),
        ("slowfast_r101_nl_8x8_k600_v2_1", "SLOWFAST_32x2_R101_50_50_v2.1.pkl", 32),
        ("slowfast_r101_nl_16x8_k600", "SLOWFAST_64x2_R101_50_50.pkl", 64),
    ):
        register_model(
            _slowfast(
                name,
                file,
                alpha=4,
                fusion_kernel=5,
                num_frames=num_frames,
                url=_AVA_PRETRAIN_ZOO + file,
                arch_options=k600_r101,
                num_classes=600,
                labels=None,
            )
        )


_register_defaults()
_register_dataset_zoo()

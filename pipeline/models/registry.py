"""Registry of known models: name -> ModelSpec, and build_model(name) -> VideoModel."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.models.base import VideoModel
from pipeline.models.mvit import MViT
from pipeline.models.resnet3d import ResNet3D
from pipeline.models.spec import ModelSpec
from pipeline.models.x3d import X3D, round_width

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
    "mvit": MViT,
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


# --------------------------------------------------------------------------- MViT family (transformers)

_MVIT_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def native_input(name: str) -> tuple[int, int, int] | None:
    """(num_frames, sampling_rate, crop) a registered model is limited to, or None when it takes any."""
    spec = _REGISTRY.get(name)
    if spec is None or not spec.native_input:
        return None
    return spec.num_frames, spec.sampling_rate, spec.crop_size


def _stage_muls(*layers: int) -> dict[str, Any]:
    """dim_mul and head_mul of 2.0 at the first layer of each later stage."""
    pairs = tuple((layer, 2.0) for layer in layers)
    return {"dim_mul": pairs, "head_mul": pairs}


def _q_strides(depth: int, *layers: int, every_layer: bool) -> tuple[tuple[int, int, int, int], ...]:
    """POOL_Q_STRIDE rows: (1, 2, 2) at the stage starts; MViTv2 lists every other layer with (1, 1, 1)."""
    rows = [(i, 1, 2, 2) if i in layers else (i, 1, 1, 1) for i in range(depth)]
    return tuple(row for row in rows if every_layer or row[0] in layers)


_MVIT_COMMON: dict[str, Any] = {"embed_dim": 96, "num_heads": 1, "pool_kv_stride_adaptive": (1, 8, 8)}
_MVITV1: dict[str, Any] = {**_MVIT_COMMON, "sep_pos_embed": True}
_MVITV2: dict[str, Any] = {
    **_MVIT_COMMON,
    "use_abs_pos": False,
    "rel_pos_spatial": True,
    "rel_pos_temporal": True,
    "pool_kvq_kernel": (3, 3, 3),
    "residual_pooling": True,
    "dim_mul_in_att": True,
}


def _mvit(
    name: str,
    num_frames: int,
    sampling_rate: int,
    crop: int,
    feature_dim: int,
    builder: dict[str, Any],
    **spec_fields: Any,
) -> ModelSpec:
    """An MViT-family spec: test short side = crop (PySlowFast's multi-view test), native input only."""
    return ModelSpec(
        name=name,
        arch="mvit",
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        crop_size=crop,
        short_side=crop,
        feature_dim=feature_dim,
        feature_layers=("norm",),
        native_input=True,
        builder_kwargs=builder,
        **spec_fields,
    )


def _mvitv2(size: str, dataset: str) -> ModelSpec:
    """MViTv2 S-16x4 / B-32x3 / L-40x3 from configs/{Kinetics,SSv2}/MVITv2_*.yaml (SSv2: 174 classes)."""
    depth, stages, frames, crop, extra = {
        "s": (16, (1, 3, 14), 16, 224, {}),
        "b": (24, (2, 5, 21), 32, 224, {}),
        "l": (48, (2, 8, 44), 40, 312, {"embed_dim": 144, "num_heads": 2}),
    }[size]
    files = {
        ("s", "k400"): "MViTv2_S_16x4_k400_f302660347.pyth",
        ("b", "k400"): "MViTv2_B_32x3_k400_f304025456.pyth",
        ("l", "k400"): "MViTv2_L_40x3_k400_f306903192.pyth",
        ("s", "ssv2"): "MViTv2_S_16x4_ssv2_f308341823.pyth",
        ("b", "ssv2"): "MViTv2_B_32x3_ssv2_f305803282.pyth",
        ("l", "ssv2"): "MViTv2_L_40x3_ssv2_f309603968.pyth",
    }
    file = files[(size, dataset)]
    tau = 4 if size == "s" else 3
    norm = {"mean": _IMAGENET_MEAN, "std": _IMAGENET_STD} if size == "l" else {}
    # SSv2 frames are JPEGs decoded by cv2 (BGR) and flipped by REVERSE_INPUT_CHANNEL: the model sees RGB.
    # PySlowFast's SSv2 loader spreads NUM_FRAMES over the whole video; T x tau here is the yaml's.
    labels = {"num_classes": 174, "labels": None} if dataset == "ssv2" else {}
    builder = {
        **_MVITV2,
        "depth": depth,
        **_stage_muls(*stages),
        "pool_q_stride": _q_strides(depth, *stages, every_layer=True),
        **extra,
    }
    return _mvit(
        f"mvitv2_{size}_{frames}x{tau}" + ("_ssv2" if dataset == "ssv2" else ""),
        frames,
        tau,
        crop,
        round_width(builder["embed_dim"], 8.0),
        builder,
        zoo_url=_MVIT_ZOO + "mvitv2/pysf_video_models/" + file,
        zoo_filename=file,
        **norm,
        **labels,
    )


def _register_mvit() -> None:
    """PySlowFast's MViTv1, MViTv2 and Rev-MViT zoo models, and three tiny test models."""
    # MViTv1 B-16x4 (configs/Kinetics/MVIT_B_16x4_CONV.yaml); the zoo file is on Google Drive.
    register_model(
        _mvit(
            "mvit_b_16x4",
            16,
            4,
            224,
            768,
            {
                **_MVITV1,
                "depth": 16,
                **_stage_muls(1, 3, 14),
                "pool_kvq_kernel": (3, 3, 3),
                "pool_q_stride": _q_strides(16, 1, 3, 14, every_layer=False),
            },
            zoo_url="https://drive.google.com/file/d/194gJinVejq6A1FmySNKQ8vAN5-FOY-QL/view?usp=sharing",
            zoo_filename="MVIT_B_16x4_CONV.pyth",
            zoo_manual=True,
        )
    )
    # MViTv1 B-32x3 (configs/Kinetics/MVIT_B_32x3_CONV.yaml: 24 layers, pooling kernels from the strides).
    b32 = {
        **_MVITV1,
        "depth": 24,
        **_stage_muls(2, 5, 21),
        "pool_q_stride": _q_strides(24, 2, 5, 21, every_layer=False),
    }
    for suffix, classes, labels in (("", 400, "kinetics400"), ("_k600", 600, None)):
        register_model(
            _mvit(
                f"mvit_b_32x3{suffix}",
                32,
                3,
                224,
                768,
                dict(b32),
                num_classes=classes,
                labels=labels,
                zoo_url=_MVIT_ZOO + f"mvit/k{classes}.pyth",
                zoo_filename=f"k{classes}.pyth",
            )
        )
    for dataset in ("k400", "ssv2"):
        for size in ("s", "b", "l"):
            register_model(_mvitv2(size, dataset))
    # Rev-MViT B-16x4 (configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml). That yaml sets CLS_EMBED_ON: True, but
    # PySlowFast's MViT asserts no cls token with REV.ENABLE: the model it builds has none.
    register_model(
        _mvit(
            "rev_mvit_b_16x4",
            16,
            4,
            224,
            1536,
            {
                **_MVITV1,
                "depth": 16,
                "qkv_bias": False,
                "cls_embed_on": False,
                **_stage_muls(1, 3, 14),
                "pool_kvq_kernel": (3, 3, 3),
                "pool_q_stride": _q_strides(16, 1, 3, 14, every_layer=False),
                "rev": True,
                "rev_respath_fuse": "concat",
                "rev_buffer_layers": (1, 3, 14),
                "rev_res_path": "conv",
                "rev_pre_q_fusion": "avg",
            },
            zoo_url="https://dl.fbaipublicfiles.com/pyslowfast/rev/REV_MVIT_B_16x4.pyth",
            zoo_filename="REV_MVIT_B_16x4.pyth",
        )
    )

    tiny: dict[str, Any] = {
        "embed_dim": 16,
        "num_heads": 1,
        "depth": 3,
        **_stage_muls(1),
        "pool_kvq_kernel": (3, 3, 3),
        "pool_kv_stride_adaptive": (1, 4, 4),
    }
    tiny_spec = {"num_classes": 10, "labels": None}
    register_model(
        _mvit(
            "mvitv1_tiny",
            4,
            2,
            32,
            32,
            {**tiny, "sep_pos_embed": True, "pool_q_stride": _q_strides(3, 1, every_layer=False)},
            **tiny_spec,
        )
    )
    register_model(
        _mvit(
            "mvitv2_tiny",
            4,
            2,
            32,
            32,
            {**_MVITV2, **tiny, "pool_q_stride": _q_strides(3, 1, every_layer=True)},
            **tiny_spec,
        )
    )
    register_model(
        _mvit(
            "rev_mvit_tiny",
            4,
            2,
            32,
            64,
            {
                **tiny,
                "sep_pos_embed": True,
                "cls_embed_on": False,
                "pool_q_stride": _q_strides(3, 1, every_layer=False),
                "rev": True,
                "rev_buffer_layers": (1,),
            },
            **tiny_spec,
        )
    )


_register_mvit()


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


_register_pytorchvideo()

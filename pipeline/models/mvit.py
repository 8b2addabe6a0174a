"""MViTv1 and MViTv2 (Fan 2021, Li 2022) with PySlowFast parameter names; one builder, explicit flags.

Rev-MViT (Mangalam 2022) is the same model with `rev=True`: its reversible encoder is in
mvit_reversible.py, the blocks both share in mvit_layers.py. The input size is fixed by the position
embeddings (absolute) or the relative-position tables: like PySlowFast, the model takes clips of exactly
(spec.num_frames, spec.crop_size, spec.crop_size).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.base import ClassifierHead, ClipShapeError, VideoModel
from pipeline.models.layers import round_width
from pipeline.models.mvit_layers import (
    MultiScaleBlock,
    MViTConfig,
    PatchEmbed,
    TwoStreamFusion,
    layer_norm,
    layer_plans,
    multipliers,
)
from pipeline.models.mvit_reversible import ReversibleMViT
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec


class MViT(VideoModel):
    """MViTv1 / MViTv2 / Rev-MViT; features: what PySlowFast's head receives (after the final norm)."""

    caffe2_weights = False  # PySlowFast published transformers only as .pyth files

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch != "mvit":
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not mvit")
        cfg = MViTConfig.from_kwargs(dict(spec.builder_kwargs))
        self.config = cfg
        self.input_shape = (spec.num_frames, spec.crop_size, spec.crop_size)
        self.patch_dims = [
            size // stride for size, stride in zip(self.input_shape, cfg.patch_stride, strict=True)
        ]
        if min(self.patch_dims) < 1:
            raise ValueError(f"model {spec.name!r}: input {self.input_shape} is smaller than one patch")
        num_patches = math.prod(self.patch_dims)
        embed_dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(embed_dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)
        if cfg.cls_embed_on:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if cfg.use_abs_pos:
            if cfg.sep_pos_embed:
                t, h, w = self.patch_dims
                self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
                self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
                if cfg.cls_embed_on:
                    self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim))
            else:
                self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + int(cfg.cls_embed_on), embed_dim))
        self.norm_stem = layer_norm(embed_dim) if cfg.norm_stem else None

        plans = layer_plans(cfg)
        dim_mul = multipliers(cfg.dim_mul, cfg.depth)
        head_mul = multipliers(cfg.head_mul, cfg.depth)
        self.rev_backbone: nn.Module | None = None
        if cfg.rev:
            self.rev_backbone = ReversibleMViT(cfg, self.patch_dims, plans)
            embed_dim = round_width(embed_dim, math.prod(dim_mul), divisor=cfg.num_heads)
            self.fuse = TwoStreamFusion(cfg.rev_respath_fuse)
            out_dim = 2 * embed_dim if cfg.rev_respath_fuse == "concat" else embed_dim
        else:
            self.blocks = nn.ModuleList()
            num_heads = cfg.num_heads
            input_size = list(self.patch_dims)
            for i, plan in enumerate(plans):
                num_heads = round_width(num_heads, head_mul[i])
                if cfg.dim_mul_in_att:
                    dim_out = round_width(embed_dim, dim_mul[i], divisor=round_width(num_heads, head_mul[i]))
                else:
                    dim_out = round_width(
                        embed_dim, dim_mul[i + 1], divisor=round_width(num_heads, head_mul[i + 1])
                    )
                self.blocks.append(MultiScaleBlock(embed_dim, dim_out, num_heads, input_size, plan, cfg))
                if plan.stride_q:
                    input_size = [size // s for size, s in zip(input_size, plan.stride_q, strict=True)]
                embed_dim = dim_out
            out_dim = embed_dim
        self.norm = layer_norm(out_dim)
        self.head = ClassifierHead(out_dim, spec.num_classes)
        self.feature_dim = out_dim
        self._record_default_dim(out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal linears, convs and embeddings (std 0.02), unit norms: random models are well scaled."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv3d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, param in self.named_parameters():
            if name.rsplit(".", 1)[-1].startswith(("pos_embed", "cls_token", "rel_pos")):
                nn.init.trunc_normal_(param, std=0.02)

    def check_clips(self, clips: Tensor) -> None:
        """Raise ClipShapeError unless clips is (B, 3, T, H, W) at the model's native T and crop."""
        super().check_clips(clips)
        if tuple(clips.shape[2:]) != self.input_shape:
            t, h, w = self.input_shape
            raise ClipShapeError(
                f"model {self.spec.name!r}: clips must be {t} frames of {h}x{w} (its position embeddings "
                f"fix the input), got T={clips.shape[2]}, {clips.shape[3]}x{clips.shape[4]}"
            )

    def _abs_pos_embed(self) -> Tensor:
        """The absolute position embedding of every token (cls first when there is one)."""
        if not self.config.sep_pos_embed:
            return self.pos_embed
        t, h, w = self.patch_dims
        pos = self.pos_embed_spatial.repeat(1, t, 1) + torch.repeat_interleave(
            self.pos_embed_temporal, h * w, dim=1
        )
        if self.config.cls_embed_on:
            pos = torch.cat([self.pos_embed_class, pos], dim=1)
        return pos

    def tokens(self, inputs: list[Tensor]) -> tuple[Tensor, list[int]]:
        """Patch tokens (B, [1 +] T'H'W', C) with cls token and position embeddings, and their grid."""
        if len(inputs) != 1:
            raise ClipShapeError(f"model {self.spec.name!r}: expected 1 pathway input, got {len(inputs)}")
        grid = self.patch_embed(inputs[0])
        thw = [int(d) for d in grid.shape[2:]]
        if thw != self.patch_dims:
            raise ClipShapeError(
                f"model {self.spec.name!r}: patch grid {thw} differs from the native {self.patch_dims}"
            )
        x = grid.flatten(2).transpose(1, 2)
        if self.config.cls_embed_on:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.config.use_abs_pos:
            x = x + self._abs_pos_embed()
        if self.norm_stem is not None:
            x = self.norm_stem(x)
        return x, thw

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """(B, feature_dim): the final norm's output at the cls token, or its mean over tokens."""
        x, thw = self.tokens(inputs)
        if self.rev_backbone is not None:
            x = self.rev_backbone(x)
            if self.config.use_mean_pooling:
                return self.norm(self.fuse(x).mean(1))
            return self.fuse(self.norm(x)).mean(1)
        for block in self.blocks:
            x, thw = block(x, thw)
        if self.config.use_mean_pooling:
            if self.config.cls_embed_on:
                x = x[:, 1:]
            return self.norm(x.mean(1))
        if self.config.cls_embed_on:
            return self.norm(x[:, 0])  # the norm is per token: the same as norming all, then taking cls
        return self.norm(x).mean(1)

    def logits(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        """Scores of the linear head on the features (before softmax)."""
        return self.head(features)


# --------------------------------------------------------------------------- zoo entries

_MVIT_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


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


register_arch("mvit", MViT)
_register_mvit()

"""VideoMAE (Tong 2022) and VideoMAE V2 (Wang 2023): a plain ViT on 3D patches, with the parameter names
of their `modeling_finetune.py`, so their fine-tuned .pth files load without renaming.

The clip is cut into tubelets (`tubelet_size` frames x `patch_size`^2 pixels) by one strided Conv3d
(`patch_embed.proj`); a fixed sine-cosine table (not a parameter, not in their state dicts) is added;
pre-norm blocks follow: attention with one fused qkv projection and separate q / v biases (k has none),
optionally scaled by layer-scale vectors `gamma_1` / `gamma_2` (`init_values` > 0), and a GELU MLP. With
`use_mean_pooling` (every released fine-tuned model) the feature is `fc_norm(mean over tokens)`, the
input of the classifier `head`; without it the feature is `norm` of the first token, as theirs does.

The position table is built for exactly (spec.num_frames, spec.crop_size, spec.crop_size) (all_frames=16
at 224 for every zoo model): the model takes clips of that shape only; the sampling rate is free.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.base import ClipShapeError, VideoModel
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec

LAYER_NORM_EPS = 1e-6  # their vit_*_patch*_224 builders: partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class VideoMAEConfig:
    """Architecture flags of a VideoMAE ViT (the spec's builder_kwargs), named after their arguments."""

    patch_size: int = 16  # spatial patch side (14 for ViT-g)
    tubelet_size: int = 2  # frames per patch
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0  # hidden = int(embed_dim * mlp_ratio), as theirs (ViT-g: 48 / 11)
    qkv_bias: bool = True  # learned q and v biases (k never has one)
    init_values: float = 0.0  # layer scale: gamma_1 / gamma_2 initialised to this when > 0
    use_mean_pooling: bool = True  # feature = fc_norm(mean of tokens); else norm(first token)
    norm_eps: float = LAYER_NORM_EPS

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> VideoMAEConfig:
        """Build from builder_kwargs; an unknown key or an impossible value is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"arch 'videomae': unknown builder option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**kwargs)
        if cfg.embed_dim % cfg.num_heads:
            raise ValueError(
                f"arch 'videomae': embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}"
            )
        if min(cfg.patch_size, cfg.tubelet_size, cfg.depth, cfg.num_heads) < 1:
            raise ValueError("arch 'videomae': patch_size, tubelet_size, depth and num_heads must be >= 1")
        return cfg

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width, computed as theirs (int of a float product)."""
        return int(self.embed_dim * self.mlp_ratio)


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """(1, n_position, dim) float32: sin at even, cos at odd channels of pos / 10000^(2 * (j // 2) / dim).

    Computed in float64 and rounded once, like their numpy table.
    """
    position = torch.arange(n_position, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    """Tubelets to tokens: a Conv3d with kernel = stride = (tubelet, patch, patch); (B, N, C) out."""

    def __init__(self, embed_dim: int, patch_size: int, tubelet_size: int) -> None:
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=size, stride=size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv linear without bias, plus learned q and v biases."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias: nn.Parameter | None = None
        self.v_bias: nn.Parameter | None = None
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(head_dim)) v: the fused kernel's default scale is theirs
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, with layer scale when init_values > 0."""

    def __init__(self, cfg: VideoMAEConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, cfg.mlp_hidden)
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if cfg.init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(cfg.init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(cfg.init_values)))

    def forward(self, x: Tensor) -> Tensor:
        if self.gamma_1 is None or self.gamma_2 is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class VideoMAE(VideoModel):
    """VideoMAE / VideoMAE V2 ViT; features: fc_norm of the token mean (the classifier's input)."""

    caffe2_weights = False  # released as PyTorch .pth files only
    head_prefixes = ("head.",)

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch != "videomae":
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not videomae")
        if not isinstance(spec.num_classes, int):
            raise ValueError(f"model {spec.name!r}: arch 'videomae' has one classifier (num_classes: int)")
        cfg = VideoMAEConfig.from_kwargs(dict(spec.builder_kwargs))
        pooled = "fc_norm" if cfg.use_mean_pooling else "norm"
        if self.feature_layer != pooled:
            raise ValueError(
                f"model {spec.name!r}: feature layer {self.feature_layer!r} does not exist with "
                f"use_mean_pooling={cfg.use_mean_pooling} (the pooled feature is {pooled!r})"
            )
        self.config = cfg
        self.input_shape = (spec.num_frames, spec.crop_size, spec.crop_size)
        t, h, w = self.input_shape
        self.grid = (t // cfg.tubelet_size, h // cfg.patch_size, w // cfg.patch_size)
        if t % cfg.tubelet_size or h % cfg.patch_size or min(self.grid) < 1:
            raise ValueError(
                f"model {spec.name!r}: input {self.input_shape} is not a whole number of "
                f"{cfg.tubelet_size}x{cfg.patch_size}x{cfg.patch_size} tubelets"
            )
        num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(dim, cfg.patch_size, cfg.tubelet_size)
        # Fixed, and kept out of the state dict like theirs (a plain tensor attribute there).
        self.pos_embed: Tensor
        self.register_buffer("pos_embed", sinusoid_table(num_patches, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm: nn.LayerNorm | None = None if cfg.use_mean_pooling else nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.fc_norm: nn.LayerNorm | None = (
            nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.use_mean_pooling else None
        )
        self.head = nn.Linear(dim, spec.num_classes)
        self.feature_dim = dim
        self._record_default_dim(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal linears and patch projection (std 0.02), zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv3d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_clips(self, clips: Tensor) -> None:
        """Raise ClipShapeError unless clips is (B, 3, T, H, W) at the model's native T and crop."""
        super().check_clips(clips)
        if tuple(clips.shape[2:]) != self.input_shape:
            t, h, w = self.input_shape
            raise ClipShapeError(
                f"model {self.spec.name!r}: clips must be {t} frames of {h}x{w} (its fixed position table "
                f"fixes the input), got T={clips.shape[2]}, {clips.shape[3]}x{clips.shape[4]}"
            )

    def tokens(self, inputs: list[Tensor]) -> Tensor:
        """The output tokens of the last block, (B, N, C)."""
        if len(inputs) != 1:
            raise ClipShapeError(f"model {self.spec.name!r}: expected 1 pathway input, got {len(inputs)}")
        x = inputs[0]
        if tuple(x.shape[2:]) != self.input_shape:
            raise ClipShapeError(
                f"model {self.spec.name!r}: input {tuple(x.shape[2:])} differs from the native {self.input_shape}"
            )
        x = self.patch_embed(x)
        x = x + self.pos_embed.to(dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """(B, embed_dim): fc_norm of the token mean, or (no mean pooling) norm of the first token."""
        x = self.tokens(inputs)
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        assert self.norm is not None
        return self.norm(x[:, 0])

    def logits(self, features: Tensor) -> Tensor:
        """Scores of the linear head on the features (before softmax); head dropout is off at test."""
        return self.head(features)


# --------------------------------------------------------------------------- zoo entries

# Fine-tuning normalisation of both code bases (their datasets' tensor_normalize): ImageNet's.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Their vit_{small,base,large,huge}_patch16_224 and vit_giant_patch14_224 (modeling_finetune.py).
_SIZES: dict[str, dict[str, Any]] = {
    "s": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "b": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "l": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "h": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    "g": {"embed_dim": 1408, "depth": 40, "num_heads": 16, "patch_size": 14, "mlp_ratio": 48 / 11},
}

_V2_FORM = (
    "https://docs.google.com/forms/d/e/1FAIpQLSd1SjKMtD8piL9uxGEUwicerxd46bs12QojQt92rzalnoI3JA/viewform"
)
_V2_DISTILL = "https://huggingface.co/OpenGVLab/VideoMAE2/resolve/main/distill/"
# VideoMAE (V1) MODEL_ZOO.md: fine-tuned checkpoints on Google Drive (file ids).
_V1_DRIVE = {
    ("s", "k400"): "1ygjLRm1kvs9mwGsP3lLxUExhRo6TWnrx",  # ViT-S, 1600-epoch pre-training
    ("b", "k400"): "1MzwteHH-1yuMnFb8vRBQDvngV1Zl-d3z",  # ViT-B, 1600 epochs
    ("l", "k400"): "1jX1CiqxSkCfc94y8FRW1YGHy-GNvHCuD",  # ViT-L, 1600 epochs
    ("h", "k400"): "104ouJZxSVPSAm0LwJXd6IzjdA_RGLqZi",  # ViT-H, 1600 epochs
    ("s", "ssv2"): "1ajlMrT06jiiM-5YjNI2X_UFyzsuYbbtZ",  # ViT-S, 2400 epochs
    ("b", "ssv2"): "1dt_59tBIyzdZd5Ecr22lTtzs_64MOZkT",  # ViT-B, 2400 epochs
}


def _videomae(
    name: str, builder: dict[str, Any], num_frames: int, sampling_rate: int, crop: int, **spec_fields: Any
) -> ModelSpec:
    """A VideoMAE spec: T x crop fixed by the position table, test short side = crop (3-crop test)."""
    return ModelSpec(
        name=name,
        arch="videomae",
        num_frames=num_frames,
        sampling_rate=sampling_rate,
        crop_size=crop,
        short_side=crop,
        feature_dim=int(builder.get("embed_dim", VideoMAEConfig.embed_dim)),
        feature_layers=("fc_norm",),
        native_input=True,
        native_rate=False,
        builder_kwargs=dict(builder),
        **{"mean": _IMAGENET_MEAN, "std": _IMAGENET_STD, **spec_fields},
    )


def _register_videomae() -> None:
    """VideoMAE V2 (OpenGVLab) and VideoMAE (MCG-NJU) fine-tuned models, and a tiny test model."""
    k710 = {"num_classes": 710, "labels": "kinetics710"}
    # The giant fine-tuned on Kinetics-710 (scripts/finetune/vit_g_k710_ft.sh): the VideoMAE V2-g of the
    # released THUMOS14 / FineAction features (extract_tad_feature.py). Behind a request form.
    register_model(
        _videomae(
            "videomaev2_g_k710",
            _SIZES["g"],
            16,
            4,
            224,
            zoo_url=_V2_FORM,
            zoo_filename="vit_g_hybrid_pt_1200e_k710_ft.pth",
            zoo_manual=True,
            **k710,
        )
    )
    # Students distilled from it on K710 (MODEL_ZOO.md, Distillation): direct links.
    for size in ("s", "b"):
        file = f"vit_{size}_k710_dl_from_giant.pth"
        register_model(
            _videomae(
                f"videomaev2_{size}_k710_distill",
                _SIZES[size],
                16,
                4,
                224,
                zoo_url=_V2_DISTILL + file,
                zoo_filename=file,
                **k710,
            )
        )
    # VideoMAE V1: K400 dense sampling 16x4; SSv2 sparse (TSN) sampling of 16 segments over the video,
    # here 16 frames 2 apart (the SSv2 pre-training's 16x2).
    for (size, dataset), drive_id in _V1_DRIVE.items():
        labels = {"num_classes": 174, "labels": None} if dataset == "ssv2" else {}
        register_model(
            _videomae(
                f"videomae_{size}_{dataset}",
                _SIZES[size],
                16,
                2 if dataset == "ssv2" else 4,
                224,
                zoo_url=f"https://drive.google.com/file/d/{drive_id}/view?usp=sharing",
                zoo_filename="checkpoint.pth",
                zoo_manual=True,
                **labels,
            )
        )
    register_model(
        _videomae(
            "videomae_tiny",
            {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16},
            4,
            2,
            32,
            num_classes=10,
            labels=None,
        )
    )


register_arch("videomae", VideoMAE)
_register_videomae()

"""X3D (Feichtenhofer 2020) with PySlowFast parameter names: XS / S / M / L differ by depth and input."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.base import ClassifierHead, ClipShapeError, VideoModel, init_weights
from pipeline.models.layers import ResBlock, batch_norm, round_width
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec

# Per stage (res2..res5): base number of blocks before the depth factor.
BASE_STAGE_BLOCKS = (1, 2, 5, 3)


@dataclass(frozen=True)
class X3DConfig:
    """Architecture details of an X3D (the spec's builder_kwargs)."""

    width_factor: float = 2.0
    depth_factor: float = 2.2
    bottleneck_factor: float = 2.25
    dim_c1: int = 12
    dim_c5: int = 2048
    scale_res2: bool = False
    se_ratio: float = 0.0625
    stem_temporal_kernel: int = 5
    temporal_kernel: int = 3
    # Kernel (T, H, W) of the head's stride-1 average pool, PySlowFast's (NUM_FRAMES, ceil(TRAIN_CROP / 32) x2);
    # None pools globally. Larger inputs give several positions, each through lin_5 + ReLU.
    head_pool: tuple[int, int, int] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> X3DConfig:
        """Build from builder_kwargs; an unknown key is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"arch 'x3d': unknown builder option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x)."""
    return x * torch.sigmoid(x)


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(fc2(relu(fc1(mean over T, H, W))))."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        dim_fc = round_width(dim, ratio, min_width=8, divisor=8)
        self.fc1 = nn.Conv3d(dim, dim_fc, 1, bias=True)
        self.fc2 = nn.Conv3d(dim_fc, dim, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class X3DBottleneck(nn.Module):
    """1x1x1 -> channelwise Tx3x3 (+SE) -> swish -> 1x1x1, BN after each conv."""

    def __init__(
        self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, stride: int, se_ratio: float
    ) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.a_bn = batch_norm(dim_inner)
        self.b = nn.Conv3d(
            dim_inner,
            dim_inner,
            (temporal_kernel, 3, 3),
            stride=(1, stride, stride),
            padding=(temporal_kernel // 2, 1, 1),
            groups=dim_inner,
            bias=False,
        )
        self.b_bn = batch_norm(dim_inner)
        self.se = SqueezeExcite(dim_inner, se_ratio) if se_ratio > 0 else None
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = batch_norm(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.a_bn(self.a(x)), inplace=True)
        x = self.b_bn(self.b(x))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(swish(x)))


class X3DStemUnit(nn.Module):
    """1x3x3 conv (`conv_xy`, spatial stride 2), depthwise Tx1x1 conv (`conv`), BN, ReLU; no pooling."""

    def __init__(self, dim_out: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(3, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv = nn.Conv3d(
            dim_out,
            dim_out,
            (temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            groups=dim_out,
            bias=False,
        )
        self.bn = batch_norm(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(self.conv_xy(x))), inplace=True)


class X3DStem(nn.Module):
    """Holds `pathway0_stem` (PySlowFast naming)."""

    def __init__(self, dim_out: int, temporal_kernel: int) -> None:
        super().__init__()
        self.pathway0_stem = X3DStemUnit(dim_out, temporal_kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.pathway0_stem(x)


class X3DStage(nn.Module):
    """Blocks `pathway0_res{i}`; the first one strides by 2 spatially, SE on even block indices."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        dim_inner: int,
        num_blocks: int,
        temporal_kernel: int,
        se_ratio: float,
    ) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        for i in range(num_blocks):
            block_in = dim_in if i == 0 else dim_out
            stride = 2 if i == 0 else 1
            ratio = se_ratio if i % 2 == 0 else 0.0
            branch2 = X3DBottleneck(block_in, dim_out, dim_inner, temporal_kernel, stride, ratio)
            self.add_module(f"pathway0_res{i}", ResBlock(block_in, dim_out, stride, branch2))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"pathway0_res{i}")(x)
        return x


class X3DHead(ClassifierHead):
    """conv_5 + BN + ReLU, stride-1 average pool, lin_5 + ReLU per pooled position, projection.

    As in PySlowFast, the pool kernel is fixed by the train crop: at a larger test crop it leaves several
    positions, and lin_5 + ReLU run on each before anything is averaged.
    """

    def __init__(
        self,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        num_classes: int | dict[str, int],
        pool_kernel: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(dim_out, num_classes)
        self.pool_kernel = pool_kernel
        self.conv_5 = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.conv_5_bn = batch_norm(dim_inner)
        self.lin_5 = nn.Conv3d(dim_inner, dim_out, 1, bias=False)

    def conv5(self, x: Tensor) -> Tensor:
        """(B, C5, T, H, W) -> (B, dim_inner, T, H, W): conv_5 + BN + ReLU."""
        return F.relu(self.conv_5_bn(self.conv_5(x)), inplace=True)

    def pooled_conv5(self, x: Tensor) -> Tensor:
        """(B, C5, T, H, W) -> (B, dim_inner): conv_5 + BN + ReLU, then global average."""
        return self.conv5(x).mean(dim=(2, 3, 4))

    def pool_positions(self, conv5: Tensor) -> Tensor:
        """Stride-1 average pool with the train-crop kernel (clamped to the input): (B, C, T', H', W')."""
        if self.pool_kernel is None:
            return conv5.mean(dim=(2, 3, 4), keepdim=True)
        kernel = tuple(min(k, n) for k, n in zip(self.pool_kernel, conv5.shape[2:], strict=True))
        return F.avg_pool3d(conv5, kernel, stride=1)

    def lin5_positions(self, x: Tensor) -> Tensor:
        """(B, C5, T, H, W) -> (B, dim_out): lin_5 + ReLU at each pooled position, then their mean."""
        return F.relu(self.lin_5(self.pool_positions(self.conv5(x)))).mean(dim=(2, 3, 4))

    def lin5(self, pooled: Tensor) -> Tensor:
        """(B, dim_inner) -> (B, dim_out): lin_5 + ReLU on one pooled vector."""
        return F.relu(F.linear(pooled, self.lin_5.weight.flatten(1)))


class X3D(VideoModel):
    """X3D backbone; features from `lin_5` (2048, default) or `conv_5` (pooled, 432).

    `lin_5` features are the mean over the head's pooled positions of what PySlowFast's projection
    receives, so `logits` (a linear map of them) is the mean of its per-position projection outputs.
    `conv_5` features are the global mean of conv_5; their logits equal PySlowFast's at one position only.
    """

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch != "x3d":
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not x3d")
        cfg = X3DConfig.from_kwargs(dict(spec.builder_kwargs))
        self.config = cfg
        dim_res1 = round_width(cfg.dim_c1, cfg.width_factor)
        self.s1 = X3DStem(dim_res1, cfg.stem_temporal_kernel)

        base = cfg.dim_c1
        base_dims = [round_width(base, 2.0, divisor=8) if cfg.scale_res2 else base]
        for _ in range(3):
            base_dims.append(round_width(base_dims[-1], 2.0, divisor=8))

        dim_in = dim_res1
        dim_inner = dim_in
        self.blocks_per_stage: list[int] = []
        for stage, (n_base, c_base) in enumerate(zip(BASE_STAGE_BLOCKS, base_dims, strict=True)):
            dim_out = round_width(c_base, cfg.width_factor)
            dim_inner = int(cfg.bottleneck_factor * dim_out)
            n_blocks = int(math.ceil(cfg.depth_factor * n_base)) if cfg.depth_factor else n_base
            self.blocks_per_stage.append(n_blocks)
            self.add_module(
                f"s{stage + 2}",
                X3DStage(dim_in, dim_out, dim_inner, n_blocks, cfg.temporal_kernel, cfg.se_ratio),
            )
            dim_in = dim_out

        self.head = X3DHead(dim_in, dim_inner, cfg.dim_c5, spec.num_classes, cfg.head_pool)
        self.feature_dim = cfg.dim_c5 if self.feature_layer == "lin_5" else dim_inner
        self._record_default_dim(cfg.dim_c5 if spec.default_feature_layer == "lin_5" else dim_inner)
        init_weights(self)

    def backbone(self, inputs: list[Tensor]) -> Tensor:
        """Output of res5, (B, C, T, H/32, W/32)."""
        if len(inputs) != 1:
            raise ClipShapeError(f"model {self.spec.name!r}: expected 1 pathway input, got {len(inputs)}")
        x = self.s1(inputs[0])
        for stage in range(2, 6):
            x = getattr(self, f"s{stage}")(x)
        return x

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """Globally pooled conv_5 (conv_5 layer), or lin_5 + ReLU averaged over pooled positions (lin_5)."""
        res5 = self.backbone(inputs)
        if self.feature_layer == "conv_5":
            return self.head.pooled_conv5(res5)
        return self.head.lin5_positions(res5)

    def logits(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        """Projection of lin_5 features (applying lin_5 first when features come from conv_5)."""
        if self.feature_layer == "conv_5":
            features = self.head.lin5(features)
        return self.head(features)


# --------------------------------------------------------------------------- zoo entries

_X3D_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/x3d_models/"


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


register_arch("x3d", X3D)
register_model(_x3d("xs", 4, 12, 182, 160, 2.2))
register_model(_x3d("s", 13, 6, 182, 160, 2.2))
register_model(_x3d("m", 16, 5, 256, 224, 2.2))
register_model(_x3d("l", 16, 5, 356, 312, 5.0))

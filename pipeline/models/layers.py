"""Layers shared by more than one model family: PySlowFast's batch norm, the ResNet bottleneck block and
its residual wrapper (ResNets and X3D), and the channel rounding of X3D and MViT."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models import fused as fused_ops
from pipeline.models.fused import FusableBlock

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """Scale a channel count and round it to a multiple of `divisor` (never below 90% of the target)."""
    if not multiplier:
        return int(width)
    width *= multiplier
    min_width = min_width or divisor
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def batch_norm(channels: int) -> nn.BatchNorm3d:
    """BatchNorm3d with PySlowFast's eps and momentum."""
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class Bottleneck(nn.Module):
    """Tx1x1 -> 1x3x3 (spatial stride) -> 1x1x1 bottleneck, each conv followed by BN (`a`, `b`, `c`); its
    fused form (`forward_add_relu`) is run by the ResBlock around it."""

    def __init__(
        self, dim_in: int, dim_out: int, dim_inner: int, temporal_kernel: int, stride: int, num_groups: int
    ) -> None:
        super().__init__()
        self.a = nn.Conv3d(
            dim_in, dim_inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
        )
        self.a_bn = batch_norm(dim_inner)
        self.b = nn.Conv3d(
            dim_inner,
            dim_inner,
            (1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, 1, 1),
            groups=num_groups,
            bias=False,
        )
        self.b_bn = batch_norm(dim_inner)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = batch_norm(dim_out)

    def norms(self) -> list[nn.Module]:
        return [self.a_bn, self.b_bn, self.c_bn]

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.a_bn(self.a(x)), inplace=True)
        x = F.relu(self.b_bn(self.b(x)), inplace=True)
        return self.c_bn(self.c(x))

    def forward_add_relu(self, x: Tensor, residual: Tensor) -> Tensor:
        """relu(forward(x) + residual), every conv fused with what follows it (folded norms only)."""
        x = fused_ops.conv_relu(self.b, fused_ops.conv_relu(self.a, x))
        return fused_ops.conv_add_relu(self.c, x, residual)


class ResBlock(FusableBlock):
    """Residual block: relu(shortcut(x) + branch2(x)); projection shortcut `branch1` when shapes change."""

    def __init__(self, dim_in: int, dim_out: int, stride: int, branch2: nn.Module) -> None:
        super().__init__()
        self.has_projection = dim_in != dim_out or stride != 1
        if self.has_projection:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = batch_norm(dim_out)
        self.branch2 = branch2

    def norms(self) -> list[nn.Module]:
        projection = [self.branch1_bn] if self.has_projection else []
        branch2 = self.branch2.norms() if isinstance(self.branch2, Bottleneck) else [self.branch2]
        return projection + branch2

    def fused_convs(self) -> list[nn.Module]:
        b = self.branch2
        return [b.a, b.b, b.c] if isinstance(b, Bottleneck) else []  # the projection runs plain

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if self.has_projection else x
        if self.fused:
            assert isinstance(self.branch2, Bottleneck)  # can_fuse() holds for folded Bottlenecks only
            return self.branch2.forward_add_relu(x, shortcut)
        return F.relu(shortcut + self.branch2(x), inplace=True)

"""Conv + ReLU (and conv + residual add + ReLU) as one oneDNN call: a CPU fp32 fast path for folded ResNets.

oneDNN applies the ReLU and the add as post-ops while each output block is still in cache, which saves a
read and a write of every activation (about 10% of SlowFast R50's fp32 time on CPU, measured with
`python -m pipeline.benchmark --layers`). The op is PyTorch's own `torch.ops.mkldnn._convolution_pointwise`,
the one inductor's CPU conv fusion emits; it computes the same sums as `F.conv3d`, then max(0, x).
A block uses it only once its batch norms are folded away (`FusableBlock.fused`, set by
`pipeline.inference.fuse_conv_activations`, which checks the result on a probe clip).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def available() -> bool:
    """True when this PyTorch build has oneDNN's fused conv op (any x86/ARM CPU build with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv_relu(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """relu(conv(x)) in one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, *_geometry(conv), "relu", [], ""
    )


def conv_add_relu(conv: nn.Conv3d, x: Tensor, residual: Tensor) -> Tensor:
    """relu(conv(x) + residual) in one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, conv.weight, conv.bias, *_geometry(conv), "add", None, "relu", [], ""
    )


def _geometry(conv: nn.Conv3d) -> tuple[list[int], list[int], list[int], int]:
    """padding, stride, dilation and groups of a conv, as the oneDNN op takes them."""
    padding = conv.padding
    if isinstance(padding, str):
        raise ValueError(f"conv padding {padding!r} has no fused form")
    return list(padding), list(conv.stride), list(conv.dilation), conv.groups


class FusableBlock(nn.Module):
    """A block whose conv -> batch norm -> ReLU steps may run fused once its norms are identities."""

    fused = False

    def norms(self) -> list[nn.Module]:
        """The batch norms that must be folded (identities) before this block may fuse."""
        raise NotImplementedError

    def can_fuse(self) -> bool:
        """Every norm of the block is folded away."""
        return all(isinstance(norm, nn.Identity) for norm in self.norms())


def set_fused(model: nn.Module, fused: bool) -> int:
    """Switch every block whose norms are folded to the fused path (or all back); the number switched."""
    switched = 0
    for block in model.modules():
        if isinstance(block, FusableBlock) and (block.can_fuse() or not fused):
            block.fused = fused
            switched += 1
    return switched


@contextmanager
def unfused(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every block on the plain path for a while (tracers such as fvcore's FLOP counter
    cannot record the fused op); each block's state comes back afterwards."""
    was_fused = {block: block.fused for block in model.modules() if isinstance(block, FusableBlock)}
    set_fused(model, False)
    try:
        yield model
    finally:
        for block, state in was_fused.items():
            block.fused = state

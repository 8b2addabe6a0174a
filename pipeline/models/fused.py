"""Conv + ReLU (and conv + residual add + ReLU) as one oneDNN call: a CPU fast path for folded ResNets.

oneDNN applies the ReLU and the add as post-ops while each output block is still in cache, which saves a
read and a write of every activation (SlowFast R50 on CPU: about 5% of the fp32 time; in bf16, where
torch's own ReLU and add cost a third of the time, far more; `python -m pipeline.benchmark --layers`
shows what is left). The op is PyTorch's own `torch.ops.mkldnn._convolution_pointwise`, the one
inductor's CPU conv fusion emits; it computes the same sums as `F.conv3d`, then max(0, x). For bf16 the
convs get bf16 copies of their weights once (`set_weights_dtype`), as autocast would cast them at every
call. A block uses the op only once its batch norms are folded away (`FusableBlock.fused`, set by
`pipeline.inference.fuse_conv_activations`, which checks the result on a probe clip).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def available() -> bool:
    """True when this PyTorch build has oneDNN's fused conv op (any x86/ARM CPU build with mkldnn)."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_convolution_pointwise", "_convolution_pointwise_")
    )


WEIGHTS_ATTR = "fused_weights"  # a conv's (weight, bias) in the dtype it runs in, when not its own


def conv_relu(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """relu(conv(x)) in one oneDNN call (in the dtype of the conv's fused weights)."""
    weight, bias = _weights(conv)
    return torch.ops.mkldnn._convolution_pointwise(
        x.to(weight.dtype), weight, bias, *_geometry(conv), "relu", [], ""
    )


def conv_add_relu(conv: nn.Conv3d, x: Tensor, residual: Tensor) -> Tensor:
    """relu(conv(x) + residual) in one oneDNN call (in the dtype of the conv's fused weights), written over
    `residual` (a block's last use of it; the out-of-place form has no bf16 kernel in torch 2.13)."""
    weight, bias = _weights(conv)
    out = residual.to(weight.dtype)
    geometry = _geometry(conv)
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x.to(weight.dtype), weight, bias, *geometry, "add", None, "relu", [], ""
    )


def _weights(conv: nn.Conv3d) -> tuple[Tensor, Tensor | None]:
    """The conv's weight and bias as the fused op takes them."""
    return conv.__dict__.get(WEIGHTS_ATTR) or (conv.weight, conv.bias)


def set_weights_dtype(model: nn.Module, dtype: torch.dtype | None) -> None:
    """Give every conv that a fusable block runs fused weights in `dtype` for the op (None: its own, fp32);
    convs a block keeps in fp32 (`FusableBlock.fp32_convs`) keep theirs."""
    for block in model.modules():
        if not isinstance(block, FusableBlock):
            continue
        kept = set(block.fp32_convs()) if dtype is not None else set()
        for conv in block.fused_convs():
            assert isinstance(conv, nn.Conv3d)
            conv.__dict__.pop(WEIGHTS_ATTR, None)
            if dtype is not None and conv not in kept:
                bias = conv.bias.detach().to(dtype) if conv.bias is not None else None
                conv.__dict__[WEIGHTS_ATTR] = (conv.weight.detach().to(dtype), bias)


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

    def fused_convs(self) -> list[nn.Module]:
        """The convs its fused path runs through the oneDNN op."""
        raise NotImplementedError

    def fp32_convs(self) -> list[nn.Module]:
        """Convs that must run in fp32 even in a bf16 run (none unless a block says so)."""
        return []

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

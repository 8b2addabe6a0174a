"""The reversible encoder of Rev-MViT (Mangalam 2022) with PySlowFast parameter names (`rev_backbone`).

Inference only: the reversible blocks run forward (Y1 = X1 + F(X2), Y2 = X2 + G(Y1)); the activation
recomputation that makes training memory-light is not needed to extract features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pipeline.models.layers import round_width
from pipeline.models.mvit_layers import (
    LayerPlan,
    Mlp,
    MultiScaleAttention,
    MViTConfig,
    TwoStreamFusion,
    attention_pool,
    layer_norm,
    multipliers,
)


class AttentionSubBlock(nn.Module):
    """F: norm -> pooled attention on the layer's fixed token grid `thw`."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        input_size: Sequence[int],
        num_heads: int,
        plan: LayerPlan,
        cfg: MViTConfig,
    ) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.attn = MultiScaleAttention(dim, dim_out, input_size, num_heads, plan, cfg)
        self.thw = list(input_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.norm(x), self.thw)[0]


class MLPSubblock(nn.Module):
    """G: norm -> MLP (same width in and out)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))


class ReversibleBlock(nn.Module):
    """Two residual streams: Y1 = X1 + F(X2), Y2 = X2 + G(Y1)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        input_size: Sequence[int],
        num_heads: int,
        plan: LayerPlan,
        cfg: MViTConfig,
    ) -> None:
        super().__init__()
        self.F = AttentionSubBlock(dim, dim_out, input_size, num_heads, plan, cfg)
        self.G = MLPSubblock(dim, cfg.mlp_ratio)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        y1 = x1 + self.F(x2)
        return y1, x2 + self.G(y1)


class StageTransitionBlock(nn.Module):
    """A plain (non-reversible) block between stages: fuses the two streams, pools q, widens channels."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        input_size: Sequence[int],
        num_heads: int,
        plan: LayerPlan,
        cfg: MViTConfig,
    ) -> None:
        super().__init__()
        self.F = AttentionSubBlock(dim, dim_out, input_size, num_heads, plan, cfg)
        self.G = MLPSubblock(dim_out, cfg.mlp_ratio)
        self.pre_q_fuse = TwoStreamFusion(cfg.rev_pre_q_fusion)
        self.has_cls = cfg.cls_embed_on
        self.pool_first = cfg.pool_first
        self.fold = 1 if cfg.mode == "conv_unshared" else num_heads
        self.res_proj = nn.Linear(dim, dim_out, bias=True) if dim != dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre_q_fuse(x)
        x_res = x
        if self.res_proj is not None and not self.pool_first:
            x_res = self.res_proj(x_res)
        # The residual is pooled by the attention's own q pooling (conv and norm), per head group.
        batch, tokens, channels = x_res.shape
        grouped = x_res.reshape(batch, tokens, self.fold, channels // self.fold).permute(0, 2, 1, 3)
        attn = self.F.attn
        grouped, _ = attention_pool(grouped, attn.pool_q, self.F.thw, self.has_cls, attn.norm_q)
        x_res = grouped.permute(0, 2, 1, 3).reshape(batch, grouped.shape[2], channels)
        if self.res_proj is not None and self.pool_first:
            x_res = self.res_proj(x_res)
        x = x_res + self.F(x)
        return x + self.G(x)


class ReversibleMViT(nn.Module):
    """`layers`: reversible blocks, with stage transitions at cfg.rev_buffer_layers; output (B, L, 2C)."""

    def __init__(self, cfg: MViTConfig, patch_dims: Sequence[int], plans: Sequence[LayerPlan]) -> None:
        super().__init__()
        dim_mul = multipliers(cfg.dim_mul, cfg.depth)
        head_mul = multipliers(cfg.head_mul, cfg.depth)
        input_size = list(patch_dims)
        embed_dim, num_heads = cfg.embed_dim, cfg.num_heads
        self.layers = nn.ModuleList()
        self.transitions = frozenset(cfg.rev_buffer_layers)
        for i, plan in enumerate(plans):
            num_heads = round_width(num_heads, head_mul[i])
            # The width grows inside the transition block's attention (q pooling and channels together).
            embed_dim = round_width(embed_dim, dim_mul[i - 1] if i > 0 else 1.0, divisor=num_heads)
            dim_out = round_width(embed_dim, dim_mul[i], divisor=round_width(num_heads, head_mul[i + 1]))
            block: type[StageTransitionBlock] | type[ReversibleBlock]
            block = StageTransitionBlock if i in self.transitions else ReversibleBlock
            self.layers.append(block(embed_dim, dim_out, input_size, num_heads, plan, cfg))
            if plan.stride_q:
                input_size = [size // s for size, s in zip(input_size, plan.stride_q, strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        streams: tuple[Tensor, Tensor] | None = None
        for i, layer in enumerate(self.layers):
            if i in self.transitions:
                if streams is not None:
                    x = torch.cat(streams, dim=-1)
                    streams = None
                x = layer(x)
                continue
            if streams is None:
                streams = (x, x)
            streams = layer(*streams)
        return torch.cat(streams, dim=-1) if streams is not None else x

"""Building blocks of the MViT family (MViTv1, MViTv2, Rev-MViT) with PySlowFast parameter names: the
architecture flags, per-layer pooling plans, pooled multi-head attention with relative positions, blocks,
patch embedding and the two-stream fusion of the reversible model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-6
_POOL_MODES = ("conv", "conv_unshared", "avg", "max")
_FUSE_MODES = ("add", "max", "min", "avg", "concat")

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class MViTConfig:
    """Architecture flags of an MViT (the spec's builder_kwargs), named after PySlowFast's cfg.MVIT keys.

    Per-layer lists use PySlowFast's form: dim_mul / head_mul hold (layer, multiplier) pairs,
    pool_q_stride / pool_kv_stride hold (layer, t, h, w) rows.
    """

    embed_dim: int = 96
    num_heads: int = 1
    depth: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    mode: str = "conv"  # attention pooling: conv | conv_unshared | avg | max
    pool_first: bool = False  # pool before the q/k/v projections (separate q, k, v linears)
    separate_qkv: bool = False  # q, k, v linears instead of one qkv linear
    cls_embed_on: bool = True
    patch_kernel: Triple = (3, 7, 7)
    patch_stride: Triple = (2, 4, 4)
    patch_padding: Triple = (1, 3, 3)
    dim_mul: tuple[tuple[int, float], ...] = ()
    head_mul: tuple[tuple[int, float], ...] = ()
    pool_q_stride: tuple[tuple[int, int, int, int], ...] = ()
    pool_kv_stride: tuple[tuple[int, int, int, int], ...] = ()
    pool_kv_stride_adaptive: Triple | None = None
    pool_kvq_kernel: Triple | None = None
    norm_stem: bool = False
    use_abs_pos: bool = True  # absolute position embeddings (v1); v2 uses relative ones instead
    sep_pos_embed: bool = False  # separate spatial / temporal (/ class) absolute embeddings
    rel_pos_spatial: bool = False
    rel_pos_temporal: bool = False
    residual_pooling: bool = False  # v2: add the pooled q to the attention output
    dim_mul_in_att: bool = False  # v2: the channel increase happens in the attention, not the MLP
    use_mean_pooling: bool = False  # features: mean over tokens then norm (else norm, then cls / mean)
    rev: bool = False  # Rev-MViT: reversible encoder (mvit_reversible.py), no cls token
    rev_respath_fuse: str = "concat"  # how the two residual streams are fused before the final norm
    rev_buffer_layers: tuple[int, ...] = ()  # stage-transition (non-reversible) layers
    rev_res_path: str = "conv"
    rev_pre_q_fusion: str = "avg"  # how the two streams are fused before a stage transition

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> MViTConfig:
        """Build from builder_kwargs; an unknown key or value is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"arch 'mvit': unknown builder option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**kwargs)
        if cfg.mode not in _POOL_MODES:
            raise ValueError(f"arch 'mvit': mode must be one of {list(_POOL_MODES)}, got {cfg.mode!r}")
        if cfg.rev:
            if cfg.cls_embed_on:
                raise ValueError("arch 'mvit': rev=True takes no cls token (set cls_embed_on=False)")
            for key in ("rev_respath_fuse", "rev_pre_q_fusion"):
                if getattr(cfg, key) not in _FUSE_MODES:
                    raise ValueError(f"arch 'mvit': {key} must be one of {list(_FUSE_MODES)}")
            if cfg.rev_res_path != "conv":
                raise ValueError("arch 'mvit': only rev_res_path='conv' is supported")
        return cfg


class LayerPlan(NamedTuple):
    """Pooling of one layer: kernels and strides of q and of k/v (empty tuples: no pooling)."""

    kernel_q: tuple[int, ...]
    kernel_kv: tuple[int, ...]
    stride_q: tuple[int, ...]
    stride_kv: tuple[int, ...]


def layer_plans(cfg: MViTConfig) -> list[LayerPlan]:
    """Per-layer pooling, as PySlowFast derives it (adaptive k/v strides shrink after each q stride)."""
    stride_q: list[tuple[int, ...]] = [() for _ in range(cfg.depth)]
    stride_kv: list[tuple[int, ...]] = [() for _ in range(cfg.depth)]
    for layer, *strides in cfg.pool_q_stride:
        stride_q[layer] = tuple(strides)
    kv_rows = [tuple(row) for row in cfg.pool_kv_stride]
    if cfg.pool_kv_stride_adaptive is not None:
        current = tuple(cfg.pool_kv_stride_adaptive)
        kv_rows = []
        for layer in range(cfg.depth):
            if stride_q[layer]:
                current = tuple(max(s // q, 1) for s, q in zip(current, stride_q[layer], strict=True))
            kv_rows.append((layer, *current))
    for layer, *strides in kv_rows:
        stride_kv[layer] = tuple(strides)

    def kernel(strides: tuple[int, ...]) -> tuple[int, ...]:
        if not strides:
            return ()
        if cfg.pool_kvq_kernel is not None:
            return tuple(cfg.pool_kvq_kernel)
        return tuple(s + 1 if s > 1 else s for s in strides)

    return [LayerPlan(kernel(q), kernel(kv), q, kv) for q, kv in zip(stride_q, stride_kv, strict=True)]


def multipliers(pairs: Sequence[tuple[int, float]], depth: int) -> list[float]:
    """depth + 1 multipliers: 1.0 except at the listed layers."""
    values = [1.0] * (depth + 1)
    for layer, value in pairs:
        values[layer] = float(value)
    return values


def _triple(values: Sequence[int]) -> Triple:
    """A (t, h, w) tuple from a 3-item sequence."""
    t, h, w = values
    return (t, h, w)


def layer_norm(dim: int) -> nn.LayerNorm:
    """PySlowFast's transformer norm: LayerNorm with eps 1e-6."""
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


def attention_pool(
    x: Tensor, pool: nn.Module | None, thw: Sequence[int], has_cls: bool, norm: nn.Module | None = None
) -> tuple[Tensor, list[int]]:
    """Pool tokens (B, [heads,] L, C) on their (T, H, W) grid, the cls token passing through; then norm."""
    if pool is None:
        return x, list(thw)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    if has_cls:
        cls_token, x = x[:, :, :1], x[:, :, 1:]
    batch, heads, _, channels = x.shape
    t, h, w = thw
    grid = pool(x.reshape(batch * heads, t, h, w, channels).permute(0, 4, 1, 2, 3).contiguous())
    new_thw = [int(d) for d in grid.shape[2:]]
    x = grid.reshape(batch, heads, channels, -1).transpose(2, 3)
    if has_cls:
        x = torch.cat((cls_token, x), dim=2)
    if norm is not None:
        x = norm(x)
    return (x.squeeze(1) if squeeze else x), new_thw


def resized_rel_pos(table: Tensor, length: int) -> Tensor:
    """A relative-position table linearly resampled to `length` rows (unchanged when it fits)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")[0].t()


def rel_pos_index(q_size: int, k_size: int) -> Tensor:
    """(q_size, k_size) indices into a table of 2 * max - 1 rows; the coarser axis is scaled up."""
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    dist = torch.arange(q_size)[:, None] * q_ratio - torch.arange(k_size)[None, :] * k_ratio
    dist += (k_size - 1) * k_ratio
    return dist.long()


def add_rel_pos(
    attn: Tensor,
    q: Tensor,
    has_cls: bool,
    q_thw: Sequence[int],
    k_thw: Sequence[int],
    tables: dict[str, Tensor],
) -> Tensor:
    """Add decomposed relative-position terms (spatial "h"/"w", temporal "t") to token-token logits."""
    skip = 1 if has_cls else 0
    (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
    batch, heads, _, dim = q.shape
    grid_q = q[:, :, skip:].reshape(batch, heads, qt, qh, qw, dim)
    body = attn[:, :, skip:, skip:].reshape(batch, heads, qt, qh, qw, kt, kh, kw)
    if "h" in tables:
        rel_h = resized_rel_pos(tables["h"], 2 * max(qh, kh) - 1)[rel_pos_index(qh, kh)]
        rel_w = resized_rel_pos(tables["w"], 2 * max(qw, kw) - 1)[rel_pos_index(qw, kw)]
        bias_h = torch.einsum("bnthwc,hkc->bnthwk", grid_q, rel_h)
        bias_w = torch.einsum("bnthwc,wkc->bnthwk", grid_q, rel_w)
        body = body + bias_h[:, :, :, :, :, None, :, None] + bias_w[:, :, :, :, :, None, None, :]
    if "t" in tables:
        rel_t = resized_rel_pos(tables["t"], 2 * max(qt, kt) - 1)[rel_pos_index(qt, kt)]
        bias_t = torch.einsum("bnthwc,tkc->bnthwk", grid_q, rel_t)
        body = body + bias_t[:, :, :, :, :, :, None, None]
    attn = attn.clone()
    attn[:, :, skip:, skip:] = body.reshape(batch, heads, qt * qh * qw, kt * kh * kw)
    return attn


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim_hidden, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleAttention(nn.Module):
    """Multi-head attention whose q and k/v are pooled on the token grid (`attn` of a PySlowFast block)."""

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
        self.pool_first = cfg.pool_first
        self.separate_qkv = cfg.separate_qkv
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.mode = cfg.mode
        self.has_cls = cfg.cls_embed_on
        self.residual_pooling = cfg.residual_pooling
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        if self.pool_first or self.separate_qkv:
            self.q = nn.Linear(dim, dim_out, bias=cfg.qkv_bias)
            self.k = nn.Linear(dim, dim_out, bias=cfg.qkv_bias)
            self.v = nn.Linear(dim, dim_out, bias=cfg.qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim_out * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        kernel_q, kernel_kv = plan.kernel_q, plan.kernel_kv
        padding_q = tuple(k // 2 for k in kernel_q)
        padding_kv = tuple(k // 2 for k in kernel_kv)
        if math.prod(kernel_q) == 1 and math.prod(plan.stride_q) == 1:
            kernel_q = ()
        if math.prod(kernel_kv) == 1 and math.prod(plan.stride_kv) == 1:
            kernel_kv = ()
        self.pool_q: nn.Module | None = None
        self.pool_k: nn.Module | None = None
        self.pool_v: nn.Module | None = None
        self.norm_q: nn.Module | None = None
        self.norm_k: nn.Module | None = None
        self.norm_v: nn.Module | None = None
        if cfg.mode in ("avg", "max"):
            pool_op = nn.MaxPool3d if cfg.mode == "max" else nn.AvgPool3d
            if kernel_q:
                self.pool_q = pool_op(_triple(kernel_q), _triple(plan.stride_q), _triple(padding_q))
            if kernel_kv:
                args = (_triple(kernel_kv), _triple(plan.stride_kv), _triple(padding_kv))
                self.pool_k = pool_op(*args)
                self.pool_v = pool_op(*args)
        else:
            width = dim if self.pool_first else dim_out
            dim_conv = width // num_heads if cfg.mode == "conv" else width
            if kernel_q:
                self.pool_q = self._pool_conv(dim_conv, kernel_q, plan.stride_q, padding_q)
                self.norm_q = layer_norm(dim_conv)
            if kernel_kv:
                self.pool_k = self._pool_conv(dim_conv, kernel_kv, plan.stride_kv, padding_kv)
                self.norm_k = layer_norm(dim_conv)
                self.pool_v = self._pool_conv(dim_conv, kernel_kv, plan.stride_kv, padding_kv)
                self.norm_v = layer_norm(dim_conv)

        self.rel_pos_spatial = cfg.rel_pos_spatial
        self.rel_pos_temporal = cfg.rel_pos_temporal
        if self.rel_pos_spatial:
            if input_size[1] != input_size[2]:
                raise ValueError("arch 'mvit': relative spatial positions need a square token grid")
            size = input_size[1]
            q_size = size // plan.stride_q[1] if plan.stride_q else size
            kv_size = size // plan.stride_kv[1] if plan.stride_kv else size
            rel_sp_dim = 2 * max(q_size, kv_size) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(rel_sp_dim, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rel_sp_dim, head_dim))
        if self.rel_pos_temporal:
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))

    @staticmethod
    def _pool_conv(
        dim: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]
    ) -> nn.Conv3d:
        """Depthwise 3D conv that pools one of q, k, v."""
        return nn.Conv3d(
            dim,
            dim,
            _triple(kernel),
            stride=_triple(stride),
            padding=_triple(padding),
            groups=dim,
            bias=False,
        )

    def _heads(self, linear: nn.Linear, x: Tensor) -> Tensor:
        """(B, N, C) -> linear -> (B, heads, N, C_out / heads)."""
        batch, tokens, _ = x.shape
        return linear(x).reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, thw: Sequence[int]) -> tuple[Tensor, list[int]]:
        batch, tokens, _ = x.shape
        if self.pool_first:
            fold = 1 if self.mode == "conv_unshared" else self.num_heads
            q = k = v = x.reshape(batch, tokens, fold, -1).permute(0, 2, 1, 3)
        elif self.separate_qkv:
            q, k, v = self._heads(self.q, x), self._heads(self.k, x), self._heads(self.v, x)
        else:
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]

        q, q_thw = attention_pool(q, self.pool_q, thw, self.has_cls, self.norm_q)
        k, k_thw = attention_pool(k, self.pool_k, thw, self.has_cls, self.norm_k)
        v, _ = attention_pool(v, self.pool_v, thw, self.has_cls, self.norm_v)
        if self.pool_first:  # tokens were pooled per head group; now project them
            q = self._heads(self.q, q.permute(0, 2, 1, 3).reshape(batch, q.shape[2], -1))
            k = self._heads(self.k, k.permute(0, 2, 1, 3).reshape(batch, k.shape[2], -1))
            v = self._heads(self.v, v.permute(0, 2, 1, 3).reshape(batch, v.shape[2], -1))

        attn = (q * self.scale) @ k.transpose(-2, -1)
        tables: dict[str, Tensor] = {}
        if self.rel_pos_spatial:
            tables.update(h=self.rel_pos_h, w=self.rel_pos_w)
        if self.rel_pos_temporal:
            tables["t"] = self.rel_pos_t
        if tables:
            attn = add_rel_pos(attn, q, self.has_cls, q_thw, k_thw, tables)
        out = attn.softmax(dim=-1) @ v
        if self.residual_pooling:
            if self.has_cls:
                out = torch.cat((out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]), dim=2)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(batch, -1, self.dim_out)
        return self.proj(out), q_thw


class MultiScaleBlock(nn.Module):
    """norm1 -> pooled attention (+ pooled skip) -> norm2 -> MLP, with `proj` where the width changes."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_size: Sequence[int],
        plan: LayerPlan,
        cfg: MViTConfig,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.dim_mul_in_att = cfg.dim_mul_in_att
        self.has_cls = cfg.cls_embed_on
        att_dim = dim_out if cfg.dim_mul_in_att else dim
        self.norm1 = layer_norm(dim)
        self.attn = MultiScaleAttention(dim, att_dim, input_size, num_heads, plan, cfg)
        self.norm2 = layer_norm(att_dim)
        self.mlp = Mlp(att_dim, int(att_dim * cfg.mlp_ratio), dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        stride_skip = plan.stride_q
        self.pool_skip: nn.Module | None = None
        if stride_skip and math.prod(stride_skip) > 1:
            kernel_skip = tuple(s + 1 if s > 1 else s for s in stride_skip)
            self.pool_skip = nn.MaxPool3d(kernel_skip, stride_skip, tuple(k // 2 for k in kernel_skip))

    def forward(self, x: Tensor, thw: Sequence[int]) -> tuple[Tensor, list[int]]:
        x_norm = self.norm1(x)
        x_block, new_thw = self.attn(x_norm, thw)
        if self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        x_res, _ = attention_pool(x, self.pool_skip, thw, self.has_cls)
        x = x_res + x_block
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if not self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        return x + x_mlp, new_thw


class PatchEmbed(nn.Module):
    """`proj`: the strided 3D conv that cuts the clip into patch tokens."""

    def __init__(self, dim_out: int, kernel: Triple, stride: Triple, padding: Triple) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim_out, kernel, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TwoStreamFusion(nn.Module):
    """Fuse the two halves of the last dim (add / max / min / avg), or keep both (concat)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in _FUSE_MODES:
            raise ValueError(f"arch 'mvit': fusion mode must be one of {list(_FUSE_MODES)}, got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "concat":
            return x
        first, second = torch.chunk(x, 2, dim=2)
        if self.mode == "add":
            return first + second
        if self.mode == "avg":
            return (first + second) / 2
        if self.mode == "max":
            return torch.maximum(first, second)
        return torch.minimum(first, second)

"""3D ResNets (SlowFast, Slow, C2D, I3D with optional non-local blocks) with PySlowFast parameter names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models import fused as fused_ops
from pipeline.models.base import ClassifierHead, ClipShapeError, VideoModel, init_weights
from pipeline.models.fused import FusableBlock
from pipeline.models.layers import Bottleneck, ResBlock, batch_norm
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec
from pipeline.sampling import slow_pathway_indices

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

# Temporal kernel sizes: [stem, res2, res3, res4, res5], each a per-pathway list of per-block patterns
# that repeat over the blocks of the stage (PySlowFast's _TEMPORAL_KERNEL_BASIS).
TEMPORAL_KERNEL_BASIS: dict[str, tuple[tuple[tuple[int, ...], ...], ...]] = {
    "slowfast": (((1,), (5,)), ((1,), (3,)), ((1,), (3,)), ((3,), (3,)), ((3,), (3,))),
    "slow": (((1,),), ((1,),), ((1,),), ((3,),), ((3,),)),
    "c2d": (((1,),), ((1,),), ((1,),), ((1,),), ((1,),)),
    "i3d": (((5,),), ((3,),), ((3, 1),), ((3, 1),), ((1, 3),)),
}

# Temporal max-pool stride after res2 (PySlowFast's _POOL1); our "c2d" is their "c2d_nopool".
DEFAULT_TEMPORAL_POOL = {"slowfast": 1, "slow": 1, "c2d": 1, "i3d": 2}

# pytorchvideo's ResNet / SlowFast heads average res5 with a (T, 7, 7) window at stride 1 (sized for a
# 224 crop), then average the windows (pytorchvideo/models/slowfast.py `head_pool_kernel_sizes`,
# resnet.py `head_pool_kernel_size`); Ego4D's features read that mean (ego4d/features/models/slowfast.py
# `GetFv`). With a 256 crop res5 is 8x8: four overlapping windows, which weight the centre more.
PYTORCHVIDEO_POOL_SIZE = 7


def window_average(x: Tensor, size: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C): mean of the (T, size, size) stride-1 window averages (size clipped to H, W)."""
    kernel = (x.shape[2], min(size, x.shape[3]), min(size, x.shape[4]))
    return F.avg_pool3d(x, kernel, stride=1).flatten(2).mean(dim=2)


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture details of a 3D ResNet (the spec's builder_kwargs)."""

    depth: int = 50
    blocks: tuple[int, int, int, int] | None = None  # overrides depth (tiny test models)
    width_per_group: int = 64
    num_groups: int = 1
    beta_inv: int = 8  # slowfast: channel ratio slow / fast
    fusion_conv_channel_ratio: int = 2
    fusion_kernel: int = 5
    # Per stage (res2..res5), per pathway: how many leading blocks keep the temporal kernel; rest use 1.
    num_block_temp_kernel: tuple[tuple[int, ...], ...] | None = None
    temporal_pool: int | None = None  # None: the arch default
    # Per stage (res2..res5), per pathway: indices of blocks followed by a non-local block.
    nonlocal_location: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    nonlocal_instantiation: str = "softmax"  # or "dot_product"
    nonlocal_pool: tuple[int, int, int] = (1, 2, 2)

    @classmethod
    def from_kwargs(cls, arch: str, kwargs: dict) -> ResNetConfig:
        """Build from builder_kwargs; an unknown key is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"arch {arch!r}: unknown builder option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def stage_blocks(self) -> tuple[int, int, int, int]:
        """Number of residual blocks in res2..res5."""
        if self.blocks is not None:
            return tuple(self.blocks)  # type: ignore[return-value]
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {self.depth}; choose from {sorted(STAGE_BLOCKS)}")
        return STAGE_BLOCKS[self.depth]


def block_temporal_kernels(pattern: Sequence[int], num_blocks: int, num_with_kernel: int) -> list[int]:
    """Temporal kernel of each block: `pattern` repeated over the first `num_with_kernel` blocks, then 1."""
    if not 0 <= num_with_kernel <= num_blocks:
        raise ValueError(f"num_block_temp_kernel {num_with_kernel} outside [0, {num_blocks}]")
    repeated = (list(pattern) * num_blocks)[:num_with_kernel]
    return repeated + [1] * (num_blocks - num_with_kernel)


class NonLocal(nn.Module):
    """Non-local block (Wang et al. 2018): x + bn(conv_out(attention(theta, phi) @ g))."""

    def __init__(self, dim: int, dim_inner: int, pool: Sequence[int], instantiation: str) -> None:
        super().__init__()
        if instantiation not in ("softmax", "dot_product"):
            raise ValueError(f"unknown non-local instantiation {instantiation!r}; use softmax or dot_product")
        self.dim_inner = dim_inner
        self.instantiation = instantiation
        self.pool_size = tuple(pool)
        self.conv_theta = nn.Conv3d(dim, dim_inner, 1)
        self.conv_phi = nn.Conv3d(dim, dim_inner, 1)
        self.conv_g = nn.Conv3d(dim, dim_inner, 1)
        self.conv_out = nn.Conv3d(dim_inner, dim, 1)
        self.bn = batch_norm(dim)

    def attend(self, theta: Tensor, phi: Tensor, g: Tensor) -> Tensor:
        """g (N, Ci, P) weighted by the affinities of theta (N, Ci, THW) and phi (N, Ci, P): (N, Ci, THW).

        Always float32: under fp16 autocast the raw product theta^T phi (a sum over Ci channels) overflows
        fp16's 65504 for large activations before it is scaled. fp32 runs compute exactly what they did.
        """
        with torch.autocast(theta.device.type, enabled=False):
            affinity = torch.bmm(theta.float().transpose(1, 2), phi.float())  # (N, THW, P)
            if self.instantiation == "softmax":
                affinity = torch.softmax(affinity * self.dim_inner**-0.5, dim=2)
            else:
                affinity = affinity / affinity.shape[2]
            return torch.bmm(g.float(), affinity.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, h, w = x.shape
        theta = self.conv_theta(x).flatten(2)  # (N, Ci, THW)
        pooled = F.max_pool3d(x, self.pool_size, self.pool_size) if max(self.pool_size) > 1 else x
        phi = self.conv_phi(pooled).flatten(2)  # (N, Ci, P)
        g = self.conv_g(pooled).flatten(2)  # (N, Ci, P)
        y = self.attend(theta, phi, g).view(n, self.dim_inner, t, h, w)
        return x + self.bn(self.conv_out(y))


class StemUnit(FusableBlock):
    """Stem of one pathway: Tx7x7 conv (spatial stride 2), BN, ReLU, 1x3x3 max pool (stride 2)."""

    def __init__(self, dim_in: int, dim_out: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            dim_in,
            dim_out,
            (temporal_kernel, 7, 7),
            stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3),
            bias=False,
        )
        self.bn = batch_norm(dim_out)

    def norms(self) -> list[nn.Module]:
        return [self.bn]

    def fused_convs(self) -> list[nn.Module]:
        return [self.conv]

    def forward(self, x: Tensor) -> Tensor:
        x = fused_ops.conv_relu(self.conv, x) if self.fused else F.relu(self.bn(self.conv(x)), inplace=True)
        return F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))


class Stem(nn.Module):
    """Per-pathway stems, named `pathway{p}_stem`."""

    def __init__(self, dims_out: Sequence[int], temporal_kernels: Sequence[int]) -> None:
        super().__init__()
        self.num_pathways = len(dims_out)
        for p, (dim, tk) in enumerate(zip(dims_out, temporal_kernels, strict=True)):
            self.add_module(f"pathway{p}_stem", StemUnit(3, dim, tk))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [getattr(self, f"pathway{p}_stem")(x) for p, x in enumerate(xs)]


class ResStage(nn.Module):
    """One stage (res2..res5) for every pathway: blocks `pathway{p}_res{i}`, `pathway{p}_nonlocal{i}`."""

    def __init__(
        self,
        dims_in: Sequence[int],
        dims_out: Sequence[int],
        dims_inner: Sequence[int],
        temporal_kernels: Sequence[Sequence[int]],
        stride: int,
        num_groups: int,
        nonlocal_location: Sequence[Sequence[int]],
        nonlocal_pool: Sequence[int],
        nonlocal_instantiation: str,
    ) -> None:
        super().__init__()
        self.order: list[list[str]] = []
        for p, kernels in enumerate(temporal_kernels):
            names = []
            for i, tk in enumerate(kernels):
                dim_in = dims_in[p] if i == 0 else dims_out[p]
                block_stride = stride if i == 0 else 1
                branch2 = Bottleneck(dim_in, dims_out[p], dims_inner[p], tk, block_stride, num_groups)
                block = ResBlock(dim_in, dims_out[p], block_stride, branch2)
                self.add_module(f"pathway{p}_res{i}", block)
                names.append(f"pathway{p}_res{i}")
                if i in nonlocal_location[p]:
                    nln = NonLocal(dims_out[p], dims_out[p] // 2, nonlocal_pool, nonlocal_instantiation)
                    self.add_module(f"pathway{p}_nonlocal{i}", nln)
                    names.append(f"pathway{p}_nonlocal{i}")
            self.order.append(names)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out = []
        for x, names in zip(xs, self.order, strict=True):
            for name in names:
                x = getattr(self, name)(x)
            out.append(x)
        return out


def cpu_bf16_autocast() -> bool:
    """True inside torch.autocast("cpu", dtype=torch.bfloat16)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class FastToSlowFusion(FusableBlock):
    """Lateral connection: time-strided conv on the fast pathway, concatenated onto the slow one."""

    def __init__(self, dim_fast: int, channel_ratio: int, kernel: int, alpha: int) -> None:
        super().__init__()
        self.conv_f2s = nn.Conv3d(
            dim_fast,
            dim_fast * channel_ratio,
            (kernel, 1, 1),
            stride=(alpha, 1, 1),
            padding=(kernel // 2, 0, 0),
            bias=False,
        )
        self.bn = batch_norm(dim_fast * channel_ratio)
        # oneDNN 3.12's AMX bf16 conv kernel (torch 2.13) sizes its scratch buffer for a stride no larger
        # than the kernel and corrupts the heap otherwise (uxlfoundation/oneDNN#5494): a lateral conv whose
        # time stride exceeds its kernel (SlowFast 4x16: kernel 5, stride 8) runs in fp32 under CPU bf16.
        self.fp32_under_cpu_bf16 = alpha > kernel

    def norms(self) -> list[nn.Module]:
        return [self.bn]

    def fused_convs(self) -> list[nn.Module]:
        return [self.conv_f2s]

    def fp32_convs(self) -> list[nn.Module]:
        return [self.conv_f2s] if self.fp32_under_cpu_bf16 else []

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        slow, fast = xs
        if self.fused:
            fused = fused_ops.conv_relu(self.conv_f2s, fast).to(slow.dtype)
        elif self.fp32_under_cpu_bf16 and cpu_bf16_autocast():
            with torch.autocast("cpu", enabled=False):
                fused = F.relu(self.bn(self.conv_f2s(fast.float())), inplace=True).to(slow.dtype)
        else:
            fused = F.relu(self.bn(self.conv_f2s(fast)), inplace=True)
        return [torch.cat([slow, fused], dim=1), fast]


class ResNet3D(VideoModel):
    """SlowFast / Slow / C2D / I3D backbone + global average pooling + classifier head."""

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch not in TEMPORAL_KERNEL_BASIS:
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not a 3D ResNet")
        cfg = ResNetConfig.from_kwargs(spec.arch, dict(spec.builder_kwargs))
        self.config = cfg
        self.two_pathway = spec.arch == "slowfast"
        self.num_pathways = 2 if self.two_pathway else 1
        basis = TEMPORAL_KERNEL_BASIS[spec.arch]
        blocks = cfg.stage_blocks()
        pool = cfg.temporal_pool if cfg.temporal_pool is not None else DEFAULT_TEMPORAL_POOL[spec.arch]
        self.temporal_pool = pool

        w = cfg.width_per_group
        inner = cfg.num_groups * cfg.width_per_group

        def per_pathway(slow_dim: int) -> list[int]:
            if not self.two_pathway:
                return [slow_dim]
            return [slow_dim, max(1, slow_dim // cfg.beta_inv)]

        stem_dims = per_pathway(w)
        self.s1 = Stem(stem_dims, [basis[0][p][0] for p in range(self.num_pathways)])
        dims_in = stem_dims
        if self.two_pathway:
            self.s1_fuse = self._fusion(stem_dims[1], spec, cfg)
            dims_in = [stem_dims[0] + stem_dims[1] * cfg.fusion_conv_channel_ratio, stem_dims[1]]

        temp_counts = cfg.num_block_temp_kernel or tuple((n,) * self.num_pathways for n in blocks)
        locations = cfg.nonlocal_location or tuple(((),) * self.num_pathways for _ in blocks)
        if len(temp_counts) != 4 or len(locations) != 4:
            raise ValueError(f"model {spec.name!r}: num_block_temp_kernel / nonlocal_location need 4 stages")
        for stage in range(4):
            dims_out = per_pathway(w * 4 * 2**stage)
            dims_inner = per_pathway(inner * 2**stage)
            kernels = [
                block_temporal_kernels(basis[stage + 1][p], blocks[stage], temp_counts[stage][p])
                for p in range(self.num_pathways)
            ]
            res_stage = ResStage(
                dims_in,
                dims_out,
                dims_inner,
                kernels,
                stride=1 if stage == 0 else 2,
                num_groups=cfg.num_groups,
                nonlocal_location=locations[stage],
                nonlocal_pool=cfg.nonlocal_pool,
                nonlocal_instantiation=cfg.nonlocal_instantiation,
            )
            self.add_module(f"s{stage + 2}", res_stage)
            dims_in = dims_out
            if self.two_pathway and stage < 3:
                self.add_module(f"s{stage + 2}_fuse", self._fusion(dims_out[1], spec, cfg))
                dims_in = [dims_out[0] + dims_out[1] * cfg.fusion_conv_channel_ratio, dims_out[1]]

        self.feature_dim = sum(dims_in)
        self._record_default_dim(self.feature_dim)
        self.head = ClassifierHead(self.feature_dim, spec.num_classes)
        init_weights(self)

    @staticmethod
    def _fusion(dim_fast: int, spec: ModelSpec, cfg: ResNetConfig) -> FastToSlowFusion:
        assert spec.alpha is not None
        return FastToSlowFusion(dim_fast, cfg.fusion_conv_channel_ratio, cfg.fusion_kernel, spec.alpha)

    def pathways(self, clips: Tensor) -> list[Tensor]:
        """SlowFast: [frames linspace(0, T-1, T//alpha) of clips, clips]; otherwise [clips]."""
        self.check_clips(clips)
        if not self.two_pathway:
            return [clips]
        assert self.spec.alpha is not None
        index = torch.tensor(slow_pathway_indices(clips.shape[2], self.spec.alpha), device=clips.device)
        return [clips.index_select(2, index), clips]

    def _check_inputs(self, inputs: Sequence[Tensor]) -> None:
        """ClipShapeError unless there is one input per pathway with slow T * alpha == fast T."""
        if len(inputs) != self.num_pathways:
            raise ClipShapeError(
                f"model {self.spec.name!r}: expected {self.num_pathways} pathway input(s), got {len(inputs)}"
            )
        alpha = self.spec.alpha or 1
        if self.two_pathway and inputs[0].shape[2] * alpha != inputs[1].shape[2]:
            raise ClipShapeError(
                f"model {self.spec.name!r}: slow T={inputs[0].shape[2]} times alpha={alpha} "
                f"must equal fast T={inputs[1].shape[2]}"
            )

    def backbone(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Per-pathway outputs of res5, (B, C_p, T_p, H/32, W/32)."""
        self._check_inputs(inputs)
        x = list(inputs)
        x = self.s1(x)
        if self.two_pathway:
            x = self.s1_fuse(x)
        for stage in range(2, 6):
            x = getattr(self, f"s{stage}")(x)
            if stage == 2 and self.temporal_pool > 1:
                x = [F.max_pool3d(t, (self.temporal_pool, 1, 1), (self.temporal_pool, 1, 1)) for t in x]
            if self.two_pathway and stage < 5:
                x = getattr(self, f"s{stage}_fuse")(x)
        return x

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """Pooled res5 output of each pathway, slow then fast: (B, feature_dim).

        Layer "pool": the global average over (T, H, W). Layer "pool_7x7": pytorchvideo's head pooling.
        """
        if self.feature_layer == "pool_7x7":
            return torch.cat(
                [window_average(t, PYTORCHVIDEO_POOL_SIZE) for t in self.backbone(inputs)], dim=1
            )
        return torch.cat([t.mean(dim=(2, 3, 4)) for t in self.backbone(inputs)], dim=1)

    def logits(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        """The classifier (`head.projection*`) applied to pooled features."""
        return self.head(features)


# --------------------------------------------------------------------------- zoo entries

_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
# EPIC-KITCHENS-100 SlowFast release (epic-kitchens/epic-kitchens-slowfast README), direct-download form.
_EPIC_URL = "https://www.dropbox.com/s/uxb6i2xkn91xqzi/SlowFast.pyth?dl=1"
# MODEL_ZOO.md "Multigrid Training" (SSv2, Charades, Kinetics stepwise) and "AVA" (Kinetics-600 pre-training).
_MULTIGRID_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/pyslowfast/model_zoo/multigrid/model_zoo/"
_AVA_PRETRAIN_ZOO = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/ava/pretrain/"
# RESNET.NUM_BLOCK_TEMP_KERNEL of the R50 configs and the "R101_50_50" ones (R50's temporal kernels).
_TEMP_KERNEL_50 = ((3, 3), (4, 4), (6, 6), (3, 3))


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


def _register_defaults() -> None:
    """The PySlowFast Kinetics-400 ResNets, the EPIC-KITCHENS SlowFast, and two tiny test models."""
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


register_arch("slowfast", ResNet3D)
register_arch("slow", ResNet3D)
register_arch("c2d", ResNet3D)
register_arch("i3d", ResNet3D)
_register_defaults()
_register_dataset_zoo()
_register_pytorchvideo()

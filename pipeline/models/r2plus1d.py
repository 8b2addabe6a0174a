"""R(2+1)D-34, R(2+1)D-18 and R3D-18 (Tran et al. 2018) as TSP (Alwassel et al., ICCVW 2021) builds and
releases them: the ActivityNet / THUMOS14 encoders behind the TSP features of ActionFormer, TriDet, OpenTAD.

The layout is torchvision's `VideoResNet`, and so are the parameter names of the backbone (`stem.*`,
`layer1..4.*`): a stem, four layers of basic blocks (two 3x3x3 convs, or their (2+1)D factorisation, each
followed by batch norm), strides 1, 2, 2, 2 in time and space alike, a 1x1x1 projection shortcut where the
shape changes, then a global average: a 512-d feature for a 16x112x112 clip.

- R(2+1)D: each 3x3x3 conv is a 1x3x3 spatial conv to `mid` channels, BN, ReLU, then a 3x1x1 temporal conv,
  with mid = (in * out * 27) // (in * 9 + 3 * out) (the parameter count of the 3x3x3 conv). torchvision's
  R(2+1)D-18 computes mid once per block from the block's (in, planes) and gives it to both convs
  (`mid_rule="block"`); TSP's R(2+1)D-34 computes it for each conv from that conv's own in / out
  (`mid_rule="conv"`, TSP models/backbone.py Conv2Plus1D), as the Caffe2 / IG65M weights it starts from.
  The stem is 1x7x7 (stride 1, 2, 2) to 45 channels, BN, ReLU, 3x1x1 to 64, BN, ReLU.
- R3D: plain 3x3x3 convs; stem 3x7x7 (stride 1, 2, 2) to 64, BN, ReLU.
- Batch norm: torchvision's defaults (eps 1e-5, momentum 0.1) for R(2+1)D-18 and R3D-18; TSP's R(2+1)D-34
  sets eps 1e-3 and momentum 0.9 on every BatchNorm3d (backbone.py), the Caffe2 values.

Heads (TSP models/model.py `Model`): a TAC checkpoint has one classifier (`fc`, ours `head.projection`);
a TSP checkpoint has the action-label head (`fc1`, ours `head.projection_action`) and the temporal-region
head (`fc2`, ours `head.projection_region`, 2 classes: action / no action). With a global video feature
(GVF, the released "max_gvf" / "avg_gvf" models) the region head reads the clip feature concatenated with
the video's GVF (1024 inputs), which a clip alone does not give: such models' `logits` hold the action head
only. The checkpoint names are mapped to ours by `pipeline.weights.tsp`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

from torch import Tensor, nn

from pipeline.models import fused as fused_ops
from pipeline.models.base import ClassifierHead, VideoModel, init_weights
from pipeline.models.fused import FusableBlock
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
MID_RULES = ("block", "conv")
ARCHS = ("r2plus1d", "r3d")


def mid_channels(dim_in: int, dim_out: int) -> int:
    """Width between a (2+1)D conv's spatial and temporal parts: the 3x3x3 conv's parameter count kept."""
    return (dim_in * dim_out * 27) // (dim_in * 9 + 3 * dim_out)


@dataclass(frozen=True)
class VideoResNetConfig:
    """Architecture details (the spec's builder_kwargs)."""

    depth: int = 18  # 18: blocks (2, 2, 2, 2); 34: (3, 4, 6, 3)
    blocks: tuple[int, int, int, int] | None = None  # overrides depth (tiny test models)
    width: int = 64  # channels of layer1 (doubled in each later layer)
    stem_mid: int = 45  # R(2+1)D stem: channels between its 1x7x7 and 3x1x1 convs
    mid_rule: str = "block"  # R(2+1)D: "block" (torchvision) or "conv" (TSP's R(2+1)D-34), see above
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    gvf: bool = False  # TSP heads: the region head reads [clip feature, global video feature]

    @classmethod
    def from_kwargs(cls, arch: str, kwargs: dict) -> VideoResNetConfig:
        """Build from builder_kwargs; an unknown key or value is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"arch {arch!r}: unknown builder option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**kwargs)
        if cfg.mid_rule not in MID_RULES:
            raise ValueError(f"arch {arch!r}: mid_rule must be one of {MID_RULES}, got {cfg.mid_rule!r}")
        if cfg.blocks is None and cfg.depth not in STAGE_BLOCKS:
            raise ValueError(
                f"arch {arch!r}: unsupported depth {cfg.depth}; choose from {sorted(STAGE_BLOCKS)}"
            )
        return cfg

    def stage_blocks(self) -> tuple[int, int, int, int]:
        """Number of basic blocks in layer1..layer4."""
        if self.blocks is not None:
            return tuple(self.blocks)  # type: ignore[return-value]
        return STAGE_BLOCKS[self.depth]


class Conv2Plus1D(nn.Sequential):
    """A 3x3x3 conv factorised: `0` 1x3x3 (spatial stride), `1` BN, `2` ReLU, `3` 3x1x1 (temporal stride)."""

    def __init__(
        self, dim_in: int, dim_out: int, mid: int, stride: int, norm: Callable[[int], nn.Module]
    ) -> None:
        super().__init__(
            nn.Conv3d(dim_in, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            norm(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, dim_out, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
        )


class Stem(nn.Sequential, FusableBlock):
    """The stem, torchvision's Sequential (R(2+1)D: 1x7x7 conv, BN, ReLU, 3x1x1 conv, BN, ReLU; R3D: 3x7x7
    conv, BN, ReLU); once its norms are folded, each conv runs fused with its ReLU."""

    def norms(self) -> list[nn.Module]:
        return [self[i] for i in range(1, len(self), 3)]

    def fused_convs(self) -> list[nn.Module]:
        return [self[i] for i in range(0, len(self), 3)]

    def forward(self, x: Tensor) -> Tensor:
        if not self.fused:
            return super().forward(x)
        for conv in self.fused_convs():
            assert isinstance(conv, nn.Conv3d)
            x = fused_ops.conv_relu(conv, x)
        return x


class BasicBlock(FusableBlock):
    """relu(conv2(conv1(x)) + shortcut(x)): `conv1` = (conv, BN, ReLU), `conv2` = (conv, BN), `downsample`
    = (1x1x1 conv with the block's stride in T, H and W, BN) where the shape changes.

    Fused (norms folded): every conv of conv1 and conv2 runs with the ReLU after it in one oneDNN call, the
    last one with the residual add as well; the downsample runs plain."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        stride: int,
        factorised: bool,
        mid_rule: str,
        norm: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, conv_stride: int) -> nn.Module:
            if not factorised:
                return nn.Conv3d(c_in, c_out, 3, stride=conv_stride, padding=1, bias=False)
            mid = mid_channels(dim_in, dim_out) if mid_rule == "block" else mid_channels(c_in, c_out)
            return Conv2Plus1D(c_in, c_out, mid, conv_stride, norm)

        self.conv1 = nn.Sequential(conv(dim_in, dim_out, stride), norm(dim_out), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(dim_out, dim_out, 1), norm(dim_out))
        self.downsample: nn.Module | None = None
        if stride != 1 or dim_in != dim_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False), norm(dim_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def _steps(self) -> list[tuple[nn.Module, nn.Module]]:
        """(conv, the norm after it) of conv1 and conv2 in order; a Conv2Plus1D gives two."""
        steps = []
        for seq in (self.conv1, self.conv2):
            first, norm = seq[0], seq[1]
            if isinstance(first, Conv2Plus1D):
                steps += [(first[0], first[1]), (first[3], norm)]
            else:
                steps.append((first, norm))
        return steps

    def norms(self) -> list[nn.Module]:
        return [norm for _, norm in self._steps()]

    def fused_convs(self) -> list[nn.Module]:
        return [conv for conv, _ in self._steps()]

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.fused:  # relu after every conv, the last one's with the residual added first
            *convs, last = self.fused_convs()
            y = x
            for conv in convs:
                assert isinstance(conv, nn.Conv3d)
                y = fused_ops.conv_relu(conv, y)
            assert isinstance(last, nn.Conv3d)
            return fused_ops.conv_add_relu(last, y, shortcut)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class TSPHead(nn.Module):
    """TSP's two classifiers: `projection_action` on the clip feature, `projection_region` on the clip
    feature (or, with a GVF, on [clip feature, global video feature]: twice as many inputs)."""

    def __init__(self, dim_in: int, action_classes: int, region_classes: int, gvf: bool) -> None:
        super().__init__()
        self.gvf = gvf
        self.projection_action = nn.Linear(dim_in, action_classes)
        self.projection_region = nn.Linear(2 * dim_in if gvf else dim_in, region_classes)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """{"action": ..., "region": ...}; "action" only with a GVF (the clip does not give the video's)."""
        heads = {"action": self.projection_action(features)}
        if not self.gvf:
            heads["region"] = self.projection_region(features)
        return heads


class VideoResNet(VideoModel):
    """R(2+1)D / R3D backbone (torchvision's names) + global average pooling + TAC or TSP classifier(s)."""

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch not in ARCHS:
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not one of {ARCHS}")
        cfg = VideoResNetConfig.from_kwargs(spec.arch, dict(spec.builder_kwargs))
        self.config = cfg
        blocks = cfg.stage_blocks()
        # The depth a checkpoint's block layout must match (None for a custom layout).
        self.depth: int | None = next((d for d, b in STAGE_BLOCKS.items() if b == blocks), None)
        norm = partial(nn.BatchNorm3d, eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        factorised = spec.arch == "r2plus1d"
        w = cfg.width
        if factorised:
            self.stem = Stem(
                nn.Conv3d(3, cfg.stem_mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                norm(cfg.stem_mid),
                nn.ReLU(inplace=True),
                nn.Conv3d(cfg.stem_mid, w, (3, 1, 1), padding=(1, 0, 0), bias=False),
                norm(w),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = Stem(
                nn.Conv3d(3, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                norm(w),
                nn.ReLU(inplace=True),
            )
        dim_in = w
        for i, n in enumerate(blocks):
            dim_out = w * 2**i
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(dim_in, dim_out, stride, factorised, cfg.mid_rule, norm)]
            layer += [BasicBlock(dim_out, dim_out, 1, factorised, cfg.mid_rule, norm) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            dim_in = dim_out
        self.feature_dim = dim_in
        self._record_default_dim(self.feature_dim)
        self.head: nn.Module
        if isinstance(spec.num_classes, int):
            self.head = ClassifierHead(self.feature_dim, spec.num_classes)
        else:
            classes = dict(spec.num_classes)
            if set(classes) != {"action", "region"}:
                raise ValueError(
                    f"model {spec.name!r}: num_classes must be an int (TAC) or have the keys 'action' and "
                    f"'region' (TSP), got {sorted(classes)}"
                )
            self.head = TSPHead(self.feature_dim, classes["action"], classes["region"], cfg.gvf)
        init_weights(self)

    def backbone(self, x: Tensor) -> Tensor:
        """Output of layer4, (B, 8 * width, T/8, H/16, W/16) rounded up (T/8: layers 2-4 stride time)."""
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """Layer "pool": layer4's global average over (T, H, W), what TSP extracts (its `fc` is emptied)."""
        (x,) = inputs
        return self.backbone(x).mean(dim=(2, 3, 4))

    def logits(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        """TAC: the classifier's scores; TSP: {"action", "region"} ("action" only for GVF models)."""
        return self.head(features)


# --------------------------------------------------------------------------- zoo entries

# TSP extract_features/README.md, "Released Pretrained Models" (the same URLs as extract_features.py
# MODEL_URLS). Each file name ends in the first 8 hex digits of its sha256 (torch.hub's check_hash).
_RELEASES = "https://github.com/HumamAlwassel/TSP/releases/download/model_weights/"
# Kinetics-400 normalisation of torchvision's video models, used by TSP for training and extraction
# (train.py, extract_features.py: T.Normalize).
_MEAN = (0.43216, 0.394666, 0.37645)
_STD = (0.22803, 0.22145, 0.216989)
_BACKBONES: dict[str, tuple[str, dict[str, object]]] = {
    "r2plus1d_34": ("r2plus1d", {"depth": 34, "mid_rule": "conv", "bn_eps": 1e-3, "bn_momentum": 0.9}),
    "r2plus1d_18": ("r2plus1d", {"depth": 18}),
    "r3d_18": ("r3d", {"depth": 18}),
}
# Action classes: ActivityNet v1.3 200, THUMOS14 20 (TSP data/*_action_label_mapping.json); the region
# head has 2 (data/*_temporal_region_label_mapping.json: "Action", "No action").
_ACTION_CLASSES = {"activitynet": 200, "thumos14": 20, "kinetics": 400}
_LABELS = {"activitynet": "activitynet200", "thumos14": "thumos14", "kinetics": None}


# The 13 released checkpoints, in the README's order: main TSP models, main TAC baselines, GVF and backbone
# ablations. A file name reads <backbone>-<tsp|tac>_on_<dataset>[-<max|avg|no>_gvf]-...-<sha256[:8]>.pth.
_RELEASE_FILES = (
    "r2plus1d_34-tsp_on_activitynet-max_gvf-backbone_lr_0.0001-fc_lr_0.002-epoch_5-0d2cf854.pth",
    "r2plus1d_34-tsp_on_thumos14-max_gvf-backbone_lr_0.0001-fc_lr_0.004-epoch_4-e6a30b2f.pth",
    "r2plus1d_34-tac_on_activitynet-backbone_lr_0.0001-fc_lr_0.002-epoch_5-98ccac94.pth",
    "r2plus1d_34-tac_on_thumos14-backbone_lr_0.00001-fc_lr_0.002-epoch_3-54b5c8aa.pth",
    "r2plus1d_34-tac_on_kinetics-0547130e.pth",
    "r2plus1d_34-tsp_on_activitynet-avg_gvf-backbone_lr_0.0001-fc_lr_0.004-epoch_5-8b74eaa2.pth",
    "r2plus1d_34-tsp_on_activitynet-no_gvf-backbone_lr_0.0001-fc_lr_0.004-epoch_5-fb38fdd2.pth",
    "r2plus1d_18-tsp_on_activitynet-max_gvf-backbone_lr_0.0001-fc_lr_0.002-epoch_6-22835b73.pth",
    "r2plus1d_18-tac_on_activitynet-backbone_lr_0.0001-fc_lr_0.004-epoch_5-9f56941a.pth",
    "r2plus1d_18-tac_on_kinetics-76ce975c.pth",
    "r3d_18-tsp_on_activitynet-max_gvf-backbone_lr_0.0001-fc_lr_0.002-epoch_6-85584422.pth",
    "r3d_18-tac_on_activitynet-backbone_lr_0.001-fc_lr_0.01-epoch_5-31fd6e95.pth",
    "r3d_18-tac_on_kinetics-dcd952c6.pth",
)


def release_spec(file: str) -> ModelSpec:
    """The spec of one released checkpoint, named as TSP names it with "_" for "-" and "_on" dropped;
    TSP's names leave the main models' max_gvf out (r2plus1d_34-tsp_on_activitynet: the max_gvf file)."""
    backbone, task, *rest = file.removesuffix(".pth").split("-")
    method, _, dataset = task.partition("_on_")
    gvf = rest[0] if rest and rest[0].endswith("_gvf") else None
    tsp = method == "tsp"
    arch, options = _BACKBONES[backbone]
    classes = _ACTION_CLASSES[dataset]
    return ModelSpec(
        name=f"{backbone}_{method}_{dataset}" + (f"_{gvf}" if gvf in ("avg_gvf", "no_gvf") else ""),
        arch=arch,
        # 16 consecutive frames at TSP's 15 fps (every 2nd frame of the 30 fps standardised video).
        num_frames=16,
        sampling_rate=1,
        crop_size=112,
        # TSP squashes every frame to 171 x 128 (W x H, whatever its aspect) before the 112 centre crop:
        # data.resize.mode=fixed, size [171, 128], which data=activitynet_tsp / thumos14_tsp set. A spec has
        # no fixed-size field: 128 is the height TSP resizes to, what resize.mode=short_side would use (it
        # keeps the aspect: 227 x 128 for 16:9 frames, not TSP's squash).
        short_side=128,
        feature_dim=512,
        mean=_MEAN,
        std=_STD,
        num_classes={"action": classes, "region": 2} if tsp else classes,
        zoo_url=_RELEASES + file,
        zoo_filename=file,
        labels=None if tsp else _LABELS[dataset],
        builder_kwargs={**options, **({"gvf": gvf != "no_gvf"} if tsp else {})},
    )


def _register_tiny() -> None:
    """A small R(2+1)D with TSP's two heads (and TSP-34's mid rule and eps) for end-to-end tests."""
    register_model(
        ModelSpec(
            name="r2plus1d_tiny",
            arch="r2plus1d",
            num_frames=4,
            sampling_rate=1,
            crop_size=32,
            short_side=32,
            feature_dim=32,
            mean=_MEAN,
            std=_STD,
            num_classes={"action": 10, "region": 2},
            labels=None,
            builder_kwargs={
                "blocks": (1, 1, 1, 1),
                "width": 4,
                "stem_mid": 3,
                "mid_rule": "conv",
                "bn_eps": 1e-3,
                "bn_momentum": 0.9,
                "gvf": False,
            },
        )
    )


register_arch("r2plus1d", VideoResNet)
register_arch("r3d", VideoResNet)
for _file in _RELEASE_FILES:
    register_model(release_spec(_file))
_register_tiny()

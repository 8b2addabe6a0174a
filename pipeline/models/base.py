"""The VideoModel interface shared by every architecture, plus the classifier head."""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from pipeline.models.spec import ModelSpec


class ClipShapeError(ValueError):
    """A clip batch whose shape the model cannot take."""


class ClassifierHead(nn.Module):
    """Linear classifier(s) on the pooled feature: `projection`, or `projection_{task}` per task."""

    def __init__(self, dim_in: int, num_classes: int | dict[str, int]) -> None:
        super().__init__()
        self.tasks: tuple[str, ...] = ()
        if isinstance(num_classes, int):
            self.projection = nn.Linear(dim_in, num_classes, bias=True)
        else:
            self.tasks = tuple(num_classes)
            for task, n in num_classes.items():
                self.add_module(f"projection_{task}", nn.Linear(dim_in, n, bias=True))

    def forward(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        if not self.tasks:
            return self.projection(features)
        return {task: getattr(self, f"projection_{task}")(features) for task in self.tasks}


class VideoModel(nn.Module):
    """Base class: clips (B, 3, T, H, W) -> per-pathway inputs -> pooled features -> logits."""

    spec: ModelSpec
    feature_layer: str
    feature_dim: int
    # Parameter-name prefixes of the classifier: what strict loading may skip when logits are not asked for.
    head_prefixes: tuple[str, ...] = ("head.projection",)

    def __init__(self, spec: ModelSpec, feature_layer: str | None = None) -> None:
        super().__init__()
        layer = feature_layer or spec.default_feature_layer
        if layer not in spec.feature_layers:
            raise ValueError(
                f"model {spec.name!r}: unknown feature layer {layer!r}; choose from {list(spec.feature_layers)}"
            )
        self.spec = spec
        self.feature_layer = layer

    def _record_default_dim(self, default_dim: int) -> None:
        """Keep spec.feature_dim true to the built architecture (it changes with width overrides)."""
        if self.spec.feature_dim != default_dim:
            self.spec = dataclasses.replace(self.spec, feature_dim=default_dim)

    def check_clips(self, clips: Tensor) -> None:
        """Raise ClipShapeError unless clips is (B, 3, T, H, W) with a usable T."""
        if clips.dim() != 5 or clips.shape[1] != 3:
            raise ClipShapeError(
                f"model {self.spec.name!r}: clips must be (B, 3, T, H, W), got {tuple(clips.shape)}"
            )
        alpha = self.spec.alpha or 1
        if clips.shape[2] < alpha or clips.shape[2] % alpha:
            raise ClipShapeError(
                f"model {self.spec.name!r}: T={clips.shape[2]} frames must be a positive multiple of alpha={alpha}"
            )

    def pathways(self, clips: Tensor) -> list[Tensor]:
        """Split a normalised clip batch into the per-pathway inputs (one pathway by default)."""
        self.check_clips(clips)
        return [clips]

    def forward_features(self, inputs: list[Tensor]) -> Tensor:
        """Backbone + global pooling: (B, feature_dim)."""
        raise NotImplementedError

    def logits(self, features: Tensor) -> Tensor | dict[str, Tensor]:
        """Classifier scores (before softmax) from features of the selected layer."""
        raise NotImplementedError

    def forward(self, clips: Tensor) -> Tensor:
        return self.forward_features(self.pathways(clips))


def init_weights(model: nn.Module, fc_std: float = 0.01) -> None:
    """MSRA-style init (fan_out normal convs, unit BN, small normal FC) so random models are well scaled."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=fc_std)
            nn.init.zeros_(m.bias)

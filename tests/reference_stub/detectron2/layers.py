"""Test-only stand-in for detectron2.layers: ROIAlign is referenced but never used."""

from torch import nn


class ROIAlign(nn.Module):
    """Placeholder; detection heads are never built by our tests."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("ROIAlign stand-in: detection is not supported in tests")

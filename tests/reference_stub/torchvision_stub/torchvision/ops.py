"""Test-only stand-in for torchvision.ops: RoIAlign is referenced by pytorchvideo's heads, never used."""

from torch import nn


class RoIAlign(nn.Module):
    """Placeholder; detection heads are never built by our tests."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("RoIAlign stand-in: detection is not supported in tests")

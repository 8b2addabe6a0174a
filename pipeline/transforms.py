"""Spatial transforms of decoded frames (resize, crops, channel order) and clip normalisation.

Sizes follow PySlowFast's test-time pipeline: the short side is scaled (with its rounding) and
`uniform_crop` offsets pick 1 (centre) or 3 (start / centre / end of the long side) square crops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("square", "short_side")
CHANNEL_ORDERS = ("rgb", "bgr")
BACKENDS = ("torch", "ffmpeg")
# How the centre crop's offset (size - crop) / 2 is rounded: "ceil" as PySlowFast's `uniform_crop`,
# "half_even" as torchvision's `CenterCropVideo` (Python's round(), used by Ego4D's feature transform).
CROP_ROUNDINGS = ("ceil", "half_even")


def _name(value: object) -> str:
    """Plain string of a str-Enum member or a string."""
    return str(getattr(value, "value", value))


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image (half-pixel centres, no antialias, like cv2.INTER_LINEAR).

    Torch's uint8 kernel on the channels-last view of the array: no float copy of the full frame, about
    4x faster than a float32 interpolate on a 1080p frame; equals OpenCV within one grey level.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {image.shape} {image.dtype}")
    if width < 1 or height < 1:
        raise ValueError(f"resize target must be >= 1 x 1 (got {width} x {height})")
    if image.shape[0] == height and image.shape[1] == width:
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[
        None
    ]  # (1, C, H, W), channels-last
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side = `short_side` and the long side floor-scaled, as PySlowFast tests do.

    An image whose short side already has that length keeps its size.
    """
    if (width <= height and width == short_side) or (height <= width and height == short_side):
        return width, height
    if width < height:
        return short_side, int(math.floor(height / width * short_side))
    return int(math.floor(width / height * short_side)), short_side


def crop_offsets(
    width: int, height: int, crop: int, num_crops: int, rounding: str = "ceil"
) -> list[tuple[int, int]]:
    """Top-left (x, y) of `num_crops` square crops: 1 = centre; 3 = start, centre, end of the long side.

    The centre offset (size - crop) / 2 is rounded up ("ceil") or half to even ("half_even").
    """
    if crop > width or crop > height:
        raise ValueError(f"crop {crop} does not fit in a {width} x {height} frame")
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3 (got {num_crops})")
    if rounding not in CROP_ROUNDINGS:
        raise ValueError(f"crop rounding must be one of {CROP_ROUNDINGS} (got {rounding!r})")
    centre = math.ceil if rounding == "ceil" else round
    x_centre = int(centre((width - crop) / 2))
    y_centre = int(centre((height - crop) / 2))
    if num_crops == 1:
        return [(x_centre, y_centre)]
    if height > width:  # portrait: top, centre, bottom
        return [(x_centre, 0), (x_centre, y_centre), (x_centre, height - crop)]
    return [(0, y_centre), (x_centre, y_centre), (width - crop, y_centre)]


@dataclass(frozen=True)
class FrameTransform:
    """One frame -> (num_crops, h, w, 3) uint8 in the model's channel order.

    mode "square": squash the whole frame to `size` (w, h), one "crop". mode "short_side": scale the
    short side to `short_side`, then take `num_crops` squares of `crop`. backend "ffmpeg": the decoder
    resizes (see `decoder_resize`) and the transform only crops; "torch": `resize_bilinear` here.
    """

    mode: str = "short_side"
    size: tuple[int, int] | None = None
    short_side: int = 256
    crop: int = 256
    num_crops: int = 1
    channel_order: str = "rgb"
    backend: str = "torch"
    source_size: tuple[int, int] | None = None  # (w, h) of the upright frames, needed by decoder_resize
    crop_rounding: str = "ceil"  # centre crop offset: "ceil" (PySlowFast) | "half_even" (torchvision)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("mode", MODES),
            ("channel_order", CHANNEL_ORDERS),
            ("backend", BACKENDS),
            ("crop_rounding", CROP_ROUNDINGS),
        ):
            value = _name(getattr(self, name))
            if value not in allowed:
                raise ValueError(f"FrameTransform.{name} must be one of {allowed} (got {value!r})")
            object.__setattr__(self, name, value)
        if self.mode == "square":
            if self.size is None or len(self.size) != 2 or min(self.size) < 1:
                raise ValueError(
                    f"FrameTransform.size must be (width, height) >= 1 in square mode (got {self.size})"
                )
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
            if self.num_crops != 1:
                raise ValueError(
                    f"square mode gives one crop, the whole frame (got num_crops={self.num_crops})"
                )
        else:
            if self.num_crops not in (1, 3):
                raise ValueError(f"FrameTransform.num_crops must be 1 or 3 (got {self.num_crops})")
            if not 1 <= self.crop <= self.short_side:
                raise ValueError(
                    f"FrameTransform.crop {self.crop} must be in 1..short_side={self.short_side}"
                )
        if self.source_size is not None:
            object.__setattr__(self, "source_size", (int(self.source_size[0]), int(self.source_size[1])))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) a (width x height) frame is resized to before cropping."""
        if self.mode == "square":
            assert self.size is not None
            return self.size
        return short_side_size(width, height, self.short_side)

    @property
    def decoder_resize(self) -> tuple[int, int] | Callable[[int, int], tuple[int, int]] | None:
        """What the decoder should resize to with the ffmpeg backend (None with the torch backend).

        (w, h) in square mode or when `source_size` is known; otherwise (short_side mode) the function
        `resized_size`, which `pipeline.io.open_source(resize=...)` applies to each source's size.
        """
        if self.backend != "ffmpeg":
            return None
        if self.mode == "square":
            return self.size
        if self.source_size is None:
            return self.resized_size
        return self.resized_size(*self.source_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(num_crops, h, w, 3) of every output."""
        if self.mode == "square":
            assert self.size is not None
            return (1, self.size[1], self.size[0], 3)
        return (self.num_crops, self.crop, self.crop, 3)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (num_crops, h, w, 3) uint8, C-contiguous, in `channel_order`."""
        height, width = image.shape[:2]
        target = self.resized_size(width, height)
        if target != (width, height):
            image = resize_bilinear(image, *target)
        channels = slice(None, None, -1) if self.channel_order == "bgr" else slice(None)
        if self.mode == "square":
            return np.ascontiguousarray(image[None, :, :, channels])
        c = self.crop
        offsets = crop_offsets(image.shape[1], image.shape[0], c, self.num_crops, self.crop_rounding)
        out = np.empty((len(offsets), c, c, 3), dtype=np.uint8)
        for i, (x, y) in enumerate(offsets):
            out[i] = image[y : y + c, x : x + c, channels]
        return out


def normalize_clips(
    clips: torch.Tensor, valid: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W): /255, -mean, /std; invalid frames exactly 0."""
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be (B, T, H, W, 3), got {tuple(clips.shape)}")
    if tuple(valid.shape) != tuple(clips.shape[:2]):
        raise ValueError(f"valid must be (B, T) = {tuple(clips.shape[:2])}, got {tuple(valid.shape)}")
    x = clips.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    x.div_(255.0).sub_(mean_t).div_(std_t)
    x.masked_fill_(~valid.to(device=x.device, dtype=torch.bool)[:, None, :, None, None], 0.0)
    return x

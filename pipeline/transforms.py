"""Spatial transforms of decoded frames (resize, crops, channel order) and clip normalisation.

Sizes follow PySlowFast's test-time pipeline: the short side is scaled (with its rounding) and
`uniform_crop` offsets pick 1 (centre) or 3 (start / centre / end of the long side) square crops.
Each mode resizes as the recipe it reproduces did: "square" (the old extractor's squash, `data=epic`) with
OpenCV's uint8 `INTER_LINEAR` (it is `cv2.resize`, bit for bit); "short_side" (PySlowFast's test
transform) with float bilinear interpolation as PySlowFast's `random_short_side_scale_jitter` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

MODES = ("square", "short_side")
CHANNEL_ORDERS = ("rgb", "bgr")
BACKENDS = ("torch", "ffmpeg")
# How each mode interpolates with the default backend (recorded by `FrameTransform.interpolation`).
INTERPOLATION = {"square": "opencv_linear_uint8", "short_side": "pyslowfast_float_bilinear"}

# Decode workers are the parallelism: OpenCV's own thread pool would oversubscribe the cores (and its
# threads do not survive the fork of a decode worker).
cv2.setNumThreads(0)

# How the centre crop's offset (size - crop) / 2 is rounded: "ceil" as PySlowFast's `uniform_crop`,
# "half_even" as torchvision's `CenterCropVideo` (Python's round(), used by Ego4D's feature transform).
CROP_ROUNDINGS = ("ceil", "half_even")


def _name(value: object) -> str:
    """Plain string of a str-Enum member or a string."""
    return str(getattr(value, "value", value))


def _check_resize(image: np.ndarray, width: int, height: int) -> None:
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {image.shape} {image.dtype}")
    if width < 1 or height < 1:
        raise ValueError(f"resize target must be >= 1 x 1 (got {width} x {height})")


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV `INTER_LINEAR` resize of an (H, W, 3) uint8 image (it is `cv2.resize`: bit-exact).

    Half-pixel centres, no antialias, OpenCV's 11-bit fixed-point weights and rounding: what the old
    extractor (and feature sets made with OpenCV) computed.
    """
    _check_resize(image, width, height)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def _row_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper row, lower row, float32 weight of the lower) per output row, as torch's bilinear
    (align_corners=False) computes them: source y = (i + 0.5) * in/out - 0.5, clamped at 0."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    upper = np.minimum(np.floor(source).astype(np.intp), in_size - 1)
    lower = np.minimum(upper + 1, in_size - 1)
    weight = np.clip(source - upper, 0.0, 1.0).astype(np.float32)
    return upper, lower, weight


def resize_float_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """PySlowFast's test-time resize of an (H, W, 3) uint8 image, rounded to the nearest uint8.

    PySlowFast interpolates the float frames (`F.interpolate(..., mode="bilinear",
    align_corners=False)`, no antialias) after normalising them; interpolation is linear, so
    normalising afterwards gives the same values. The clip travels as uint8, so each value is rounded
    to the nearest grey level: at most half a level from PySlowFast's, and unbiased. Computed in float32
    separably: only the source rows that some output row reads are converted to float (the vertical
    pass), then OpenCV's float `INTER_LINEAR` (the same taps) does the horizontal pass: about 2x faster
    than a float `F.interpolate` of a 1080p frame, equal up to float rounding (which decides exact ties).
    """
    _check_resize(image, width, height)
    in_height, in_width = image.shape[:2]
    if in_height == height and in_width == width:
        return image
    upper, lower, weight = _row_taps(in_height, height)
    flat = image.reshape(in_height, -1)  # (H, W*C): long inner loops for numpy
    rows = flat[upper].astype(np.float32)
    below = flat[lower].astype(np.float32)
    below -= rows
    below *= weight[:, None]
    rows += below
    rows = rows.reshape(height, in_width, image.shape[2])
    if in_width != width:  # same height: OpenCV's vertical taps are the identity
        rows = cv2.resize(rows, (width, height), interpolation=cv2.INTER_LINEAR)
    # Round half to even and saturate (values are >= 0 up to float rounding, so abs changes nothing).
    return cv2.convertScaleAbs(rows)


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
    resizes (see `decoder_resize`) and the transform only crops; "torch": the transform resizes, square
    mode with `resize_bilinear` (OpenCV), short_side mode with `resize_float_bilinear` (PySlowFast).
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

    @property
    def interpolation(self) -> str:
        """Name of the resampler this transform uses ("ffmpeg_swscale_bilinear" with the ffmpeg backend)."""
        return "ffmpeg_swscale_bilinear" if self.backend == "ffmpeg" else INTERPOLATION[self.mode]

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
            resize = resize_bilinear if self.mode == "square" else resize_float_bilinear
            image = resize(image, *target)
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
    clips: torch.Tensor,
    valid: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, H, W): /255, -mean, /std; invalid frames exactly 0.

    `channels_last`: the result in channels_last_3d memory, which is the clips' own order (no transpose).
    """
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be (B, T, H, W, 3), got {tuple(clips.shape)}")
    if tuple(valid.shape) != tuple(clips.shape[:2]):
        raise ValueError(f"valid must be (B, T) = {tuple(clips.shape[:2])}, got {tuple(valid.shape)}")
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = clips.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=layout)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    x.div_(255.0).sub_(mean_t).div_(std_t)
    x.masked_fill_(~valid.to(device=x.device, dtype=torch.bool)[:, None, :, None, None], 0.0)
    return x

"""Spatial transforms of decoded frames (resize, crops, channel order) and clip normalisation.

Sizes follow PySlowFast's test-time pipeline: the short side is scaled (with its rounding) and
`uniform_crop` offsets pick 1 (centre) or 3 (start / centre / end of the long side) square crops.

How a frame is resized is the recipe's: `RESIZERS` names each way, the library call it reproduces and
the values it gives. uint8 recipes (OpenCV's `INTER_LINEAR` on uint8 frames: the old extractor, EPIC;
PIL's resize) give uint8 frames, bit for bit those libraries'; float recipes (torch's
`F.interpolate(bilinear, align_corners=False)` on float frames: PySlowFast's test transform, Ego4D,
VideoMAE V2's TAD extraction, TSP) give float32 frames in grey levels (0..255), the values the recipe's
own float pipeline computes, never rounded. Normalisation ((x / 255 - mean) / std) is per channel and
linear, and the weights of a resize sum to one, so normalising before or after resizing gives the same
values up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

MODES = ("square", "short_side", "fixed")
CHANNEL_ORDERS = ("rgb", "bgr")
BACKENDS = ("torch", "ffmpeg")

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


def resize_opencv(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV `INTER_LINEAR` resize of an (H, W, 3) uint8 image (it is `cv2.resize`: bit-exact).

    Half-pixel centres, no antialias, OpenCV's 11-bit fixed-point weights and rounding: what the old
    extractor (and feature sets made with OpenCV) computed.
    """
    _check_resize(image, width, height)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if image.shape[2] != 3:
        # Other channel counts (2: optical flow x, y) one plane at a time, each the grey image the recipes
        # stored: OpenCV takes another code path for 2 channels (at an exact 2x reduction it differs).
        planes = [
            cv2.resize(np.ascontiguousarray(image[:, :, c]), (width, height), interpolation=cv2.INTER_LINEAR)
            for c in range(image.shape[2])
        ]
        return np.stack(planes, axis=-1)
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first source index, second source index, first weight, second weight) per output position, as
    torch's CPU bilinear kernel computes them (align_corners=False, no antialias): scale = float32(in) /
    out, source = scale * (i + 0.5) - 0.5 clamped at 0, with float32 positions rounded once (the compiled
    kernel fuses the multiply and the subtraction: an FMA). Positions matter: at 1280 -> 398 computing them
    another way moves values by up to ~0.002 grey levels; these match torch's within float32 rounding."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # float32 x float32 is exact in float64, so one rounding to float32 afterwards is the FMA's
    source = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0.0))
    first = np.minimum(source.astype(np.intp), in_size - 1)  # truncation = floor for source >= 0
    second = np.minimum(first + 1, in_size - 1)
    weight = np.clip(source - first.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return first, second, np.float32(1.0) - weight, weight


def resize_float_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """torch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialias) of an (H, W, 3)
    uint8 image as float: (height, width, 3) float32 grey levels, never rounded.

    The same taps and float32 weights as torch (`bilinear_taps`), applied separably: only the source rows
    that some output row reads are converted to float (vertical pass), then the columns. Equal to torch's
    own result up to float32 rounding (a few ulps), and much cheaper than converting a whole 1080p frame.
    """
    _check_resize(image, width, height)
    in_height, in_width = image.shape[:2]
    top, bottom, w_top, w_bottom = bilinear_taps(in_height, height)
    flat = image.reshape(in_height, -1)  # (H, W*C): long inner loops for numpy
    rows = flat[top].astype(np.float32)
    rows *= w_top[:, None]
    below = flat[bottom].astype(np.float32)
    below *= w_bottom[:, None]
    rows += below
    rows = rows.reshape(height, in_width, image.shape[2])
    left, right, w_left, w_right = bilinear_taps(in_width, width)
    out = np.take(rows, left, axis=1)
    out *= w_left[None, :, None]
    side = np.take(rows, right, axis=1)
    side *= w_right[None, :, None]
    out += side
    return out


def resize_float_bilinear_antialias(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """torch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` of an (H, W, 3) uint8
    image as float (torchvision's `Resize` on float tensors): (height, width, 3) float32, computed by that
    very call on the float frame."""
    _check_resize(image, width, height)
    frame = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(
        frame, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].permute(1, 2, 0).contiguous().numpy()


def _resize_pil(resample: Image.Resampling) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        _check_resize(image, width, height)
        if image.shape[2] == 3:
            return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample))
        # Other channel counts (2: optical flow x, y) one plane at a time, each an 8-bit grey image as the
        # recipes stored them: PIL would read 2 channels as "LA" and weight the first by the second.
        planes = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize((width, height), resample)
            )
            for c in range(image.shape[2])
        ]
        return np.stack(planes, axis=-1)

    return resize


resize_pil_bilinear = _resize_pil(Image.Resampling.BILINEAR)
resize_pil_bilinear.__doc__ = """PIL's `Image.resize(BILINEAR)` of a uint8 image (antialiased: PIL widens the
filter when it downscales), uint8 as PIL gives it."""
resize_pil_lanczos = _resize_pil(Image.Resampling.LANCZOS)
resize_pil_lanczos.__doc__ = """PIL's `Image.resize(LANCZOS)` (`ANTIALIAS` in old PIL) of a uint8 image, uint8
as PIL gives it."""


@dataclass(frozen=True)
class Resizer:
    """One way of resizing a frame: the function, the dtype it gives (what the clip travels as) and the
    name recorded in every output's settings."""

    resize: Callable[[np.ndarray, int, int], np.ndarray]
    dtype: np.dtype
    recorded: str
    reproduces: str


RESIZERS: dict[str, Resizer] = {
    "opencv": Resizer(
        resize_opencv, np.dtype(np.uint8), "opencv_linear_uint8", "cv2.resize(INTER_LINEAR), uint8"
    ),
    "float_bilinear": Resizer(
        resize_float_bilinear,
        np.dtype(np.float32),
        "float_bilinear",
        "torch F.interpolate(bilinear, align_corners=False) on float frames",
    ),
    "float_bilinear_antialias": Resizer(
        resize_float_bilinear_antialias,
        np.dtype(np.float32),
        "float_bilinear_antialias",
        "torch F.interpolate(bilinear, align_corners=False, antialias=True) on float frames",
    ),
    "pil_bilinear": Resizer(
        resize_pil_bilinear, np.dtype(np.uint8), "pil_bilinear_uint8", "PIL Image.resize(BILINEAR)"
    ),
    "pil_lanczos": Resizer(
        resize_pil_lanczos, np.dtype(np.uint8), "pil_lanczos_uint8", "PIL Image.resize(LANCZOS)"
    ),
}
"""Every way a recipe resizes, by the name `data.resize.interpolation` takes."""

# `data.resize.interpolation: auto`: what each mode's recipes used.
DEFAULT_INTERPOLATION = {"square": "opencv", "short_side": "float_bilinear", "fixed": "float_bilinear"}
INTERPOLATIONS = ("auto", *RESIZERS)


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
    """One frame -> (num_crops, h, w, 3) in the model's channel order: uint8, or float32 grey levels for a
    float recipe (`dtype`).

    mode "square": squash the whole frame to `size` (w, h), one "crop". mode "short_side": scale the
    short side to `short_side`, then take `num_crops` squares of `crop`. mode "fixed": squash to `size`,
    then take `num_crops` squares of `crop` (TSP: 171x128, centre 112). `interpolation`: a name of
    `RESIZERS` ("auto": the mode's recipe, `DEFAULT_INTERPOLATION`). backend "ffmpeg": the decoder resizes
    (FFmpeg's swscale, uint8; see `decoder_resize`) and the transform only crops.
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
    interpolation: str = "auto"
    channels: int = 3  # of the frames: 3 (RGB) or 2 (optical flow x, y; channel_order must be rgb)

    def __post_init__(self) -> None:
        if self.channels not in (2, 3):
            raise ValueError(f"FrameTransform.channels must be 2 (flow) or 3 (RGB) (got {self.channels})")
        if self.channels != 3 and _name(self.channel_order) != "rgb":
            raise ValueError(
                "FrameTransform: channel_order bgr reverses 3 RGB channels; flow frames are (x, y)"
            )
        for name, allowed in (
            ("mode", MODES),
            ("channel_order", CHANNEL_ORDERS),
            ("backend", BACKENDS),
            ("crop_rounding", CROP_ROUNDINGS),
            ("interpolation", INTERPOLATIONS),
        ):
            value = _name(getattr(self, name))
            if value not in allowed:
                raise ValueError(f"FrameTransform.{name} must be one of {allowed} (got {value!r})")
            object.__setattr__(self, name, value)
        if self.interpolation == "auto":
            object.__setattr__(self, "interpolation", DEFAULT_INTERPOLATION[self.mode])
        if self.backend == "ffmpeg" and self.interpolation != DEFAULT_INTERPOLATION[self.mode]:
            raise ValueError(
                f"FrameTransform: interpolation {self.interpolation!r} resizes after decoding; the ffmpeg "
                "backend resizes uint8 frames in the decoder (swscale)"
            )
        if self.mode in ("square", "fixed"):
            if self.size is None or len(self.size) != 2 or min(self.size) < 1:
                raise ValueError(
                    f"FrameTransform.size must be (width, height) >= 1 in {self.mode} mode (got {self.size})"
                )
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.mode == "square":
            if self.num_crops != 1:
                raise ValueError(
                    f"square mode gives one crop, the whole frame (got num_crops={self.num_crops})"
                )
        else:
            if self.num_crops not in (1, 3):
                raise ValueError(f"FrameTransform.num_crops must be 1 or 3 (got {self.num_crops})")
            limit = self.short_side if self.mode == "short_side" else min(self.size or (0, 0))
            if not 1 <= self.crop <= limit:
                raise ValueError(
                    f"FrameTransform.crop {self.crop} must be in 1..{limit} (the resized short side)"
                )
        if self.source_size is not None:
            object.__setattr__(self, "source_size", (int(self.source_size[0]), int(self.source_size[1])))

    @property
    def resizer(self) -> Resizer:
        """How frames are resized after decoding (with the ffmpeg backend: only frames not of the size)."""
        return RESIZERS[self.interpolation]

    @property
    def dtype(self) -> np.dtype:
        """What the frames travel as: uint8, or float32 for a float recipe (never with the ffmpeg backend)."""
        return np.dtype(np.uint8) if self.backend == "ffmpeg" else self.resizer.dtype

    @property
    def recorded_interpolation(self) -> str:
        """The resampler's name in every output's settings ("ffmpeg_swscale_bilinear" with the ffmpeg backend)."""
        return "ffmpeg_swscale_bilinear" if self.backend == "ffmpeg" else self.resizer.recorded

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) a (width x height) frame is resized to before cropping."""
        if self.mode in ("square", "fixed"):
            assert self.size is not None
            return self.size
        return short_side_size(width, height, self.short_side)

    @property
    def decoder_resize(self) -> tuple[int, int] | Callable[[int, int], tuple[int, int]] | None:
        """What the decoder should resize to with the ffmpeg backend (None with the torch backend).

        (w, h) in square and fixed mode or when `source_size` is known; otherwise (short_side mode) the
        function `resized_size`, which `pipeline.io.open_source(resize=...)` applies to each source's size.
        """
        if self.backend != "ffmpeg":
            return None
        if self.mode in ("square", "fixed"):
            return self.size
        if self.source_size is None:
            return self.resized_size
        return self.resized_size(*self.source_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(num_crops, h, w, channels) of every output."""
        if self.mode == "square":
            assert self.size is not None
            return (1, self.size[1], self.size[0], self.channels)
        return (self.num_crops, self.crop, self.crop, self.channels)

    @property
    def output_nbytes(self) -> int:
        """Bytes of one frame's output (all crops): what a frame of a clip takes in a slot."""
        return math.prod(self.output_shape) * self.dtype.itemsize

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 (RGB, or flow x, y) -> (num_crops, h, w, C) of `dtype`, C-contiguous, in
        `channel_order`."""
        if image.ndim != 3 or image.shape[2] != self.channels:
            raise ValueError(f"FrameTransform: expected (H, W, {self.channels}) frames, got {image.shape}")
        height, width = image.shape[:2]
        target = self.resized_size(width, height)
        if target != (width, height):
            image = self.resizer.resize(image, *target)
        image = image.astype(self.dtype, copy=False)
        channels = slice(None, None, -1) if self.channel_order == "bgr" else slice(None)
        if self.mode == "square":
            return np.ascontiguousarray(image[None, :, :, channels])
        c = self.crop
        offsets = crop_offsets(image.shape[1], image.shape[0], c, self.num_crops, self.crop_rounding)
        out = np.empty((len(offsets), c, c, self.channels), dtype=self.dtype)
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
    """uint8 or float32 (B, T, H, W, C) grey levels -> float32 (B, C, T, H, W): /255, -mean, /std per
    channel (C values each: 3 for RGB, 2 for flow x, y); invalid frames exactly 0.

    `channels_last`: the result in channels_last_3d memory, which is the clips' own order (no transpose).
    """
    if clips.dim() != 5 or clips.shape[-1] != len(mean) or len(std) != len(mean):
        raise ValueError(
            f"clips must be (B, T, H, W, C) with C = {len(mean)} values of mean and std (got {len(std)}), "
            f"got {tuple(clips.shape)}"
        )
    channels = len(mean)
    if clips.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"clips must be uint8 or float32 grey levels, got {clips.dtype}")
    if tuple(valid.shape) != tuple(clips.shape[:2]):
        raise ValueError(f"valid must be (B, T) = {tuple(clips.shape[:2])}, got {tuple(valid.shape)}")
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = clips.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=layout, copy=True)  # never in place
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, channels, 1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, channels, 1, 1, 1)
    x.div_(255.0).sub_(mean_t).div_(std_t)
    x.masked_fill_(~valid.to(device=x.device, dtype=torch.bool)[:, None, :, None, None], 0.0)
    return x

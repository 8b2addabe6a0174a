"""Frames as a frame-extraction tool stored them, and optical flow as a frame source.

Recipes that read frames and flow from disk (the THUMOS14 I3D features: yjxiong/dense_flow, then
Finspire13's pytorch-i3d-feature-extraction) did not see the decoded frames: dense_flow resized each frame
(cv::resize, bilinear, aspect ratio not kept), computed TV-L1 flow between consecutive resized grayscale
frames, mapped each flow component to 0..255 and stored RGB frames and flow images as JPEG; it writes
nothing for the first frame, which only starts the pairs (dense_flow src/dense_flow_gpu.cpp,
src/common.cpp). Two sources over another source's frames (after its fps resampling) restate that:

- `StoredFrameSource` (the RGB stream): frames 1..n-1 when `skip_first`, each resized to `size` with
  OpenCV's INTER_LINEAR and sent through a JPEG round trip at `jpeg_quality` (cv2.imencode, read back with
  PIL as the feature script reads it), each step only when asked.
- `FlowSource` (the flow stream): for n frames, n - 1 flow fields; field k is the motion from frame k - 1
  to frame k, stamped with frame k's time, so a flow row and an RGB row (with `skip_first`) over the same
  positions cover the same frames and carry the same timestamps. Each frame is resized to `size`, made
  grayscale (ITU-R BT.601, as cvtColor(BGR2GRAY) of the BGR frame), TV-L1 runs on consecutive pairs
  (`TVL1Params`: OpenCV's contrib CPU solver), each component is clipped to +-`bound` and mapped to 0..255
  (`flow_image`, dense_flow's `convertFlowToImage`), then JPEG-round-tripped when asked. Frames are
  (H, W, 2) uint8: channel 0 = x (horizontal), 1 = y (vertical), as the feature script stacks flow_x and
  flow_y. Two identical consecutive frames (a frame repeated by fps resampling) give zero flow without a
  solver call: TV-L1 returns exactly zero there.

Both hold one frame at a time (memory does not grow with the video) and run where the source is opened:
in the decode workers, beside the model.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.io.source import Frame, FrameSource, LoadImage, SourceInfo

STREAMS = ("rgb", "flow")
FLOW_ALGORITHMS = ("tvl1",)
FLOW_CHANNELS = 2  # x, y
CONTRIB_HINT = (
    "optical flow needs OpenCV's contrib modules (cv2.optflow): pip uninstall -y opencv-python-headless "
    "&& pip install opencv-contrib-python-headless (scripts/setup_env.sh does this)"
)


class FlowUnavailable(RuntimeError):
    """This OpenCV build has no cv2.optflow (the plain opencv-python wheel instead of the contrib one)."""


def flow_available() -> bool:
    """Whether cv2.optflow's TV-L1 solver can be built here."""
    return hasattr(getattr(cv2, "optflow", None), "DualTVL1OpticalFlow_create")


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's `cv2.optflow.DualTVL1OpticalFlow_create` arguments (opencv_contrib optflow/tvl1flow.cpp).

    tau: time step of the numerical scheme; lambda_: weight of the data term (smaller: smoother flow);
    theta: coupling of the data and smoothness terms; nscales: pyramid levels (fewer when a level would be
    under 16 px); warps: warpings of the second image per level; epsilon: stopping threshold (an inner loop
    stops when the sum of squared flow updates is under epsilon^2 x pixels); inner_iterations and
    outer_iterations: the inner loop runs inner_iterations times per outer iteration, and each outer
    iteration first median-filters the flow with a median_filtering x median_filtering kernel (1: none;
    3 or 5); scale_step: pyramid scale between levels; gamma: weight of the illumination term (0: none).

    The defaults are dense_flow's: it calls `cv::cuda::OpticalFlowDual_TVL1::create()` with the CUDA
    defaults (tau 0.25, lambda 0.15, theta 0.3, nscales 5, warps 5, epsilon 0.01, 300 iterations, scale step
    0.8, gamma 0, no median filter), which is one outer iteration of 300 inner ones here. OpenCV's own CPU
    defaults differ: 30 inner x 10 outer iterations with a 5x5 median filter each outer iteration.
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 300
    outer_iterations: int = 1
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 1

    def create(self) -> Any:
        """The solver (`cv2.optflow.DualTVL1OpticalFlow`); FlowUnavailable without the contrib modules."""
        if not flow_available():
            raise FlowUnavailable(CONTRIB_HINT)
        opencv: Any = cv2  # cv2.optflow is in the contrib wheel only (and not in the type stubs)
        return opencv.optflow.DualTVL1OpticalFlow_create(
            tau=self.tau,
            lambda_=self.lambda_,
            theta=self.theta,
            nscales=self.nscales,
            warps=self.warps,
            epsilon=self.epsilon,
            innnerIterations=self.inner_iterations,  # OpenCV's spelling of the keyword
            outerIterations=self.outer_iterations,
            scaleStep=self.scale_step,
            gamma=self.gamma,
            medianFiltering=self.median_filtering,
            useInitialFlow=False,
        )


@dataclass(frozen=True)
class FlowSettings:
    """How flow is computed and stored: the algorithm, its parameters, the bound of the 0..255 mapping."""

    algorithm: str = "tvl1"
    bound: float = 20.0  # dense_flow's build_of.py passes -b=20 (its command-line default is 15)
    tvl1: TVL1Params = TVL1Params()

    def __post_init__(self) -> None:
        if self.algorithm not in FLOW_ALGORITHMS:
            raise ValueError(f"flow algorithm must be one of {FLOW_ALGORITHMS} (got {self.algorithm!r})")
        if not self.bound > 0:
            raise ValueError(f"flow bound must be > 0 (got {self.bound})")


@dataclass(frozen=True)
class StoredFrames:
    """The frames as a frame-extraction tool wrote them before the recipe read them back.

    size: (width, height) every frame is resized to first (OpenCV INTER_LINEAR on uint8, aspect ratio not
    kept; the flow is computed at this size), None: as decoded. jpeg_quality: each stored image (RGB frame
    or flow image) goes through a JPEG encode (cv2.imencode at this quality) and decode (PIL), None: not.
    skip_first: the RGB stream starts at frame 1, as dense_flow writes no image for frame 0 (the flow
    stream always starts there: its first field needs frame 0 and frame 1).
    """

    size: tuple[int, int] | None = None
    jpeg_quality: int | None = None
    skip_first: bool = False

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2 or min(self.size) < 1:
                raise ValueError(f"stored frame size must be (width, height) >= 1 (got {self.size})")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100 (got {self.jpeg_quality})")

    @property
    def active(self) -> bool:
        """Whether frames differ from the decoded ones (any step asked for)."""
        return self.size is not None or self.jpeg_quality is not None or self.skip_first


# --- the steps, pure ----------------------------------------------------------------------------


def resize_stored(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) of a uint8 image to (width, height), or the image itself."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(np.ascontiguousarray(image), tuple(size), interpolation=cv2.INTER_LINEAR)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luma of an RGB frame: OpenCV's RGB2GRAY, the same values as BGR2GRAY of the BGR frame."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def flow_image(component: np.ndarray, bound: float) -> np.ndarray:
    """One flow component (pixels, float32) as a uint8 image: 255 above +bound, 0 below -bound, else
    round(255 * (v + bound) / (2 * bound)) computed in double and rounded half to even (dense_flow's
    `convertFlowToImage`: `cvRound(255 * (v - L) / (H - L))` with double bounds). NaN maps to 0."""
    v = component.astype(np.float64)
    scaled = np.rint(255.0 * (v + bound) / (2.0 * bound))
    out = np.where(v > bound, 255.0, np.where(v < -bound, 0.0, scaled))
    return np.nan_to_num(out, nan=0.0).astype(np.uint8)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 image (H, W) or RGB (H, W, 3) after cv2.imencode(".jpg", quality) and a PIL decode.

    OpenCV encodes BGR: an RGB frame is reversed first, so the JPEG holds what dense_flow's BGR frame gave
    (4:2:0 chroma, OpenCV's defaults besides the quality); PIL reads it back as the feature script does.
    """
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed on a {image.shape} image")
    with Image.open(io.BytesIO(encoded.tobytes())) as decoded:
        return np.asarray(decoded.convert("RGB" if image.ndim == 3 else "L"))


def flow_frame(field: np.ndarray, bound: float, jpeg_quality: int | None) -> np.ndarray:
    """A (H, W, 2) float flow field -> the (H, W, 2) uint8 flow images (x, y) as stored."""
    planes = [flow_image(field[:, :, c], bound) for c in range(FLOW_CHANNELS)]
    if jpeg_quality is not None:
        planes = [jpeg_round_trip(plane, jpeg_quality) for plane in planes]
    return np.ascontiguousarray(np.stack(planes, axis=-1))


# --- the sources --------------------------------------------------------------------------------


class _DerivedSource(FrameSource):
    """A source whose frames are made from another source's (already resampled) frames, one at a time."""

    def __init__(self, inner: FrameSource, info: SourceInfo) -> None:
        # FrameSource.__init__ would resample again and rebase times on the first frame: not called.
        self.inner = inner
        self.info = info
        self.fps = inner.fps
        self.frames_decoded = inner.frames_decoded  # the decoder's count, kept up to date by _emit
        self._index = 0

    def _decode(self) -> Iterator[tuple[LoadImage, float]]:  # pragma: no cover - __next__ is overridden
        raise NotImplementedError

    def _emit(self, image: np.ndarray, time: float) -> Frame:
        self.frames_decoded = self.inner.frames_decoded
        frame = Frame(image=image, time=time, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        """Close the inner source (idempotent)."""
        inner = getattr(self, "inner", None)
        if inner is not None:
            inner.close()


class StoredFrameSource(_DerivedSource):
    """RGB frames as stored (`StoredFrames`): frame 0 skipped when asked, resized, JPEG-round-tripped."""

    def __init__(self, inner: FrameSource, stored: StoredFrames) -> None:
        width, height = stored.size or (inner.info.width, inner.info.height)
        count = inner.info.frame_count
        if count is not None and stored.skip_first:
            count = max(count - 1, 0)
        super().__init__(
            inner, dataclasses.replace(inner.info, width=width, height=height, frame_count=count)
        )
        self.stored = stored
        self._first = True

    def __next__(self) -> Frame:
        frame = next(self.inner)
        if self._first:
            self._first = False
            if self.stored.skip_first:
                frame = next(self.inner)
        image = resize_stored(frame.image, self.stored.size)
        if self.stored.jpeg_quality is not None:
            image = jpeg_round_trip(image, self.stored.jpeg_quality)
        return self._emit(image, frame.time)


class FlowSource(_DerivedSource):
    """Optical flow of consecutive frames as (H, W, 2) uint8 frames; see the module's docstring."""

    def __init__(self, inner: FrameSource, flow: FlowSettings, stored: StoredFrames) -> None:
        width, height = stored.size or (inner.info.width, inner.info.height)
        count = inner.info.frame_count
        super().__init__(
            inner,
            dataclasses.replace(
                inner.info,
                width=width,
                height=height,
                frame_count=None if count is None else max(count - 1, 0),
            ),
        )
        self.flow, self.stored = flow, stored
        self._solver = flow.tvl1.create()  # here, in the process that reads the frames (a decode worker)
        self._previous: np.ndarray | None = None

    def field(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """(H, W, 2) float32 flow from one grayscale frame to the next (zero for identical frames)."""
        if previous is current or np.array_equal(previous, current):
            return np.zeros((*current.shape, FLOW_CHANNELS), dtype=np.float32)
        return self._solver.calc(previous, current, None)

    def __next__(self) -> Frame:
        while True:
            frame = next(self.inner)
            gray = grayscale(resize_stored(frame.image, self.stored.size))
            previous, self._previous = self._previous, gray
            if previous is not None:
                field = self.field(previous, gray)
                return self._emit(flow_frame(field, self.flow.bound, self.stored.jpeg_quality), frame.time)


def stream_source(
    inner: FrameSource,
    stream: str = "rgb",
    stored: StoredFrames | None = None,
    flow: FlowSettings | None = None,
) -> FrameSource:
    """The frames a stream feeds the model: `inner` itself (RGB, nothing stored), the stored RGB frames,
    or the flow images."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS} (got {stream!r})")
    stored = stored or StoredFrames()
    if stream == "flow":
        return FlowSource(inner, flow or FlowSettings(), stored)
    return StoredFrameSource(inner, stored) if stored.active else inner

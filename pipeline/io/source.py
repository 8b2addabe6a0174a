"""What every frame source is: an iterator of upright RGB frames with timestamps (`FrameSource`), what is
known before decoding (`SourceInfo`), and the one error a source raises (`DecodeError`)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io.resample import TOLERANCE_S, resample

# Decoder-side resize: a fixed (width, height), or a function of the upright source (width, height).
Resize = tuple[int, int] | Callable[[int, int], tuple[int, int]]
# A decoded frame not yet converted to an array: called (at most once) only if resampling keeps it.
LoadImage = Callable[[], np.ndarray]

DEFAULT_FRAMES_PATTERN = "frame_{:010d}.jpg"
DEFAULT_FRAMES_FPS = 30.0


class DecodeError(PipelineError):
    """A video or frame folder that cannot be read; the message is one line: `<path>: <cause>`."""

    def __init__(self, path: Path | str, cause: str) -> None:
        self.path = Path(path)
        self.cause = " ".join(str(cause).split())  # always one line
        super().__init__(f"{self.path}: {self.cause}")


@dataclass(frozen=True)
class SourceInfo:
    """What is known about a source before (or without) decoding all of it."""

    path: Path
    kind: str  # "video" | "frames"
    width: int  # displayed size (after rotation)
    height: int
    native_fps: float | None  # stream average rate / frames.fps
    duration: float | None  # seconds, from the container header when known
    frame_count: int | None  # header estimate (may be wrong) / number of frame files
    codec: str | None
    rotation: int = 0  # counter-clockwise degrees applied to decoded frames (0/90/180/270)


@dataclass(frozen=True, eq=False)
class Frame:
    """One upright frame: (H, W, 3) uint8 RGB, C-contiguous; time in seconds from the first frame.

    With resampling the same array may be handed out for several consecutive frames: treat it as
    read-only.
    """

    image: np.ndarray
    time: float
    index: int


class FrameSource(Iterator[Frame], abc.ABC):
    """An iterator of `Frame`s that owns an open file; close it (or use it as a context manager)."""

    def __init__(self, info: SourceInfo, fps: float | None, tolerance: float = TOLERANCE_S) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None for the native rate (got {fps})")
        self.info = info
        self.fps = fps
        self.frames_decoded = 0
        self._output: Iterator[tuple[_Converted, float]] = resample(self._counted(), fps, tolerance)
        self._index = 0

    @abc.abstractmethod
    def _decode(self) -> Iterator[tuple[LoadImage, float]]:
        """Yield (image loader, timestamp in seconds) for every decoded frame, in presentation order.

        The loader does the costly part (colour conversion, resize, reading an image file): frames that
        resampling drops (60 -> 30 fps: every other one) are decoded but never converted.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file; further iteration stops."""

    def _counted(self) -> Iterator[tuple[_Converted, float]]:
        for load, stamp in self._decode():
            self.frames_decoded += 1
            yield _Converted(load), stamp

    def __next__(self) -> Frame:
        converted, time = next(self._output)
        frame = Frame(image=converted.image(), time=time, index=self._index)
        self._index += 1
        return frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
            pass


class _Converted:
    """A frame's image, converted on first use and kept (resampling may hand it out more than once)."""

    __slots__ = ("_load", "_image")

    def __init__(self, load: LoadImage) -> None:
        self._load: LoadImage | None = load
        self._image: np.ndarray | None = None

    def image(self) -> np.ndarray:
        if self._image is None:
            assert self._load is not None
            self._image, self._load = self._load(), None
        return self._image

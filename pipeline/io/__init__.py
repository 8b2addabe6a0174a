"""Streaming frame sources: videos (PyAV) and folders of frames, one upright RGB frame at a time.

`open_source` picks the reader from the path (a directory is a frame folder, a file is a video) and
resamples to a fixed frame rate when asked; `probe` reads only what the header (and first frame) tells.
Memory never grows with the video's length: frames are produced and dropped one by one.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io.resample import TOLERANCE_S, resample

__all__ = [
    "DEFAULT_FRAMES_FPS",
    "DEFAULT_FRAMES_PATTERN",
    "DecodeError",
    "Frame",
    "FrameSource",
    "LoadImage",
    "Resize",
    "SourceInfo",
    "open_source",
    "probe",
]

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


def probe(
    path: Path,
    *,
    frames_pattern: str = DEFAULT_FRAMES_PATTERN,
    frames_fps: float = DEFAULT_FRAMES_FPS,
) -> SourceInfo:
    """Cheap look at a source: the header (a video's first frame, for its rotation) or the file names."""
    path = Path(path)
    if path.is_dir():
        from pipeline.io.frames import probe_frames

        return probe_frames(path, pattern=frames_pattern, fps=frames_fps)
    from pipeline.io.video import probe_video

    return probe_video(path)


def open_source(
    path: Path,
    *,
    fps: float | None = None,
    frames_pattern: str = DEFAULT_FRAMES_PATTERN,
    frames_fps: float = DEFAULT_FRAMES_FPS,
    resize: Resize | None = None,
    threads: int = 0,
) -> FrameSource:
    """Open a video file or frame folder; frames come resampled to `fps` (None: every decoded frame).

    `resize` = (width, height) of the upright output, or a function giving it from the source's upright
    (width, height) (e.g. `FrameTransform.resized_size`), done by the decoder (FFmpeg's swscale for
    videos, Pillow per image for frame folders); `threads` = decoder threads (0: FFmpeg chooses).
    """
    path = Path(path)
    if path.is_dir():
        from pipeline.io.frames import FolderSource

        return FolderSource(path, fps=fps, pattern=frames_pattern, frames_fps=frames_fps, resize=resize)
    from pipeline.io.video import VideoSource

    return VideoSource(path, fps=fps, resize=resize, threads=threads)

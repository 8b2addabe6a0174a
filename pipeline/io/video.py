"""Video files through PyAV: threaded decode, FFmpeg's rgb24 conversion (and resize), rotation metadata.

Truncated or damaged files: when FFmpeg raises while decoding, the source raises `DecodeError`
("truncated: decode error at 3.2 s: ...") and the engine keeps nothing of the video; when FFmpeg
silently stops early (it often just drops the incomplete tail), the source simply yields fewer frames.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.io.resample import TOLERANCE_S
from pipeline.io.source import DecodeError, FrameSource, LoadImage, Resize, SourceInfo

log = logging.getLogger(__name__)

# FFmpeg swscale interpolation for decoder-side resizing (the "ffmpeg" resize backend).
RESIZE_INTERPOLATION = "BILINEAR"


def _quarter_turns(rotation: float | int | None) -> int:
    """Counter-clockwise display rotation in degrees -> number of quarter turns 0..3."""
    if rotation is None or rotation != rotation:  # None or NaN (singular display matrix)
        return 0
    return int(round(float(rotation) / 90.0)) % 4


def _describe(error: BaseException) -> str:
    """FFmpeg's reason without the errno and file name PyAV adds."""
    return getattr(error, "strerror", None) or str(error)


def _timestamp_tolerance(stream: av.VideoStream) -> float:
    """Half a container tick (at most 0.5 ms): Matroska rounds timestamps to whole milliseconds."""
    tick = float(stream.time_base) if stream.time_base else 0.0
    return TOLERANCE_S + min(tick / 2, 0.0005)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DecodeError(path, "file not found")
    if not path.is_file():
        raise DecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError(path, "empty file")


def _open(path: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open the container and return it with its first video stream (DecodeError otherwise)."""
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise DecodeError(path, f"cannot open: {_describe(error)}") from error
    if not container.streams.video:
        container.close()
        raise DecodeError(path, "no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise DecodeError(path, "no decoder for the video codec in this FFmpeg build")
    return container, stream


def _header_info(path: Path, container: av.container.InputContainer, stream: av.VideoStream) -> dict:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    native_fps = float(rate) if rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    frame_count = stream.frames or None
    if frame_count is None and duration is not None and native_fps:
        frame_count = int(round(duration * native_fps))
    codec = stream.codec_context.name
    return {
        "path": path,
        "kind": "video",
        "native_fps": native_fps,
        "duration": duration,
        "frame_count": frame_count,
        "codec": codec,
    }


def _first_frame(path: Path, frames: Iterator[av.VideoFrame]) -> av.VideoFrame:
    """The first frame of the decode iterator (which then goes on with the second)."""
    try:
        for frame in frames:
            return frame
    except av.FFmpegError as error:
        raise DecodeError(path, f"decode error before the first frame: {_describe(error)}") from error
    raise DecodeError(path, "zero decodable frames")


def _info_from_frame(header: dict, frame: av.VideoFrame) -> SourceInfo:
    turns = _quarter_turns(frame.rotation)
    width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    return SourceInfo(width=width, height=height, rotation=90 * turns, **header)


def header_duration(path: Path) -> float | None:
    """A video's duration in seconds from its container header alone (nothing decoded; about a fifth of
    `probe_video`'s cost); None when the header does not say. DecodeError when it cannot be opened."""
    container, stream = _open(Path(path))
    try:
        return _header_info(Path(path), container, stream)["duration"]
    finally:
        container.close()


def probe_video(path: Path) -> SourceInfo:
    """Header facts plus the first frame (decoded only for its size and rotation)."""
    path = Path(path)
    container, stream = _open(path)
    try:
        first = _first_frame(path, container.decode(stream))
        return _info_from_frame(_header_info(path, container, stream), first)
    finally:
        container.close()


class VideoSource(FrameSource):
    """Decoded upright RGB frames of a video file; see `pipeline.io.open_source`."""

    def __init__(
        self, path: Path, *, fps: float | None = None, resize: Resize | None = None, threads: int = 0
    ) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        container, stream = _open(self.path)
        self._container = container
        try:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = max(0, int(threads))
            header = _header_info(self.path, container, stream)
            # One decode iterator for the whole life of the source: frames PyAV has already pulled out
            # of the decoder stay in it (a second iterator would lose them, and re-flush at the end).
            self._decoded = container.decode(stream)
            self._first: av.VideoFrame | None = _first_frame(self.path, self._decoded)
        except BaseException:
            self.close()
            raise
        self._stream = stream
        self._reformatter = VideoReformatter()
        info = _info_from_frame(header, self._first)
        self._turns = info.rotation // 90
        self._resize = None
        if callable(resize):
            resize = resize(info.width, info.height)
        if resize is not None and tuple(resize) != (info.width, info.height):
            width, height = int(resize[0]), int(resize[1])
            if width < 1 or height < 1:
                self.close()
                raise ValueError(f"resize must be (width, height) >= 1 (got {resize})")
            # The decoder resizes before rotating: swap the target for quarter turns.
            self._resize = (height, width) if self._turns % 2 else (width, height)
            info = dataclasses.replace(info, width=width, height=height)
        try:
            super().__init__(info, fps, _timestamp_tolerance(stream))
        except BaseException:
            self.close()
            raise

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        # One reformatter for the whole video keeps FFmpeg's scaler set up between frames.
        if self._resize is None:
            rgb = self._reformatter.reformat(frame, format="rgb24")
        else:
            width, height = self._resize
            rgb = self._reformatter.reformat(
                frame, width=width, height=height, format="rgb24", interpolation=RESIZE_INTERPOLATION
            )
        array = rgb.to_ndarray()
        if self._turns:
            array = np.rot90(array, self._turns)
        return np.ascontiguousarray(array)

    def _decode(self) -> Iterator[tuple[LoadImage, float]]:
        container = self._container
        if container is None:
            return
        frame: av.VideoFrame | None = self._first
        self._first = None
        frames = self._decoded
        last_time = 0.0
        step = 1.0 / self.info.native_fps if self.info.native_fps else 1.0 / 30.0
        first = True
        while self._container is not None:  # stops quietly once closed
            if frame is None:
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                except av.FFmpegError as error:
                    raise DecodeError(
                        self.path, f"truncated: decode error at {last_time:.1f} s: {_describe(error)}"
                    ) from error
            stamp = frame.time
            if stamp is None:  # no pts (rare): continue at the nominal frame rate
                stamp = last_time if first else last_time + step
            first = False
            last_time = float(stamp)
            load = partial(self._to_array, frame)
            frame = None
            yield load, last_time

    def close(self) -> None:
        """Close the container (idempotent)."""
        container = getattr(self, "_container", None)
        if container is not None:
            self._container = None
            self._first = None
            container.close()

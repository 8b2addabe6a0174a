"""Streaming frame sources: videos (PyAV) and folders of frames, one upright RGB frame at a time.

`open_source` picks the reader from the path (a directory is a frame folder, a file is a video) and
resamples to a fixed frame rate when asked; `probe` reads only what the header (and first frame) tells.
Memory never grows with the video's length: frames are produced and dropped one by one. `source` (the
interface), `video` (PyAV), `frames` (folders of images), `resample` (a fixed frame rate), `flow` (the
frames as a frame-extraction tool stored them, and optical flow as a source: `stream_source`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.io.flow import (
    FLOW_CHANNELS,
    STREAMS,
    FlowSettings,
    FlowSource,
    FlowUnavailable,
    StoredFrames,
    StoredFrameSource,
    TVL1Params,
    flow_available,
    stream_source,
)
from pipeline.io.frames import FolderSource, probe_frames
from pipeline.io.source import (
    DEFAULT_FRAMES_FPS,
    DEFAULT_FRAMES_PATTERN,
    DecodeError,
    Frame,
    FrameSource,
    LoadImage,
    Resize,
    SourceInfo,
)
from pipeline.io.video import VideoSource, header_duration, probe_video

__all__ = [
    "DEFAULT_FRAMES_FPS",
    "DEFAULT_FRAMES_PATTERN",
    "FLOW_CHANNELS",
    "STREAMS",
    "DecodeError",
    "FlowSettings",
    "FlowSource",
    "FlowUnavailable",
    "Frame",
    "FrameSource",
    "LoadImage",
    "Resize",
    "SourceInfo",
    "duration_of",
    "header_duration",
    "StoredFrameSource",
    "StoredFrames",
    "TVL1Params",
    "flow_available",
    "open_source",
    "probe",
    "stream_source",
]


def probe(
    path: Path,
    *,
    frames_pattern: str = DEFAULT_FRAMES_PATTERN,
    frames_fps: float = DEFAULT_FRAMES_FPS,
) -> SourceInfo:
    """Cheap look at a source: the header (a video's first frame, for its rotation) or the file names."""
    path = Path(path)
    if path.is_dir():
        return probe_frames(path, pattern=frames_pattern, fps=frames_fps)
    return probe_video(path)


def duration_of(
    path: Path, *, frames_pattern: str = DEFAULT_FRAMES_PATTERN, frames_fps: float = DEFAULT_FRAMES_FPS
) -> float | None:
    """A source's duration from the cheapest look that tells it: a video's container header (nothing
    decoded), a frame folder's file count."""
    path = Path(path)
    if path.is_dir():
        return probe_frames(path, pattern=frames_pattern, fps=frames_fps).duration
    return header_duration(path)


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
        return FolderSource(path, fps=fps, pattern=frames_pattern, frames_fps=frames_fps, resize=resize)
    return VideoSource(path, fps=fps, resize=resize, threads=threads)

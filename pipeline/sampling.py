"""Clip windows over a frame sequence: index lists, timestamps and a bounded-memory streaming form.

Pure: no video, no model. Frame indices refer to the (possibly resampled) frame stream of one video,
numbered 0..n-1. Indices outside [0, n) mark padding; `resolve_padding` maps them to frames.

Window kinds (T = num_frames, tau = sampling_rate):
- "sliding": clip k covers frames k*stride + j*tau for j = 0..T-1.
- "centered": clip k is centred on frame i = k*stride and covers i + (j - T/2)*tau for j = 0..T-1.
Padding: "zero" and "edge" keep every clip whose anchor (sliding: first frame, centered: centre frame)
lies in [0, n), so there is one row per `stride` frames; "drop" keeps only clips entirely inside [0, n).
"shift" (sliding only) keeps the "drop" clips and, when they stop short of the video's end, adds one clip
moved back so that it ends on the last frame; a video shorter than one clip gives one clip of T frames
spread evenly over all its frames. No clip needs padding. This is the Ego4D features' rule
(pytorchvideo's UniformClipSampler with backpad_last=True, then UniformTemporalSubsample to T frames).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW_KINDS = ("sliding", "centered")
PAD_MODES = ("zero", "edge", "drop", "shift")


@dataclass(frozen=True)
class WindowSpec:
    """How clips are cut from a frame sequence; validated on construction (ValueError names the field)."""

    num_frames: int  # T, frames fed to the model (fast pathway)
    sampling_rate: int  # tau, stride inside a clip in (resampled) frames
    stride: int  # frames between consecutive clips
    window: str = "sliding"  # "sliding" | "centered"
    pad: str = "zero"  # "zero" | "edge" | "drop" | "shift"

    def __post_init__(self) -> None:
        for name in ("num_frames", "sampling_rate", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"WindowSpec.{name} must be an integer >= 1, got {value!r}")
        if self.window not in WINDOW_KINDS:
            raise ValueError(f"WindowSpec.window must be one of {WINDOW_KINDS}, got {self.window!r}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"WindowSpec.pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.pad == "shift" and self.window != "sliding":
            raise ValueError("WindowSpec.pad 'shift' needs window 'sliding' (it moves the last clip back)")
        if self.window == "centered" and self.num_frames % 2:
            raise ValueError(
                f"WindowSpec.num_frames must be even for a centered window, got {self.num_frames}"
            )

    @property
    def span(self) -> int:
        """Frames from a clip's first to one past its last index: (T - 1) * tau + 1."""
        return (self.num_frames - 1) * self.sampling_rate + 1

    @property
    def offsets(self) -> np.ndarray:
        """(T,) int64 offsets of a clip's frames from its anchor frame."""
        offs = np.arange(self.num_frames, dtype=np.int64) * self.sampling_rate
        if self.window == "centered":
            offs -= (self.num_frames // 2) * self.sampling_rate
        return offs

    def first_anchor(self) -> int:
        """Anchor of row 0: 0, except centered+drop, which skips centres whose clip starts before frame 0."""
        if self.window == "centered" and self.pad == "drop":
            lead = (self.num_frames // 2) * self.sampling_rate
            return math.ceil(lead / self.stride) * self.stride
        return 0


def _num_rows(n: int, spec: WindowSpec) -> int:
    """Number of clips for a video of n frames."""
    if n <= 0:
        return 0
    if spec.pad == "shift":
        if n < spec.span:
            return 1
        regular, rest = divmod(n - spec.span, spec.stride)
        return regular + 1 + (1 if rest else 0)
    a0 = spec.first_anchor()
    # Last anchor allowed: n - 1 when padding, else the one whose last frame is n - 1.
    limit = n - 1 if spec.pad != "drop" else n - 1 - int(spec.offsets[-1])
    if limit < a0:
        return 0
    return (limit - a0) // spec.stride + 1


def clip_windows(n: int, spec: WindowSpec) -> np.ndarray:
    """(clips, T) int64 frame indices for a video of n frames; indices outside [0, n) are padding.

    Sliding with zero/edge padding gives ceil(n / stride) rows (>= 1 for any n >= 1); drop gives only
    clips entirely inside the video (possibly 0). n = 0 gives an empty (0, T) array.
    """
    if n < 0:
        raise ValueError(f"frame count must be >= 0, got {n}")
    rows = _num_rows(n, spec)
    anchors = spec.first_anchor() + np.arange(rows, dtype=np.int64) * spec.stride
    windows = anchors[:, None] + spec.offsets[None, :]
    if spec.pad == "shift" and rows:
        windows[-1] = shifted_last_clip(n, spec)
    return windows


def shifted_last_clip(n: int, spec: WindowSpec) -> np.ndarray:
    """(T,) frame indices of the last clip under pad "shift": ends on frame n-1 (or spreads over n frames).

    n >= span: the clip [n - span, n) with the spec's tau (the same as a regular clip when it fits the
    stride grid); n < span: T indices linspace(0, n-1, T) in float32, truncated, as pytorchvideo's
    UniformTemporalSubsample picks them (frames repeat, none is padding).
    """
    if n < 1:
        raise ValueError(f"frame count must be >= 1, got {n}")
    if n >= spec.span:
        return (n - spec.span) + spec.offsets
    import torch  # local: keeps this module importable and cheap for pure users

    points = torch.linspace(0, n - 1, spec.num_frames, dtype=torch.float32)
    return points.clamp(0, n - 1).long().numpy().astype(np.int64)


def resolve_padding(windows: np.ndarray, n: int, pad: str) -> tuple[np.ndarray, np.ndarray]:
    """Map window indices to real frames: (indices clamped into [0, n), valid mask).

    valid is False only at zero-padding positions (their clamped index is a placeholder to be zeroed);
    edge padding repeats the first/last frame and counts as valid.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    windows = np.asarray(windows, dtype=np.int64)
    if n <= 0:
        if windows.size:
            raise ValueError("windows must be empty for a video with 0 frames")
        return windows.copy(), np.ones(windows.shape, dtype=bool)
    inside = (windows >= 0) & (windows < n)
    if pad in ("drop", "shift") and not inside.all():
        raise ValueError(f"pad={pad!r} windows must lie inside [0, n)")
    clamped = np.clip(windows, 0, n - 1)
    valid = inside if pad == "zero" else np.ones(windows.shape, dtype=bool)
    return clamped, valid


def _check_duration(frame_duration: float) -> float:
    """Frame duration as a float; ValueError unless finite and >= 0."""
    d = float(frame_duration)
    if not math.isfinite(d) or d < 0:
        raise ValueError(f"frame_duration must be finite and >= 0, got {frame_duration!r}")
    return d


def _clamp_span(start: Any, end: Any, lo: Any, hi: Any) -> tuple[Any, Any, Any]:
    """Clamp nominal start/end into [lo, hi] and the centre into [start, end]; scalars or arrays."""
    centre = (start + end) / 2
    start = np.minimum(np.maximum(start, lo), hi)
    end = np.minimum(np.maximum(end, lo), hi)
    centre = np.minimum(np.maximum(centre, start), end)
    return start, end, centre


def clip_timestamps(
    windows: np.ndarray, frame_times: np.ndarray, frame_duration: float, n: int
) -> np.ndarray:
    """(clips, 3) float64 start, end, centre in seconds for each clip row.

    Frame times are extended past the video in `frame_duration` steps: t(j) = times[0] + j*d for
    j < 0 and times[n-1] + (j-n+1)*d for j >= n. Nominal start = t(first index), end = t(last index) + d,
    centre = (start + end) / 2; start and end are then clamped to the video's span
    [times[0], times[n-1] + d] and the centre into [start, end]. For a centered window with tau = 1
    the centre is the time of the centre frame. Frame times are assumed non-decreasing.
    """
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2:
        raise ValueError(f"windows must be 2-D (clips, T), got shape {windows.shape}")
    if windows.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.float64)
    times = np.asarray(frame_times, dtype=np.float64)
    if n < 1 or times.shape[0] < n:
        raise ValueError(f"frame_times has {times.shape[0]} entries, need n={n} >= 1")
    d = _check_duration(frame_duration)
    first_time = times[0]
    last_time = times[n - 1]
    nominal = []
    for idx in (windows[:, 0], windows[:, -1]):
        inside = times[np.clip(idx, 0, n - 1)]
        before = first_time + idx.astype(np.float64) * d
        after = last_time + (idx - (n - 1)).astype(np.float64) * d
        nominal.append(np.where(idx < 0, before, np.where(idx >= n, after, inside)))
    start, end, centre = _clamp_span(nominal[0], nominal[1] + d, first_time, last_time + d)
    return np.stack([start, end, centre], axis=1)


def slow_pathway_indices(num_frames: int, alpha: int) -> list[int]:
    """Slow-pathway positions within a T-frame clip, as PySlowFast picks them.

    torch.linspace(0, T-1, T // alpha) in float32, truncated to integers: T=32, alpha=4 gives
    0, 4, 8, 13, 17, 22, 26, 31. float32 matters: exact rational arithmetic differs for some T.
    """
    if num_frames < 1 or alpha < 1 or num_frames // alpha < 1:
        raise ValueError(f"slow pathway needs num_frames >= alpha >= 1, got T={num_frames}, alpha={alpha}")
    import torch  # local: keeps this module importable and cheap for pure users

    points = torch.linspace(0, num_frames - 1, num_frames // alpha, dtype=torch.float32)
    return [int(i) for i in points.long().tolist()]


@dataclass
class ReadyClip:
    """One clip row assembled by ClipStream."""

    index: int  # row number within the video, 0..
    frames: list[Any]  # T payloads; zero-pad positions hold None, edge-pad the first/last frame's
    valid: np.ndarray  # (T,) bool, False where zero padding
    timestamps: np.ndarray  # (3,) start, end, centre


class ClipStream:
    """Assemble clips from frames pushed one at a time, in order, holding only the frames still needed.

    Yields exactly the rows and timestamps of `clip_windows` / `clip_timestamps` for the final frame
    count n (frame times non-decreasing). Memory is bounded by about (T-1)*tau + 1 frames.
    """

    def __init__(self, spec: WindowSpec, frame_duration: float):
        self.spec = spec
        self.frame_duration = _check_duration(frame_duration)
        self._offsets = [int(o) for o in spec.offsets]
        self._next_row = 0
        self._count = 0  # frames pushed so far
        # (payload, time) of the most recent frames still needed; always the last len() frames pushed
        self._frames: deque[tuple[Any, float]] = deque()
        self._first: tuple[Any, float] | None = None  # frame 0, for edge padding and t(j < 0)
        self._last: tuple[Any, float] | None = None  # latest frame, for edge padding and t(j >= n)
        self._finished = False

    @property
    def buffered(self) -> int:
        """Frames currently held in the window buffer."""
        return len(self._frames)

    def _anchor(self, row: int) -> int:
        return self.spec.first_anchor() + row * self.spec.stride

    def _oldest_needed(self) -> int:
        """Smallest frame index any future clip may still need."""
        oldest = self._anchor(self._next_row) + self._offsets[0]
        if self.spec.pad == "shift":  # the clip shifted to the end may start span - 1 frames back
            oldest = min(oldest, self._count - self.spec.span)
        return oldest

    def push(self, payload: Any, time: float) -> list[ReadyClip]:
        """Add the next frame (index 0, 1, 2, ...); return the clips it completes, in row order."""
        if self._finished:
            raise RuntimeError("ClipStream.push after finish()")
        index = self._count
        self._count += 1
        entry = (payload, float(time))
        if index == 0:
            self._first = entry
        self._last = entry
        if index >= self._oldest_needed():
            self._frames.append(entry)
            if self.spec.pad == "shift":  # the end is unknown: keep only the last span frames
                self._release()
        ready = []
        while self._anchor(self._next_row) + self._offsets[-1] <= index:
            ready.append(self._emit())
        return ready

    def finish(self) -> list[ReadyClip]:
        """End of video: return the remaining clips (those that need frames past the end)."""
        if self._finished:
            return []
        self._finished = True
        rows = _num_rows(self._count, self.spec)
        ready = [self._emit() for _ in range(self._next_row, rows)]
        self._frames.clear()
        return ready

    def _emit(self) -> ReadyClip:
        """Build the next row from the buffered frames (and padding past the frames seen so far)."""
        assert self._first is not None and self._last is not None
        anchor = self._anchor(self._next_row)
        indices = [anchor + o for o in self._offsets]
        if self._finished and self.spec.pad == "shift" and indices[-1] >= self._count:
            indices = [int(j) for j in shifted_last_clip(self._count, self.spec)]
        zero = self.spec.pad == "zero"
        frames: list[Any] = []
        valid = np.ones(len(indices), dtype=bool)
        for pos, j in enumerate(indices):
            if j < 0 or j >= self._count:  # j >= count only happens at finish, where count == n
                valid[pos] = not zero
                frames.append(None if zero else (self._first if j < 0 else self._last)[0])
            else:
                frames.append(self._stored(j)[0])
        stamps = self._timestamps(indices[0], indices[-1])
        row = ReadyClip(index=self._next_row, frames=frames, valid=valid, timestamps=stamps)
        self._next_row += 1
        self._release()
        return row

    def _time_of(self, j: int) -> float:
        """Extended frame time t(j), same arithmetic as clip_timestamps."""
        assert self._first is not None and self._last is not None
        d = np.float64(self.frame_duration)
        if j < 0:
            return self._first[1] + np.float64(j) * d
        if j >= self._count:
            return self._last[1] + np.float64(j - (self._count - 1)) * d
        return self._stored(j)[1]

    def _stored(self, j: int) -> tuple[Any, float]:
        """The buffered (payload, time) of frame j."""
        return self._frames[j - (self._count - len(self._frames))]

    def _timestamps(self, first: int, last: int) -> np.ndarray:
        """Start, end, centre of a clip; before the end, the span's upper bound is the latest frame."""
        assert self._first is not None and self._last is not None
        d = np.float64(self.frame_duration)
        lo = np.float64(self._first[1])
        hi = np.float64(self._last[1]) + d
        start, end, centre = _clamp_span(
            np.float64(self._time_of(first)), np.float64(self._time_of(last)) + d, lo, hi
        )
        return np.array([start, end, centre], dtype=np.float64)

    def _release(self) -> None:
        """Drop frames no future clip needs."""
        drop = self._oldest_needed() - (self._count - len(self._frames))
        for _ in range(min(max(drop, 0), len(self._frames))):
            self._frames.popleft()


def iter_clips(
    items: Iterable[tuple[Any, float]], spec: WindowSpec, frame_duration: float
) -> Iterator[ReadyClip]:
    """Convenience: stream (payload, time) pairs through a ClipStream, yielding clips in row order."""
    stream = ClipStream(spec, frame_duration)
    for payload, time in items:
        yield from stream.push(payload, time)
    yield from stream.finish()

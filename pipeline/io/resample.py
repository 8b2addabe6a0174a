"""Resample a stream of timestamped frames to a constant frame rate (pure, streaming)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

TOLERANCE_S = 1e-6


def resample(
    frames: Iterable[tuple[T, float]], fps: float | None, tolerance: float = TOLERANCE_S
) -> Iterator[tuple[T, float]]:
    """Yield (item, time) at `fps`; times are taken relative to the first frame's timestamp.

    Output frame k is the last input frame whose relative time is <= k / fps + tolerance, with
    time k / fps; the stream ends at the last k with k / fps <= the latest input time. So 60 -> 30 keeps
    every other frame, 25 -> 30 repeats some, and variable frame rates come out evenly spaced.
    `fps=None` passes every frame through with its own relative time. Holds one frame at a time.
    The tolerance absorbs timestamps rounded by the container (Matroska stores milliseconds).
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 or None (got {fps})")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        return
    held, start = first
    if fps is None:
        yield held, 0.0
        for item, stamp in iterator:
            yield item, stamp - start
        return
    k = 0
    latest = 0.0
    for item, stamp in iterator:
        t = stamp - start
        latest = max(latest, t)
        # Every target before this frame's time is served by the frame held so far.
        while t > k / fps + tolerance:
            yield held, k / fps
            k += 1
        held = item
    while k / fps <= latest + tolerance:
        yield held, k / fps
        k += 1

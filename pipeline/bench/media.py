"""Benchmark videos: numbered h264 videos generated once and cached (longer ones loop a one-minute one)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av

from pipeline import synth

log = logging.getLogger(__name__)


def generated_video(workdir: Path, resolution: tuple[int, int], fps: float, seconds: float) -> Path:
    """A numbered h264 test video (pipeline.synth), cached in workdir; longer ones loop a 1-minute one."""
    width, height = resolution
    path = workdir / f"synth_{width}x{height}_{fps:g}fps_{seconds:g}s.mp4"
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.mp4")
    if seconds <= 60:
        log.info("writing %s", path.name)
        synth.write_video(partial, size=(width, height), fps=fps, seconds=seconds)
    else:
        base = generated_video(workdir, resolution, fps, 60.0)
        loop_video(base, partial, int(round(seconds / 60)))
    partial.rename(path)
    return path


def loop_video(source: Path, target: Path, copies: int) -> None:
    """target = source repeated `copies` times, by remuxing packets (no re-encoding)."""
    log.info("writing %s (%d copies of %s)", target.name, copies, source.name)
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        span = None
        for copy in range(copies):
            src.seek(0)
            last = 0
            for packet in src.demux(stream_in):
                if packet.pts is None:
                    continue
                if span is None and copy == 0:
                    last = max(last, packet.pts + (packet.duration or 0))
                offset = copy * (span or 0)
                packet.pts += offset
                packet.dts = packet.dts + offset if packet.dts is not None else None
                packet.stream = stream_out
                dst.mux(packet)
            if span is None:
                span = last


def link_copy(source: Path, target: Path) -> Path:
    """target as a hard link of source (a separate file name, same bytes)."""
    if not target.exists():
        os.link(source, target)
    return target

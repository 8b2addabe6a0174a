"""Decoding alone (one worker's frames/s and CPU per frame), the engine's hand-over without decoding or
model, and the decode workers a node needs to keep its model busy."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
import torch

from pipeline.bench.measure import MB, CpuMeter, median_rate, time_call
from pipeline.bench.settings import Settings
from pipeline.decode import SourceOpener
from pipeline.engine import Engine, VideoJob
from pipeline.io import Frame, FrameSource, SourceInfo, probe
from pipeline.sampling import WindowSpec
from pipeline.transforms import FrameTransform


def measure_decode(
    video: Path,
    opener: SourceOpener,
    transform: FrameTransform,
    max_frames: int,
    repeats: int,
    cpu: dict[str, float] | None = None,
) -> float:
    """Decoded source frames/s (decode, resampling and the transform to model input) like one worker.

    `cpu`, when given, receives "cpu_s_per_frame": the median CPU seconds (all decoder threads) per
    source frame.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker
    job = VideoJob("bench", video, video.name)
    times, cpu_times, frames = [], [], 0
    try:
        for _ in range(repeats):
            with CpuMeter() as meter:
                started = time.perf_counter()
                with opener(job) as source:
                    for frame in source:
                        transform(frame.image)
                        if source.frames_decoded >= max_frames:
                            break
                    frames = source.frames_decoded
                times.append(time.perf_counter() - started)
            cpu_times.append(meter.ours / max(frames, 1))
    finally:
        torch.set_num_threads(threads)
    if cpu is not None:
        cpu["cpu_s_per_frame"] = statistics.median(cpu_times)
    return median_rate(frames, times)


def measure_ffmpeg_cli(video: Path, size: int, max_frames: int, repeats: int) -> float | None:
    """frames/s of the ffmpeg CLI decoding and scaling to size x size rgb24 (None without ffmpeg)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    command = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "0",
        "-i",
        str(video),
        "-an",
        "-frames:v",
        str(max_frames),
        "-vf",
        f"scale={size}:{size}:flags=bilinear",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-y",
        os.devnull,
    ]
    times = [time_call(subprocess.run, command) for _ in range(repeats)]
    return median_rate(min(frame_count(video), max_frames), times)


def frame_count(video: Path) -> int:
    """Frames of a video: the header's count, else counted by decoding."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for _ in container.decode(stream))


# --- the transfer between decode workers and the model ----------------------------------------------


class SyntheticSource:
    """Ready frames at the model's input size, no decoding: isolates the engine's own plumbing."""

    def __init__(self, frames: int, size: int) -> None:
        self.frames = frames
        self.pool = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        self.info = SourceInfo(Path("synthetic"), "video", size, size, 30.0, frames / 30, frames, "none")

    def __enter__(self) -> SyntheticSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.frames):
            yield Frame(self.pool[i % len(self.pool)], i / 30, i)


@dataclass(frozen=True)
class SyntheticOpener:
    frames: int
    size: int

    def __call__(self, job: VideoJob) -> FrameSource:
        # duck-typed: the engine only enters, iterates and closes a source and reads its `info`
        return cast(FrameSource, SyntheticSource(self.frames, self.size))


def null_model(clips: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, None]:
    return np.zeros((len(clips), 1), np.float32), None


def measure_transfer(
    s: Settings, num_frames: int, size: int, backend: str, clips: int = 120
) -> dict[str, float]:
    """Clips/s and MB/s the engine moves from decode workers to the model with no decoding and no model."""
    frames = clips * s.stride
    engine = Engine(
        null_model,
        SyntheticOpener(frames, size),
        FrameTransform(mode="square", size=(size, size)),
        WindowSpec(num_frames, s.sampling_rate or 1, s.stride),
        fps=30.0,
        batch_size=s.batch_size,
        decode_backend=backend,
        decode_workers=s.decode_workers,
    )
    started = time.perf_counter()
    rows = 0
    for result in engine.run([VideoJob("t", Path("t"), "t")]):
        assert result.features is not None, result.error
        rows += len(result.features)
    seconds = time.perf_counter() - started
    clip_mb = num_frames * size * size * 3 / MB
    return {"clips_per_s": rows / seconds, "mb_per_s": rows * clip_mb / seconds}


def frames_per_clip(c: Any, video: Path) -> float:
    """Source frames decoded per new clip: the stride, in source frames (fps resampling included)."""
    native = probe(video).native_fps or 30.0
    return c.data.stride * native / (c.data.fps or native)


def cpu_budget(report: dict[str, Any], c: Any) -> dict[str, Any]:
    """End-to-end CPU seconds per clip against the sum of its parts measured alone (model-only +
    decode-only): what the hand-over, the batching and threads competing for the cores cost on top."""
    backend = c.data.resize.backend.value
    decode = report["decode"][f"{backend}_resize_cpu_s_per_frame"] * frames_per_clip(
        c, Path(report["videos"][0])
    )
    model = report["e2e"]["model_cpu_s_per_clip"]
    e2e = report["e2e"]["cpu_s_per_clip"]
    return {
        "model_cpu_s_per_clip": model,
        "decode_cpu_s_per_clip": decode,
        "e2e_cpu_s_per_clip": e2e,
        "e2e_vs_parts": e2e / (model + decode),
    }


def bottleneck(report: dict[str, Any], c: Any, video: Path, workers: int) -> dict[str, Any]:
    """Which side limits the run: decode capacity in clips/s vs the model's clips/s (measured rates)."""
    per_clip = frames_per_clip(c, video)
    backend = c.data.resize.backend.value
    decode_fps = report["decode"][f"{backend}_resize_frames_per_s"]
    capacity = decode_fps * workers / per_clip
    model = report["model_clips_per_s"]
    side = "decode" if capacity < model else "model"
    return {
        "decode_capacity_clips_per_s": capacity,
        "model_clips_per_s": model,
        "limit": side,
        "note": f"{workers} decode worker(s) at {decode_fps:.0f} frames/s feed "
        f"{capacity:.2f} clips/s; the model takes {model:.2f}: the {side} is the bottleneck",
    }


def decode_workers_needed(
    model_clips_per_s: float, worker_frames_per_s: float, frames_per_clip: float, cpus: int
) -> dict[str, Any]:
    """Decode workers (one CPU, one FFmpeg thread each) that keep the model busy, and whether the node
    has them: model clips/s over one worker's clips/s; one CPU stays with the process that feeds the model.
    """
    worker_clips_per_s = worker_frames_per_s / frames_per_clip
    needed = max(1, math.ceil(model_clips_per_s / worker_clips_per_s)) if worker_clips_per_s > 0 else None
    spare = max(1, cpus - 1)
    enough = needed is not None and needed <= spare
    reachable = min(model_clips_per_s, spare * worker_clips_per_s)
    return {
        "model_clips_per_s": model_clips_per_s,
        "decode_clips_per_s_per_worker": worker_clips_per_s,
        "decode_workers_needed": needed,
        "cpus": cpus,
        "decode_workers_available": spare,
        "enough_cpus": enough,
        "expected_clips_per_s": reachable,
        "model_busy_share": reachable / model_clips_per_s if model_clips_per_s > 0 else None,
    }


def node_decode_plan(report: dict[str, Any], c: Any, video: Path, device: str, cpus: int) -> dict[str, Any]:
    """For this node (its usable CPUs, its GPU): the decode workers that keep the model busy, from the
    model's clips/s and one single-threaded worker's decode rate, both measured in this run."""
    native = probe(video).native_fps or 30.0
    frames_per_clip = c.data.stride * native / (c.data.fps or native)  # source frames decoded per new clip
    backend = c.data.resize.backend.value
    worker_fps = report["decode"][f"{backend}_resize_one_thread_frames_per_s"]
    plan = decode_workers_needed(report["model_clips_per_s"], worker_fps, frames_per_clip, cpus)
    gpu = torch.cuda.get_device_name(torch.cuda.current_device()) if device == "cuda" else None
    plan.update(device=device, gpu=gpu, decode_frames_per_s_per_worker=worker_fps)
    needed = plan["decode_workers_needed"]
    plan["note"] = (
        f"the model takes {plan['model_clips_per_s']:.1f} clips/s; one decode worker (1 CPU) feeds "
        f"{plan['decode_clips_per_s_per_worker']:.2f}: {needed} worker(s) keep it busy, this node has "
        f"{plan['decode_workers_available']} to spare ({plan['cpus']} CPUs) -> about "
        f"{plan['expected_clips_per_s']:.1f} clips/s"
    )
    return plan

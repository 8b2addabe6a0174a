"""Optical flow's cost (`--flow`): TV-L1 pairs/s on one core at the recipe's size, the whole flow source
(decode, resize, grayscale, TV-L1, 0..255 mapping, JPEG round trip) frames/s in one worker, and what a data
set costs in CPU time.

TV-L1 is by far the dearest step of a flow run: about 1.5 s of one core per frame at 340x256 with dense_flow's
settings, against ~0.01 s for decoding and resizing, so a flow run is CPU-bound and scales with the cores
given to its decode workers (hardware.decode_workers, one core each) and with Slurm shards.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.bench.measure import CpuMeter
from pipeline.decode import SourceOpener
from pipeline.engine import VideoJob
from pipeline.io import FlowSettings, StoredFrames, TVL1Params
from pipeline.io.flow import grayscale, resize_stored

RECIPE_SIZE = (340, 256)  # dense_flow -w 340 -h 256: the THUMOS14 I3D features
THUMOS14_FRAMES = 2_000_000  # THUMOS14 val + test (the 413 videos TAD trains and tests on), about
SETTINGS = {
    "dense_flow": TVL1Params(),  # the CUDA solver's defaults, as the presets use them
    "opencv_cpu_defaults": TVL1Params(inner_iterations=30, outer_iterations=10, median_filtering=5),
}


def gray_frames(video: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first `count` frames of a video, resized to `size` and grayscale, as the flow source makes them."""
    with SourceOpener(threads=1)(VideoJob("bench", video, video.name)) as source:
        frames = [grayscale(resize_stored(f.image, size)) for f in itertools.islice(source, count)]
    if len(frames) < 2:
        raise ValueError(f"{video}: fewer than 2 frames to measure flow on")
    return frames


def measure_tvl1(frames: list[np.ndarray], params: TVL1Params, repeats: int) -> dict[str, float]:
    """TV-L1 on consecutive pairs, one thread: median wall seconds and CPU seconds per pair."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)  # as in a decode worker: one core
    solver = params.create()
    walls, cpus = [], []
    try:
        for _ in range(repeats):
            with CpuMeter() as meter:
                started = time.perf_counter()
                for previous, current in itertools.pairwise(frames):
                    solver.calc(previous, current, None)
                walls.append((time.perf_counter() - started) / (len(frames) - 1))
            cpus.append(meter.ours / (len(frames) - 1))
            foreign = meter.foreign_share
    finally:
        cv2.setNumThreads(threads)
    wall = statistics.median(walls)
    return {
        "s_per_pair": wall,
        "pairs_per_s": 1 / wall,
        "cpu_s_per_pair": statistics.median(cpus),
        "foreign_cpu_share": foreign,
    }


def measure_flow_source(video: Path, pairs: int, size: tuple[int, int]) -> dict[str, float]:
    """The flow source in one worker (decode, resize, grayscale, TV-L1, mapping, JPEG): fields/s."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    opener = SourceOpener(
        threads=1, stream="flow", stored=StoredFrames(size=size, jpeg_quality=95), flow=FlowSettings()
    )
    try:
        with CpuMeter() as meter:
            started = time.perf_counter()
            with opener(VideoJob("bench", video, video.name)) as source:
                fields = sum(1 for _ in itertools.islice(source, pairs))
            seconds = time.perf_counter() - started
    finally:
        cv2.setNumThreads(threads)
    return {"fields": fields, "fields_per_s": fields / seconds, "cpu_s_per_field": meter.ours / fields}


def dataset_cost(
    s_per_frame: float, frames: int, workers: tuple[int, ...] = (1, 16, 64, 256)
) -> dict[str, Any]:
    """CPU time of a data set's flow at `s_per_frame` (one core per decode worker), and wall days with N
    workers (decode workers x Slurm shards) when flow is the bottleneck."""
    core_hours = s_per_frame * frames / 3600
    return {
        "frames": frames,
        "core_hours": core_hours,
        "core_days": core_hours / 24,
        "wall_days_with_workers": {n: core_hours / 24 / n for n in workers},
    }


def bench_flow(
    video: Path,
    pairs: int,
    repeats: int,
    dataset_frames: int = THUMOS14_FRAMES,
    size: tuple[int, int] = RECIPE_SIZE,
) -> dict[str, Any]:
    """TV-L1 per pair at `size` (dense_flow's settings and OpenCV's CPU defaults), the flow source, and the
    cost of a data set of `dataset_frames` frames."""
    frames = gray_frames(video, pairs + 1, size)
    solvers = {name: measure_tvl1(frames, params, repeats) for name, params in SETTINGS.items()}
    source = measure_flow_source(video, pairs, size)
    return {
        "video": str(video),
        "size": list(size),
        "pairs": len(frames) - 1,
        "repeats": repeats,
        "tvl1": solvers,
        "flow_source": source,
        "dataset": dataset_cost(source["cpu_s_per_field"], dataset_frames),
        "settings": {name: asdict(params) for name, params in SETTINGS.items()},
    }


def print_flow(report: dict[str, Any]) -> None:
    width, height = report["size"]
    print(f"TV-L1 optical flow at {width}x{height}, one core ({report['pairs']} pairs of {report['video']}):")
    for name, row in report["tvl1"].items():
        print(
            f"  {name:20s} {row['s_per_pair']:.3f} s/pair = {row['pairs_per_s']:.3f} pairs/s "
            f"(CPU {row['cpu_s_per_pair']:.3f} s/pair; others used {row['foreign_cpu_share']:.0%} of the machine)"
        )
    src = report["flow_source"]
    print(
        f"  flow source (decode + resize + TV-L1 + mapping + JPEG): {src['fields_per_s']:.3f} fields/s, "
        f"{src['cpu_s_per_field']:.3f} CPU s/field"
    )
    d = report["dataset"]
    walls = ", ".join(f"{n} workers {days:.2f} days" for n, days in d["wall_days_with_workers"].items())
    print(
        f"  {d['frames']:,} frames: {d['core_hours']:.0f} core-hours = {d['core_days']:.1f} core-days; {walls}"
    )

"""The clip hand-over of uint8 and float recipes (`--transport`): what decoding and resizing a frame
costs, the bytes a clip takes from a decode worker to the model, the slots that hold them and a worker's
memory, the engine's transfer rate with no model, and, with the model, the end-to-end change.

uint8 recipes (OpenCV's resize) carry uint8 clips; float recipes (torch's bilinear on float frames:
PySlowFast's test transform, Ego4D, VideoMAE V2, TSP) carry float32 clips, 4x the bytes, so that the model
sees the recipe's own values (pipeline.transforms).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.bench.decode import SyntheticOpener, measure_decode, null_model
from pipeline.bench.e2e import make_extractor, measure_e2e
from pipeline.bench.measure import MB, MemorySampler
from pipeline.bench.settings import Settings
from pipeline.decode import SourceOpener
from pipeline.engine import Engine, VideoJob
from pipeline.sampling import WindowSpec
from pipeline.transforms import FrameTransform

RECIPES = {"uint8": "opencv", "float32": "float_bilinear"}  # the clip's dtype -> a recipe that makes it
SIZES = (256, 224)


def measure_handover(
    s: Settings, transform: FrameTransform, num_frames: int, clips: int = 60
) -> dict[str, Any]:
    """The engine moving clips of `transform`'s dtype and size from decode workers to a model that does
    nothing (no decoding either): clips/s, MB/s, the slots lent and the largest worker's peak PSS."""
    size = transform.output_shape[1]
    engine = Engine(
        null_model,
        SyntheticOpener(clips * s.stride, size),
        transform,
        WindowSpec(num_frames, s.sampling_rate or 1, s.stride),
        fps=30.0,
        batch_size=s.batch_size,
        decode_backend="process",
        decode_workers=s.decode_workers,
    )
    started = time.perf_counter()
    rows = 0
    with MemorySampler(engine, every_s=0.2) as memory:
        for result in engine.run([VideoJob(f"t{i}", Path("t"), "t") for i in range(2)]):
            assert result.features is not None, result.error
            rows += len(result.features)
            memory.sample()  # before the pool closes: its workers still hold their slots
    seconds = time.perf_counter() - started
    pool = engine.last_pool
    assert pool is not None
    clip_bytes = num_frames * transform.output_nbytes
    return {
        "clips_per_s": rows / seconds,
        "mb_per_s": rows * clip_bytes / MB / seconds,
        "slot_mb": pool.slot_nbytes / MB,
        "slots_per_worker": pool.slot_count(pool.slot_nbytes),
        "peak_worker_pss_mb": memory.peak_worker_pss / MB,
    }


def bench_transport(
    s: Settings, video: Path, decode_frames: int, repeats: int, sizes: tuple[int, ...] = SIZES
) -> dict[str, Any]:
    """For each clip dtype and output size: one decode worker's CPU seconds per source frame (decode,
    rgb24, resize), the clip's bytes and the hand-over; then the model end to end with each recipe."""
    num_frames = s.num_frames or 32
    rows = []
    for dtype, interpolation in RECIPES.items():
        for size in sizes:
            transform = FrameTransform(mode="square", size=(size, size), interpolation=interpolation)
            assert transform.dtype.name == dtype
            cpu: dict[str, float] = {}
            frames_per_s = measure_decode(
                video, SourceOpener(threads=1), transform, decode_frames, repeats, cpu
            )
            rows.append(
                {
                    "dtype": dtype,
                    "interpolation": transform.recorded_interpolation,
                    "size": size,
                    "decode_resize_ms_per_frame": 1000 * cpu["cpu_s_per_frame"],
                    "decode_resize_frames_per_s": frames_per_s,
                    "clip_mb": num_frames * transform.output_nbytes / MB,
                    **measure_handover(s, transform, num_frames),
                }
            )
    e2e = {}
    for dtype, interpolation in RECIPES.items():
        fx = make_extractor(replace(s, num_frames=num_frames), **{"data.resize.interpolation": interpolation})
        e2e[dtype] = measure_e2e(fx, [video])
        del fx
    e2e["float32_vs_uint8"] = e2e["float32"]["clips_per_s"] / e2e["uint8"]["clips_per_s"]
    return {"num_frames": num_frames, "video": str(video), "rows": rows, "e2e": e2e}


def print_transport(report: dict[str, Any]) -> None:
    """The hand-over report: one line per dtype and size, then end to end."""
    print(f"clip hand-over, {report['num_frames']} frames per clip, source {report['video']}")
    for r in report["rows"]:
        print(
            f"  {r['dtype']:8s} {r['interpolation']:20s} {r['size']}px: decode+resize "
            f"{r['decode_resize_ms_per_frame']:.1f} ms CPU/frame ({r['decode_resize_frames_per_s']:.0f} frames/s, "
            f"one worker), clip {r['clip_mb']:.1f} MB, slots {r['slots_per_worker']} x {r['slot_mb']:.1f} MB, "
            f"hand-over {r['clips_per_s']:.0f} clips/s = {r['mb_per_s']:.0f} MB/s, worker peak PSS "
            f"{r['peak_worker_pss_mb']:.0f} MB"
        )
    e = report["e2e"]
    for dtype in RECIPES:
        run = e[dtype]
        print(
            f"  end to end {dtype:8s}: {run['clips_per_s']:.3f} clips/s, {run['cpu_s_per_clip']:.2f} CPU s/clip, "
            f"peak PSS with workers {run['peak_pss_with_workers_mb']:.0f} MB"
        )
    print(f"  float32 / uint8 end to end: x{e['float32_vs_uint8']:.3f}")

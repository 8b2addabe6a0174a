"""End to end: clips/s through the real pipeline (decode workers, batching, model), each run between two
model-only measurements; peak memory on a short and a long video, each in a fresh process."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.api import FeatureExtractor
from pipeline.bench.measure import MB, CpuMeter, MemorySampler
from pipeline.bench.media import generated_video
from pipeline.bench.model import measure_model
from pipeline.bench.settings import Settings, settings_args


def measure_e2e(extractor: Any, videos: list[Path]) -> dict[str, Any]:
    """Clips/s through the real pipeline (decode workers, batching, model) over the videos."""
    rows, failed = 0, []
    with MemorySampler(extractor.engine) as memory, CpuMeter() as meter:
        started = time.perf_counter()
        for result in extractor.extract_many(videos):  # counted and dropped, as a run writes and drops them
            if result.ok:
                rows += len(result.features)
            else:
                failed.append(result.error)
        seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark videos failed, e.g. {failed[0]}")
    return {
        "clips": rows,
        "seconds": round(seconds, 2),
        "clips_per_s": rows / seconds,
        "cpu_s_per_clip": meter.ours / rows,  # this process and its decode workers
        "foreign_cpu_share": meter.foreign_share,
        "peak_rss_mb": memory.peak_rss / MB,
        "peak_pss_with_workers_mb": memory.peak_pss / MB,
    }


def measure_e2e_interleaved(
    extractor: Any, videos: list[Path], batch: int, num_frames: int, size: int, repeats: int
) -> dict[str, Any]:
    """End-to-end runs, each between two short model-only measurements: the e2e/model-only ratio of every
    run compares rates taken minutes apart at most, so load drifting on a shared machine cancels out.

    Also `cpu_ratio`: model-only CPU seconds per clip / end-to-end CPU seconds per clip (decode workers
    included), which is what e2e/model-only comes to on a dedicated CPU-bound machine, whatever else ran.
    Runs where other processes took more than 5% of the machine are flagged (`foreign_cpu_share`);
    `vs_model_clean` is the median over the others.
    """
    model = {"m": extractor.engine.model}
    cpu: dict[str, float] = {}
    before = measure_model(model, batch, num_frames, size, 2, cpu)["m"]
    model_cpu = [cpu["m"]]
    runs = []
    for _ in range(repeats):
        run = measure_e2e(extractor, videos)
        after = measure_model(model, batch, num_frames, size, 2, cpu)["m"]
        model_cpu.append(cpu["m"])
        run["vs_model"] = run["clips_per_s"] / ((before + after) / 2)
        runs.append(run)
        before = after
    summary = dict(runs[0])
    for key in ("clips_per_s", "vs_model", "seconds", "cpu_s_per_clip", "foreign_cpu_share"):
        summary[key] = statistics.median(r[key] for r in runs)
    for key in ("peak_rss_mb", "peak_pss_with_workers_mb"):
        summary[key] = max(r[key] for r in runs)
    clean = [r["vs_model"] for r in runs if r["foreign_cpu_share"] < 0.05]
    summary["vs_model_clean"] = statistics.median(clean) if clean else None
    summary["model_cpu_s_per_clip"] = statistics.median(model_cpu)
    summary["cpu_ratio"] = summary["model_cpu_s_per_clip"] / summary["cpu_s_per_clip"]
    summary["runs"] = runs
    return summary


def make_extractor(s: Settings, **extra: Any) -> Any:
    settings: dict[str, Any] = {
        "stride": s.stride,
        "fps": s.fps,
        "batch_size": s.batch_size,
        "device": s.device,
        "precision": s.precision,
        "channels_last": s.channels_last,
        "compile": s.compile,
        "decode_workers": s.decode_workers,
        "decode_backend": s.decode_backend,
        "data.resize.backend": s.resize_backend,
        "reuse_memory": s.reuse_memory,
        **extra,
    }
    if s.num_frames:
        settings["num_frames"] = s.num_frames
    if s.sampling_rate:
        settings["sampling_rate"] = s.sampling_rate
    if s.size:
        settings["data.resize.size"] = [s.size, s.size]
    if s.arch_options:
        settings["model.arch_options"] = dict(s.arch_options)
    return FeatureExtractor(s.model, checkpoint="random", **settings)


def bench_rss(s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end peak memory on a 1-minute and an M-minute video, each in a fresh process.

    The peak includes one batch's activations, so the 1-minute video must fill whole batches too: with
    fewer than 3 batches of clips in it the comparison is refused (use a smaller --stride).
    """
    fps = s.fps or args.video_fps
    short_clips = -(-int(60 * fps) // s.stride)
    if short_clips < 3 * s.batch_size:
        raise SystemExit(
            f"--minutes: a 1-minute video gives {short_clips} clips at stride {s.stride}, fewer than 3 batches of "
            f"{s.batch_size}; peak memory would compare different batch sizes (use --stride {int(20 * fps) // s.batch_size} or less)"
        )
    out: dict[str, Any] = {"resolution": "x".join(map(str, args.resolution)), "video_fps": args.video_fps}
    for key, minutes in (("short", 1.0), ("long", args.minutes)):
        video = generated_video(args.workdir, args.resolution, args.video_fps, 60.0 * minutes)
        command = [
            sys.executable,
            "-m",
            "pipeline.benchmark",
            "--probe-e2e",
            "--video",
            str(video),
            "--json",
            *settings_args(s),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"e2e probe failed: {done.stderr.strip().splitlines()[-1:]}")
        out[key] = {"minutes": minutes, **json.loads(done.stdout)}
    short, long = out["short"], out["long"]
    out["rss_ratio"] = long["peak_rss_mb_process_lifetime"] / short["peak_rss_mb_process_lifetime"]
    out["pss_ratio"] = long["e2e"]["peak_pss_with_workers_mb"] / short["e2e"]["peak_pss_with_workers_mb"]
    return out

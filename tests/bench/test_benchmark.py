"""The benchmark's own paths on tiny models (smoke tests of its plumbing and arithmetic, not timings)."""

from __future__ import annotations

import json
import math

import pytest


def test_benchmark_runs_end_to_end(tmp_path, capsys):
    """The benchmark's main path on a tiny model and 3 short generated videos (a smoke test, not a timing)."""
    from pipeline.bench import cli as bench_cli

    argv = [
        "--model",
        "slowfast_tiny",
        "--num-frames",
        "8",
        "--many-short",
        "3",
        "--repeats",
        "2",
        "--e2e-repeats",
        "1",
        "--decode-frames",
        "20",
        "--workdir",
        str(tmp_path),
        "--json",
    ]
    assert bench_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["e2e"]["clips"] == 3 * 4  # 2 s at 30 fps = 60 frames, one row per 16
    assert report["model_clips_per_s"] > 0 and report["plain_fp32_ncdhw_clips_per_s"] > 0
    assert 0 < report["gflops_per_clip"] < 1
    assert (
        report["decode"]["torch_resize_frames_per_s"] > 0
        and report["decode"]["ffmpeg_resize_frames_per_s"] > 0
    )
    assert report["transfer"]["process"]["mb_per_s"] > 0
    assert report["bottleneck"]["limit"] in ("decode", "model")
    node = report["node"]
    assert report["decode"]["torch_resize_one_thread_frames_per_s"] > 0
    assert node["decode_workers_needed"] >= 1 and node["device"] == "cpu" and node["gpu"] is None
    assert node["decode_workers_needed"] == math.ceil(
        node["model_clips_per_s"] / node["decode_clips_per_s_per_worker"]
    )


def test_decode_workers_needed_arithmetic():
    from pipeline.bench.decode import decode_workers_needed

    # a GPU at 120 clips/s, one core decoding 400 frames/s, a new clip every 16 frames: 25 clips/s a worker
    plan = decode_workers_needed(120.0, 400.0, 16.0, 16)
    assert plan["decode_clips_per_s_per_worker"] == 25.0
    assert plan["decode_workers_needed"] == 5 and plan["enough_cpus"]
    assert plan["expected_clips_per_s"] == 120.0 and plan["model_busy_share"] == 1.0
    starved = decode_workers_needed(1000.0, 400.0, 16.0, 16)  # 40 workers needed, 15 to spare
    assert starved["decode_workers_needed"] == 40 and not starved["enough_cpus"]
    assert starved["decode_workers_available"] == 15
    assert starved["expected_clips_per_s"] == 15 * 25.0 and starved["model_busy_share"] == 0.375


def test_benchmark_rss_refuses_a_short_video_without_full_batches(tmp_path):
    """Peak memory includes one batch's activations: a 1-minute video must fill batches to be comparable."""
    from pipeline.bench import cli as bench_cli

    argv = ["--model", "slowfast_tiny", "--minutes", "2", "--stride", "480", "--batch-size", "4"]
    with pytest.raises(SystemExit, match="fewer than 3 batches of 4.*--stride 150 or less"):
        bench_cli.main([*argv, "--workdir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before generating any video

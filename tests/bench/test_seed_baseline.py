"""The old extractor's algorithm (pipeline.bench.seed_baseline) against our pipeline, and the --vs-seed benchmark.

The seed baseline decodes, squashes and cuts centred clips with its own code; our pipeline must give the
same rows for the same `.pyth` (centred windows, zero padding, square resize). PySlowFast's model in the
baseline must equal ours in plain mode. The whole-process benchmark runs both as subprocesses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.bench import cli as bench_cli
from pipeline.bench.seed_baseline import centred_clips, extract_features, main, pyslowfast_unavailable
from pipeline.bench.vs_seed import print_seed_report, write_random_checkpoint
from pipeline.models.registry import get_spec
from pipeline.sampling import WindowSpec, clip_windows
from pipeline.synth import write_video
from tests.helpers import run_extract
from tests.reference import relative_error, require_reference

TINY, T, TAU, STRIDE = "slowfast_tiny", 8, 2, 8


@pytest.mark.parametrize("n", [1, 5, 8, 9, 45, 64])
def test_seed_windows_are_our_centred_windows(n):
    spec = WindowSpec(T, TAU, STRIDE, window="centered", pad="zero")
    assert np.array_equal(np.array(centred_clips(n, T, TAU, STRIDE)), clip_windows(n, spec))


def test_seed_baseline_rows_equal_our_pipeline(tmp_path):
    root = tmp_path / "videos"
    frames = {
        "long": write_video(root / "long.mp4", size=(96, 72), fps=30, seconds=1.5),  # 45: not a multiple of 8
        "short": write_video(
            root / "short.mp4", size=(80, 60), fps=30, seconds=5 / 30
        ),  # shorter than a clip
    }
    assert frames == {"long": 45, "short": 5}
    (root / "video_list.csv").write_text("long.mp4\nshort.mp4\n")
    checkpoint = write_random_checkpoint(TINY, tmp_path / "tiny.pyth", seed=3)
    out = tmp_path / "out"
    done = run_extract(
        tmp_path,
        f"model={TINY}",
        f"model.checkpoint={checkpoint}",
        "data=custom",
        f"data.root={root}",
        "data.window=centered",
        "data.pad=zero",
        f"data.num_frames={T}",
        f"data.sampling_rate={TAU}",
        f"data.stride={STRIDE}",
        "data.resize.mode=square",
        "data.resize.size=[64,64]",
        f"output_dir={out}",
        "output.hdf5=false",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, rows in (("long", 6), ("short", 1)):
        ours = np.load(out / "features" / f"{name}_{T}.npy")
        seed = extract_features(
            root / f"{name}.mp4",
            checkpoint,
            model=TINY,
            num_frames=T,
            sampling_rate=TAU,
            stride=STRIDE,
            model_impl="ours",
        )
        assert seed.shape == ours.shape == (rows, get_spec(TINY).feature_dim)
        assert np.abs(seed).max() > 0
        assert relative_error(torch.from_numpy(ours), torch.from_numpy(seed)) < 1e-4


def test_seed_baseline_pyslowfast_model_equals_ours(tmp_path):
    require_reference()
    assert "blocks" in (pyslowfast_unavailable(get_spec(TINY)) or "")  # the tiny model has no equivalent
    assert pyslowfast_unavailable(get_spec("slowfast_r50")) is None
    video = tmp_path / "v.mp4"
    write_video(video, size=(96, 72), fps=30, seconds=0.7)  # 21 frames: 3 rows
    checkpoint = write_random_checkpoint("slowfast_r50", tmp_path / "r50.pyth", seed=1)
    setting = {"model": "slowfast_r50", "num_frames": 8, "sampling_rate": 1, "stride": 8, "size": 64}
    ours = extract_features(video, checkpoint, model_impl="ours", **setting)
    out = tmp_path / "theirs.npy"
    argv = ["--video", str(video), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--model", "slowfast_r50", "--num-frames", "8", "--sampling-rate", "1", "--stride", "8"]
    assert main([*argv, "--size", "64", "--model-impl", "pyslowfast"]) == 0
    theirs = np.load(out)
    assert theirs.shape == ours.shape == (3, 2304)
    assert relative_error(torch.from_numpy(ours), torch.from_numpy(theirs)) < 1e-5


def test_bench_vs_seed_reports_both_whole_processes(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    write_video(video, size=(64, 48), fps=30, seconds=0.5)  # 15 frames: 2 rows
    argv = ["--vs-seed", "--model", TINY, "--video", str(video), "--num-frames", "8", "--stride", "8"]
    assert bench_cli.main([*argv, "--repeats", "1", "--workdir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # bench_vs_seed's report
    assert report["seed_model_impl"] == "ours" and "blocks" in report["seed_note"]
    assert (report["num_frames"], report["sampling_rate"], report["stride"], report["size"]) == (8, 1, 8, 64)
    for side in ("seed", "ours"):
        assert report[side]["wall_s"] > 0 and report[side]["cpu_s"] > 0
        assert report[side]["peak_rss_mb"] > 0 and len(report[side]["runs"]) == 1
        assert report[side]["rows"] == 2
    assert report["same_rows"]
    assert report["seed_over_ours"] == pytest.approx(report["seed"]["wall_s"] / report["ours"]["wall_s"])
    assert report["relative_l2"] < 1e-4
    assert report["cpu"] and isinstance(report["avx512_amx_flags"], list)
    print_seed_report(report)
    assert "seed/ours: x" in capsys.readouterr().out


def test_vs_seed_defaults_are_the_issues_setting():
    args = bench_cli.parse_args(["--vs-seed"])
    assert (args.seconds, args.stride, args.repeats, args.batch_size) == (30.0, 32, 2, None)
    assert (args.num_frames, args.sampling_rate, args.resolution) == (32, 1, (1920, 1080))
    args = bench_cli.parse_args([])
    assert (args.seconds, args.stride, args.repeats, args.batch_size) == (20.0, 16, 5, 4)

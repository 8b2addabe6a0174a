"""End to end through `python -m pipeline.extract` with the tiny MViT-family models (random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.api import FeatureExtractor
from pipeline.outputs import read_manifest
from tests.helpers import run_extract


@pytest.mark.parametrize(("name", "dim"), [("mvitv2_tiny", 32), ("rev_mvit_tiny", 64), ("mvitv1_tiny", 32)])
def test_extraction_windows_timestamps_logits_and_resume(video_root, tmp_path, name, dim) -> None:
    out = tmp_path / "out"
    args = (
        f"model={name}",
        "model.checkpoint=random",
        "data=custom",
        "data.video_ext=.avi",
        "data.fps=30",
        "data.stride=2",
        "output.logits=true",
        f"data.root={video_root}",
        f"output_dir={out}",
    )
    done = run_extract(tmp_path, *args)
    assert done.returncode == 1, done.stderr[-3000:]  # broken.mp4 of the shared collection fails alone
    log = done.stderr + done.stdout
    assert "summary: 5 ok, 1 failed, 0 skipped" in log and "Traceback" not in log
    features = np.load(out / "features" / "a.b_4.npy")
    side = json.loads((out / "features" / "a.b_4.json").read_text())
    # 2 s at 30 fps = 60 frames; T=4 at tau 2 spans 7 frames, one window every 2 frames (zero padded): 30 rows
    assert features.shape == (30, dim) and side["rows"] == 30 and side["frames"] == 60
    stamps = np.array(side["timestamps"])
    assert np.allclose(stamps[0], [0, 7 / 30, 3.5 / 30]) and np.allclose(stamps[1, 0], 2 / 30)
    assert np.isfinite(features).all() and np.abs(features[0] - features[10]).max() > 1e-4
    logits = np.load(out / "features" / "a.b_4.logits.npy")
    assert logits.shape == (30, 10)  # no label list for the tiny models: logits by class index
    records, problems = read_manifest(out / "manifests" / "shard-0-of-1.jsonl")
    assert not problems and {r["key"]: r for r in records}["a.b"]["dim"] == dim

    before = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")}
    again = run_extract(tmp_path, *args)
    assert "summary: 0 ok, 1 failed, 5 skipped" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*.npy")} == before

    fx = FeatureExtractor(name, checkpoint="random", fps=30, stride=2, batch_size=3)
    api_features, api_stamps = fx.extract(video_root / "a.b.mp4")
    assert np.allclose(api_features, features, rtol=1e-4, atol=1e-5)
    assert np.allclose(api_stamps, stamps, atol=1e-6)


def test_other_frame_count_is_refused_at_start(video_root, tmp_path) -> None:
    done = run_extract(
        tmp_path,
        "model=mvitv2_tiny",
        "model.checkpoint=random",
        "data=custom",
        "data.num_frames=8",
        f"data.root={video_root}",
        f"output_dir={tmp_path / 'out'}",
    )
    text = done.stdout + done.stderr
    assert done.returncode == 2 and "data.num_frames: must be 4 for model mvitv2_tiny" in text
    assert "Traceback" not in text and not (tmp_path / "out" / "manifests").exists()

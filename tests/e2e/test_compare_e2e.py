"""Real features: our output dir from `python -m pipeline.extract` (tiny model, seeded random weights) against
"releases" extracted from the same video with one setting changed; the command names that setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import synth
from pipeline.api import FeatureExtractor
from tests.compare_data import compare, compare_cli, keys
from tests.helpers import run_extract

SETTINGS = {"stride": 4, "fps": 30}


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    synth.write_video(root / "clip.mp4", seconds=4.0, fps=30, size=(64, 48))
    (root / "video_list.csv").write_text("path\nclip.mp4\n")
    return root / "clip.mp4"


@pytest.fixture(scope="module")
def ours(video, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("run")
    done = run_extract(
        cwd,
        "model=slowfast_tiny",
        "model.checkpoint=random",
        "data=custom",
        f"data.root={video.parent}",
        "data.fps=30",
        "data.stride=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "outputs" / "custom" / "slowfast_tiny_8x1_s4_fps30"


def _release(video: Path, folder: Path, **changed: object) -> Path:
    settings = {**SETTINGS, **changed}
    features, _ = FeatureExtractor("slowfast_tiny", checkpoint="random", **settings).extract(video)
    folder.mkdir(parents=True)
    np.save(folder / "clip.npy", features)
    return folder


def test_the_same_settings_give_the_same_features(ours, video, tmp_path):
    status, report = compare(ours, _release(video, tmp_path / "r"))
    assert status == 0 and report["verdict"] == "same"
    assert report["videos"][0]["rel_l2"]["max"] < 1e-5


def test_twice_the_stride(ours, video, tmp_path):
    status, report = compare(ours, _release(video, tmp_path / "r", stride=8))
    assert report["verdict"] == "different grid"
    assert keys(report) == {"grid:2"} and report["summary"][0]["change"] == "data.stride=8"


def test_centered_windows_start_a_row_earlier(ours, video, tmp_path):
    """Centred clips of 8 frames on frames 0, 4, 8...: their row j is our (sliding) row j - 1."""
    status, report = compare(ours, _release(video, tmp_path / "r", window="centered"))
    assert report["verdict"] == "same up to an offset"
    assert keys(report) == {"offset:-1"}
    assert "data.window=centered" in report["summary"][0]["change"]


def test_dropped_padding_clips(ours, video, tmp_path):
    status, report = compare(ours, _release(video, tmp_path / "r", pad="drop"))
    assert report["verdict"] == "same up to an offset"
    assert keys(report) == {"trailing:-1"} and "data.pad=drop" in report["summary"][0]["change"]


def test_bgr_input_is_close_but_not_equal(ours, video, tmp_path):
    release = _release(video, tmp_path / "r", **{"model.channel_order": "bgr"})
    done = compare_cli(ours, release)
    assert done.returncode == 0, done.stderr
    assert "verdict: different values (1 of 1 video)" in done.stdout
    assert "close but not equal" in done.stdout and "channel_order" in done.stdout

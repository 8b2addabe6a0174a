"""`python -m pipeline.compare OURS THEIRS --probe N`: our run (tiny model, seeded random weights, the shipped
real clip) against "releases" extracted from the same clip with one input setting changed (channel order,
interpolation, resize mode, mean/std); the probe must name that setting, from an output dir of either store
or its features.h5, and say in one line why it cannot probe when it cannot."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.api import FeatureExtractor, compose_config
from pipeline.compare.cli import main
from pipeline.consolidate import consolidate
from pipeline.models.registry import build_model
from tests.compare_data import compare
from tests.helpers import REAL_CLIP, run_config

SETTINGS = {"stride": 2}
IMAGENET = {"model.mean": [0.485, 0.456, 0.406], "model.std": [0.229, 0.224, 0.225]}


def _run(root: Path, out: Path, store: str = "files") -> Path:
    cfg = compose_config(
        "slowfast_tiny",
        [
            "model.checkpoint=random",
            f"data.root={root}",
            f"output_dir={out}",
            "data.stride=2",
            f"output.store={store}",
        ],
    )
    run_config(cfg)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_videos")
    shutil.copy(REAL_CLIP, root / "clip.mp4")
    (root / "video_list.csv").write_text("clip.mp4\n")
    return root


@pytest.fixture(scope="module")
def ours(videos, tmp_path_factory) -> Path:
    return _run(videos, tmp_path_factory.mktemp("probe_run") / "out")


def _release(videos: Path, folder: Path, **changed: object) -> Path:
    features, _ = FeatureExtractor("slowfast_tiny", checkpoint="random", **{**SETTINGS, **changed}).extract(
        videos / "clip.mp4"
    )
    folder.mkdir(parents=True)
    np.save(folder / "clip.npy", features)
    return folder


def _text(*args: object) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main([str(a) for a in args])
    return status, out.getvalue()


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"model.channel_order": "bgr"}, "model.channel_order=bgr"),
        ({"data.resize.interpolation": "pil_lanczos"}, "data.resize.interpolation=pil_lanczos"),
        ({"data.resize.mode": "short_side"}, "data.resize.mode=short_side"),
        (IMAGENET, "model.mean=[0.485,0.456,0.406] model.std=[0.229,0.224,0.225]"),
    ],
    ids=["bgr", "interpolation", "resize-mode", "mean-std"],
)
def test_the_probe_names_the_changed_setting(ours, videos, tmp_path, changed, expected):
    status, report = compare(ours, _release(videos, tmp_path / "theirs", **changed), "--probe", "1")
    assert status == 0
    probe = report["probe"]
    assert probe["impossible"] is None and probe["videos"] == ["clip"]
    assert probe["reproduced"] > 0.99999  # the recorded config gives our stored features back
    by_change = {c["change"]: c for c in probe["candidates"]}
    assert probe["candidates"][0]["change"] == "" and probe["candidates"][0]["verdict"] == "recorded"
    assert len(by_change) == len(probe["candidates"])  # one change at a time, none twice
    assert probe["change"] == expected and by_change[expected]["verdict"] == "closest"
    assert by_change[expected]["median_cosine"] > 0.99999  # their setting reproduces them
    assert probe["candidates"][0]["median_cosine"] < by_change[expected]["median_cosine"] - 1e-4
    assert probe["line"].endswith(f"change {expected}")


def test_the_same_settings_keep_the_recorded_ones(ours, videos, tmp_path):
    status, report = compare(ours, _release(videos, tmp_path / "theirs"), "--probe", "1")
    probe = report["probe"]
    assert status == 0 and report["verdict"] == "same" and probe["change"] is None
    assert probe["candidates"][0]["median_cosine"] > 0.99999
    assert {c["verdict"] for c in probe["candidates"][1:]} <= {"farther", "as close"}
    assert "farther" in {c["verdict"] for c in probe["candidates"][1:]}
    assert probe["line"].startswith("probe: the recorded settings are the closest tried")


def test_the_probe_reads_a_packed_store_and_features_h5(videos, tmp_path):
    packed = _run(videos, tmp_path / "packed", store="packed")
    theirs = _release(videos, tmp_path / "theirs", **{"model.channel_order": "bgr"})
    for path in (packed, consolidate([packed])):
        status, text = _text(path, theirs, "--probe", "1")
        assert status == 0, text
        lines = text.splitlines()
        assert lines[-1].startswith("probe: closest with channel order bgr (median cosine 1.0000")
        assert lines[-1].endswith("change model.channel_order=bgr")
        row = next(line for line in lines if line.strip().startswith("channel order bgr"))
        assert row.split()[3:5] == ["1.0000", "1.0000"] and "closest" in row


def test_one_line_when_the_sources_are_gone(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(REAL_CLIP, root / "clip.mp4")
    (root / "video_list.csv").write_text("clip.mp4\n")
    out = _run(root, tmp_path / "run")
    theirs = _release(root, tmp_path / "theirs", **{"model.channel_order": "bgr"})
    (root / "clip.mp4").unlink()
    status, text = _text(out, theirs, "--probe", "2")
    assert status == 0  # the comparison itself went fine
    assert "verdict: different values" in text
    assert text.rstrip().splitlines()[-1] == (
        f"cannot probe: the source video is gone: clip ({root / 'clip.mp4'}); --probe re-extracts our "
        "videos from their sources"
    )


def test_one_line_when_ours_holds_no_config(ours, videos, tmp_path):
    """One .npy of ours: no run config, no video path."""
    theirs = _release(videos, tmp_path / "theirs", **{"model.channel_order": "bgr"})
    (npy,) = (ours / "features").rglob("*.npy")
    status, text = _text(npy, theirs, "--probe", "1")
    assert status == 0
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("cannot probe: --probe re-extracts our videos with the run's recorded config")
    assert last.endswith("(one .npy)")


def test_one_line_when_the_checkpoint_changed_since(videos, tmp_path):
    """The run's checkpoint file now holds other weights: the probe would measure another model."""
    checkpoint = tmp_path / "tiny.pyth"
    torch.manual_seed(1)
    torch.save({"model_state": build_model("slowfast_tiny").state_dict()}, checkpoint)
    cfg = compose_config(
        "slowfast_tiny",
        [
            f"model.checkpoint={checkpoint}",
            f"data.root={videos}",
            f"output_dir={tmp_path / 'run'}",
            "data.stride=2",
        ],
    )
    run_config(cfg)
    (npy,) = (tmp_path / "run" / "features").rglob("*.npy")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    np.save(theirs / "clip.npy", np.load(npy) * 1.01)
    torch.manual_seed(2)
    torch.save({"model_state": build_model("slowfast_tiny").state_dict()}, checkpoint)
    status, report = compare(tmp_path / "run", theirs, "--probe", "1")
    assert status == 0 and report["probe"]["candidates"] == []
    assert report["probe"]["impossible"].startswith(
        f"cannot probe: {checkpoint} is not the checkpoint the run used"
    )

"""ActionFormer export: npz round trip, grid parameters against our timestamps, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import outputs
from pipeline.export import SUMMARY_NAME, ExportError, export_actionformer, main
from tests.outputs_fixture import default_settings, make_output_dir, video_timestamps

VIDEOS = {"P01/videos/P01_01": 9, "P01/videos/P01_02": 4, "P02_03": 1}


def actionformer_load(folder: Path, video_id: str, file_ext: str = ".npz") -> np.ndarray:
    """What ActionFormer's npz loader does: np.load(...)["feats"], float32, (T, C) -> (C, T)."""
    with np.load(folder / f"{video_id}{file_ext}") as data:
        feats = data["feats"].astype(np.float32)
    return np.ascontiguousarray(feats.transpose())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_equals_the_npy_files(tmp_path: Path, dtype: str) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=12, dtype=dtype)
    dest = tmp_path / "af"
    summary_path = export_actionformer(run, dest)
    assert summary_path == dest / SUMMARY_NAME
    for key, rows in VIDEOS.items():
        video_id = key.rsplit("/", 1)[-1]
        original = np.load(run / "features" / f"{key}_32.npy")
        with np.load(dest / f"{video_id}.npz") as data:
            assert list(data.keys()) == ["feats"]
            assert data["feats"].dtype == np.dtype(dtype) and data["feats"].shape == (rows, 12)
            np.testing.assert_array_equal(data["feats"], original)
        np.testing.assert_array_equal(actionformer_load(dest, video_id), original.astype(np.float32).T)
    summary = json.loads(summary_path.read_text())
    assert (summary["feat_stride"], summary["num_frames"], summary["fps"], summary["dim"]) == (
        16,
        32,
        30.0,
        12,
    )
    assert summary["dataset_config"] == {
        "feat_folder": str(dest.resolve()),
        "file_prefix": None,
        "file_ext": ".npz",
        "input_dim": 12,
        "feat_stride": 16,
        "num_frames": 32,
        "default_fps": 30.0,
    }
    assert summary["videos"]["P01_01"] == {
        "key": "P01/videos/P01_01",
        "rows": 9,
        "fps": 30.0,
        "duration": 9 * 16 / 30,
    }
    assert "dataset_config" in summary["note"]


@pytest.mark.parametrize(
    ("overrides", "num_frames", "window_frames"),
    [
        ({}, 32, 32),  # the EPIC-Kitchens SlowFast setting of ActionFormer's configs
        ({"sampling_rate": 2, "stride": 8}, 63, 63),  # span (T - 1) * tau + 1
        ({"window": "centered", "num_frames": 16, "stride": 8}, 0, 16),  # rows centred on frame t * stride
    ],
)
def test_grid_puts_rows_where_our_timestamps_say(
    tmp_path: Path, overrides: dict, num_frames: int, window_frames: int
) -> None:
    settings = default_settings(**overrides)
    run = make_output_dir(tmp_path / "run", {"a": 20, "b": 7}, settings=settings)
    summary = json.loads(export_actionformer(run, tmp_path / "af").read_text())
    assert summary["num_frames"] == num_frames and summary["window_frames"] == window_frames
    stamps, _ = video_timestamps(20, settings)
    rows = np.arange(20)
    # ActionFormer's grid -> seconds: (row * feat_stride + 0.5 * num_frames) / fps
    centres = (rows * summary["feat_stride"] + 0.5 * summary["num_frames"]) / summary["fps"]
    unclamped = np.isclose((stamps[:, 1] - stamps[:, 0]) * 30.0, window_frames)
    assert unclamped.sum() >= 10  # rows near the ends are clamped to the video
    np.testing.assert_allclose(centres[unclamped], stamps[unclamped, 2], atol=1e-9)


def test_differing_frame_rates_leave_default_fps_null(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 5, "b": 5})
    sidecar_path = run / "features" / "b_32.json"
    sidecar = outputs.read_sidecar(sidecar_path)
    sidecar["fps"] = 25.0
    sidecar["timestamps"] = (np.asarray(sidecar["timestamps"]) * 30.0 / 25.0).tolist()
    outputs.save_json(sidecar_path, sidecar)
    summary = json.loads(export_actionformer(run, tmp_path / "af").read_text())
    assert summary["fps"] is None and summary["dataset_config"]["default_fps"] is None
    assert (summary["videos"]["a"]["fps"], summary["videos"]["b"]["fps"]) == (30.0, 25.0)
    assert (summary["feat_stride"], summary["num_frames"]) == (16, 32)


def test_duplicate_video_ids_are_refused_before_writing(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"P01/clip": 3, "P02/clip": 3})
    with pytest.raises(ExportError, match="'clip' is shared by keys 'P01/clip' and 'P02/clip'"):
        export_actionformer(run, tmp_path / "af")
    assert not (tmp_path / "af").exists()


def test_multi_crop_features_are_refused(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 3}, crops=3)
    with pytest.raises(ExportError, match="3 crops per row.*crop_reduce=mean"):
        export_actionformer(run, tmp_path / "af")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 3})
    assert main(["--format", "actionformer", str(run), str(tmp_path / "af")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "af" / SUMMARY_NAME)
    (tmp_path / "empty" / "features").mkdir(parents=True)
    assert main(["--format", "actionformer", str(tmp_path / "empty"), str(tmp_path / "af2")]) == 1
    assert "no features to export" in capsys.readouterr().err

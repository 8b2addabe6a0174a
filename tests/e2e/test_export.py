"""ActionFormer and OpenTAD exports: round trips through the trainers' loading logic, grid parameters
against our timestamps, block list, config snippets, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import outputs
from pipeline.export import (
    MISSING_NAME,
    OPENTAD_SUMMARY_NAME,
    SUMMARY_NAME,
    WRITTEN_NAME,
    ExportError,
    export_actionformer,
    export_opentad,
    main,
)
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


# --- the trainers' loading logic, re-implemented from their sources (not copied) -----------------------


def actionformer_npy_load(feat_folder: Path, video_id: str, file_prefix: str | None = None) -> np.ndarray:
    """ActionFormer's THUMOS / ActivityNet loaders (libs/datasets/thumos14.py, anet.py): the path is
    feat_folder / (file_prefix or "") + id + file_ext, `np.load(...)` cast to float32, (T, C) -> (C, T)."""
    path = os.path.join(feat_folder, (file_prefix or "") + video_id + ".npy")
    feats = np.load(path).astype(np.float32)
    return np.ascontiguousarray(feats.transpose())


def actionformer_ego4d_load(feat_folders: tuple[Path, ...], video_id: str) -> np.ndarray:
    """ActionFormer's Ego4D loader (libs/datasets/ego4d.py): one file per folder, float32 arrays
    concatenated along the channel axis (axis 1 of (T, C)), then (T, C) -> (C, T)."""
    arrays = [np.load(os.path.join(folder, video_id + ".npy")).astype(np.float32) for folder in feat_folders]
    return np.ascontiguousarray(np.concatenate(arrays, axis=1).transpose())


def opentad_load(results: dict, prefix: str = "", suffix: str = "") -> np.ndarray:
    """OpenTAD's LoadFeats (opentad/datasets/transforms/loading.py, feat_format "npy", one data_path)
    followed by the configs' Rearrange "t c -> c t"."""
    path = os.path.join(results["data_path"], f"{prefix}{results['video_name']}{suffix}.npy")
    feats = np.load(path).astype(np.float32)
    sample_stride = results.get("sample_stride", 1)
    if sample_stride > 1:
        feats = feats[::sample_stride]
    return np.ascontiguousarray(feats.transpose())


def opentad_block_list(path: str) -> list[str]:
    """How OpenTAD's PaddingDataset reads a block list file: one name per line, newline stripped."""
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_opentad_round_trip_through_loadfeats(tmp_path: Path, dtype: str) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=12, dtype=dtype, failed=["P03/videos/P03_09"])
    summary_path = export_opentad(run, tmp_path / "ot")
    assert summary_path == tmp_path / "ot" / OPENTAD_SUMMARY_NAME
    summary = json.loads(summary_path.read_text())
    assert summary["data_path"] == str((tmp_path / "ot").resolve()) + "/"
    for key, rows in VIDEOS.items():
        name = key.rsplit("/", 1)[-1]
        original = np.load(run / "features" / f"{key}_32.npy")
        stored = np.load(tmp_path / "ot" / f"{name}.npy")
        assert stored.dtype == np.dtype(dtype) and stored.shape == (rows, 12)
        loaded = opentad_load({"video_name": name, "data_path": summary["data_path"], "sample_stride": 1})
        np.testing.assert_array_equal(loaded, original.astype(np.float32).T)  # (C, T) after Rearrange
    assert sorted(p.name for p in (tmp_path / "ot").iterdir()) == sorted(
        [MISSING_NAME, OPENTAD_SUMMARY_NAME, WRITTEN_NAME, "P01_01.npy", "P01_02.npy", "P02_03.npy"]
    )
    # the block list as OpenTAD's configs name it (data_path + "missing_files.txt") and read it
    assert summary["block_list"] == summary["data_path"] + MISSING_NAME
    assert opentad_block_list(summary["block_list"]) == ["P03_09"] == summary["failed"]
    assert (
        summary["feature_stride"],
        summary["sample_stride"],
        summary["offset_frames"],
        summary["fps"],
    ) == (
        16,
        1,
        16,  # as OpenTAD's EPIC-Kitchens SlowFast configs say (offset_frames=16, feature_stride=16, fps=30)
        30.0,
    )
    assert summary["dim"] == 12 and summary["feat_format"] == "npy"
    snippet = summary["config_snippet"]
    assert f'data_path = "{summary["data_path"]}"' in snippet
    assert "feature_stride=16," in snippet and "offset_frames=16," in snippet and "fps=30.0," in snippet
    assert "in_channels=12" in snippet


@pytest.mark.parametrize(
    ("overrides", "offset_frames"),
    [
        ({}, 16),  # EPIC: 32-frame windows, stride 16
        ({"num_frames": 16, "stride": 4}, 8),  # THUMOS I3D grid: OpenTAD's offset_frames=8, feature_stride=4
        ({"window": "centered", "num_frames": 16, "stride": 8}, 0),  # rows centred on frame t * stride
    ],
)
def test_opentad_grid_maps_annotated_frames_to_our_rows(
    tmp_path: Path, overrides: dict, offset_frames: int
) -> None:
    settings = default_settings(**overrides)
    run = make_output_dir(tmp_path / "run", {"a": 30}, settings=settings)
    summary = json.loads(export_opentad(run, tmp_path / "ot").read_text())
    assert summary["offset_frames"] == offset_frames
    stamps, _ = video_timestamps(30, settings)
    centre_frames = stamps[:, 2] * 30.0
    # OpenTAD's padding datasets: row = (frame - offset_frames) / (feature_stride * sample_stride)
    rows = (centre_frames - summary["offset_frames"]) / (summary["feature_stride"] * summary["sample_stride"])
    unclamped = np.isclose((stamps[:, 1] - stamps[:, 0]) * 30.0, summary["window_frames"])
    assert unclamped.sum() >= 20
    np.testing.assert_allclose(rows[unclamped], np.arange(30)[unclamped], atol=1e-9)


def test_opentad_warns_about_a_half_frame_offset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = default_settings(sampling_rate=2, stride=8)  # span 63 frames: row 0 centred at 31.5
    run = make_output_dir(tmp_path / "run", {"a": 20}, settings=settings)
    summary = json.loads(export_opentad(run, tmp_path / "ot").read_text())
    assert summary["offset_frames"] == 31.5
    assert "truncates offset_frames to an integer (31)" in caplog.text


def test_actionformer_npy_layout_for_thumos_and_ego4d_loaders(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=12)
    summary = json.loads(export_actionformer(run, tmp_path / "af", file_ext=".npy").read_text())
    assert summary["dataset_config"]["file_ext"] == ".npy"
    assert "dataset_name: thumos, ego4d or anet" in summary["note"]
    assert "file_ext: .npy," in summary["config_snippet"] and "file_prefix: ~," in summary["config_snippet"]
    assert not list((tmp_path / "af").glob("*.npz"))
    second = make_output_dir(tmp_path / "run2", VIDEOS, dim=4, settings=default_settings(model="other"))
    export_actionformer(second, tmp_path / "af2", file_ext=".npy")
    for key in VIDEOS:
        name = key.rsplit("/", 1)[-1]
        original = np.load(run / "features" / f"{key}_32.npy").astype(np.float32)
        np.testing.assert_array_equal(actionformer_npy_load(tmp_path / "af", name), original.T)
        both = actionformer_ego4d_load((tmp_path / "af", tmp_path / "af2"), name)
        assert both.shape == (16, VIDEOS[key])
        np.testing.assert_array_equal(both[:12], original.T)


def test_opentad_refuses_duplicate_ids_and_multi_crop_before_writing(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"P01/clip": 3, "P02/clip": 3})
    with pytest.raises(ExportError, match="'clip' is shared by keys 'P01/clip' and 'P02/clip'"):
        export_opentad(run, tmp_path / "ot")
    assert not (tmp_path / "ot").exists()
    crops = make_output_dir(tmp_path / "crops", {"a": 3}, crops=3)
    with pytest.raises(ExportError, match="OpenTAD reads \\(T, C\\)"):
        export_opentad(crops, tmp_path / "ot")


def test_cli_prints_the_config_snippet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 3})
    assert main(["--format", "opentad", str(run), str(tmp_path / "ot")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "ot" / OPENTAD_SUMMARY_NAME)
    assert "offset_frames=16," in captured.err and 'data_path = "' in captured.err
    assert main(["--format", "actionformer", "--ext", ".npy", str(run), str(tmp_path / "af")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "af" / SUMMARY_NAME)
    assert "feat_stride: 16," in captured.err and "num_frames: 32," in captured.err
    assert (tmp_path / "af" / "a.npy").exists()
    with pytest.raises(SystemExit):
        main(["--format", "opentad", "--ext", ".npz", str(run), str(tmp_path / "ot2")])


@pytest.mark.parametrize("store", ["files", "packed"])
def test_a_rerun_rewrites_only_what_changed(tmp_path: Path, store: str) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=12, store=store)
    dest = tmp_path / "ot"
    export_opentad(run, dest)
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy")}
    assert sorted(mtimes) == ["P01_01.npy", "P01_02.npy", "P02_03.npy"]
    export_opentad(run, dest)  # nothing changed: no file written again
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy")} == mtimes
    changed = np.full((2, 12), 3.0, np.float32)
    make_output_dir(run, {"P02_03": 2}, dim=12, arrays={"P02_03": changed}, store=store, hour=1)
    (dest / "P01_02.npy").write_bytes(b"")  # a file a crash left empty is written again
    export_opentad(run, dest)
    after = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.npy")}
    assert after["P01_01.npy"] == mtimes["P01_01.npy"]
    assert after["P02_03.npy"] != mtimes["P02_03.npy"]
    np.testing.assert_array_equal(np.load(dest / "P02_03.npy"), changed)
    assert np.load(dest / "P01_02.npy").shape == (4, 12)

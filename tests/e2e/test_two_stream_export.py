"""The two-stream export: an RGB run and a flow run joined into ActionFormer's THUMOS14 I3D layout (one
(T, rgb dim + flow dim) .npy per video, RGB first, rows cut to the common count), on synthetic output dirs
and end to end on two real runs of a tiny video (tiny I3D models, the THUMOS14 presets, cheap TV-L1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import outputs
from pipeline.api import compose_config
from pipeline.export import FORMATS, TWO_STREAM_SUMMARY_NAME, ExportError, export_two_stream, main
from pipeline.synth import write_video
from tests.helpers import run_config
from tests.outputs_fixture import default_settings, make_output_dir

RGB_ROWS = {"video_test_0000004": 9, "video_test_0000006": 5, "video_validation_0000051": 3}
FLOW_ROWS = {"video_test_0000004": 7, "video_test_0000006": 5, "video_test_0000099": 2}


def thumos_settings(stream: str, **overrides) -> dict:
    settings = default_settings(
        **{"num_frames": 16, "stride": 4, "model": f"i3d_inception_{stream}", **overrides}
    )
    if stream == "flow":
        settings["stream"] = "flow"
    return settings


def runs(tmp_path: Path, dtype: str = "float32", **flow_overrides) -> tuple[Path, Path]:
    rgb = make_output_dir(
        tmp_path / "rgb", RGB_ROWS, dim=6, settings=thumos_settings("rgb", dtype=dtype), dtype=dtype
    )
    flow = make_output_dir(
        tmp_path / "flow",
        FLOW_ROWS,
        dim=4,
        settings=thumos_settings("flow", dtype=dtype, **flow_overrides),
        dtype=dtype,
    )
    return rgb, flow


def features(run: Path, key: str) -> np.ndarray:
    return np.load(run / "features" / f"{key}_16.npy")


def actionformer_thumos_load(folder: Path, video_id: str) -> np.ndarray:
    """ActionFormer's THUMOS14 loader (libs/datasets/thumos14.py): np.load(...).astype(float32), (T, C) -> (C, T)."""
    return np.ascontiguousarray(np.load(folder / f"{video_id}.npy").astype(np.float32).transpose())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rgb_columns_first_rows_cut_to_the_common_count(tmp_path: Path, dtype: str) -> None:
    rgb, flow = runs(tmp_path, dtype)
    dest = tmp_path / "i3d_features"
    summary_path = export_two_stream(rgb, dest, flow_dir=flow)
    assert summary_path == dest / TWO_STREAM_SUMMARY_NAME
    assert sorted(p.name for p in dest.glob("*.npy")) == ["video_test_0000004.npy", "video_test_0000006.npy"]
    for vid, rows in (("video_test_0000004", 7), ("video_test_0000006", 5)):
        joined = np.load(dest / f"{vid}.npy")
        assert joined.shape == (rows, 10) and joined.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(joined[:, :6], features(rgb, vid)[:rows])
        np.testing.assert_array_equal(joined[:, 6:], features(flow, vid)[:rows])
        assert actionformer_thumos_load(dest, vid).shape == (10, rows)
    summary = json.loads(summary_path.read_text())
    assert (summary["dim"], summary["columns"], summary["feat_stride"], summary["fps"]) == (
        10,
        {"rgb": [0, 6], "flow": [6, 10]},
        4,
        30.0,
    )
    assert summary["num_frames"] == 16  # this grid's row 0 is centred at frame 8 (no skipped frame here)
    assert summary["videos"]["video_test_0000004"] | {"duration": None} == {
        "rgb_key": "video_test_0000004",
        "flow_key": "video_test_0000004",
        "rows": 7,
        "rgb_rows": 9,
        "flow_rows": 7,
        "fps": 30.0,
        "duration": None,
    }
    assert summary["only_in_one_stream"] == {
        "rgb": ["video_validation_0000051"],
        "flow": ["video_test_0000099"],
    }
    assert summary["dataset_config"]["input_dim"] == 10 and summary["dataset_config"]["file_ext"] == ".npy"
    assert "input_dim: 10" in summary["config_snippet"]
    assert summary["streams"]["flow"]["settings"]["stream"] == "flow"


def test_npz_holds_the_join_as_feats(tmp_path: Path) -> None:
    rgb, flow = runs(tmp_path)
    export_two_stream(rgb, tmp_path / "out", ".npz", flow_dir=flow)
    with np.load(tmp_path / "out" / "video_test_0000006.npz") as data:
        assert list(data) == ["feats"] and data["feats"].shape == (5, 10)


def test_the_rgb_run_goes_first(tmp_path: Path) -> None:
    rgb, flow = runs(tmp_path)
    with pytest.raises(ExportError, match="give the RGB run's output dir first"):
        export_two_stream(flow, tmp_path / "out", flow_dir=rgb)
    assert not (tmp_path / "out").exists()


def test_runs_cutting_other_clips_are_refused(tmp_path: Path) -> None:
    rgb, flow = runs(tmp_path, stride=8)
    with pytest.raises(ExportError, match=r"stride \(4 vs 8\)"):
        export_two_stream(rgb, tmp_path / "out", flow_dir=flow)


def test_rows_covering_other_frames_are_refused_before_writing(tmp_path: Path) -> None:
    rgb, flow = runs(tmp_path)
    sidecar = flow / "features" / "video_test_0000006_16.json"
    data = outputs.read_sidecar(sidecar)
    data["timestamps"] = (np.asarray(data["timestamps"]) + 1 / 30).tolist()  # one frame later
    outputs.save_json(sidecar, data)
    with pytest.raises(ExportError, match=r"video_test_0000006: .*1\.00 frames apart.*skip_first=true"):
        export_two_stream(rgb, tmp_path / "out", flow_dir=flow)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "two_stream" in FORMATS
    rgb, flow = runs(tmp_path)
    with pytest.raises(SystemExit):
        main(["--format", "two_stream", str(rgb), str(tmp_path / "out")])
    assert "--flow" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--format", "actionformer", "--flow", str(flow), str(rgb), str(tmp_path / "out")])
    assert main(["--format", "two_stream", "--flow", str(flow), str(rgb), str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "out" / TWO_STREAM_SUMMARY_NAME)
    assert "feat_stride: 4" in err
    assert main(["--format", "two_stream", "--flow", str(rgb), str(flow), str(tmp_path / "x")]) == 1


# --- end to end -----------------------------------------------------------------------------------


def extract(tmp_path: Path, root: Path, data: str, model: str, *overrides: str) -> Path:
    out = tmp_path / f"{data}-{model}-{len(overrides)}"
    cfg = compose_config(
        model,
        [
            f"data.root={root}",
            "model.checkpoint=random",
            f"output_dir={out}",
            "output.hdf5=false",
            "data.num_frames=8",  # the tiny models' clips: 8 x 64 x 64
            "data.resize.size=[64,64]",
            "data.stored_frames.size=[96,72]",
            "data.flow.tvl1.nscales=2",
            "data.flow.tvl1.warps=1",
            "data.flow.tvl1.inner_iterations=10",
            *overrides,
        ],
        data=data,
    )
    summary = run_config(cfg)
    assert not summary.failed, summary
    return out


def test_two_real_runs_join_and_a_misaligned_rgb_run_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    write_video(root / "video_test_0000001.mp4", size=(64, 48), fps=30, seconds=1.0)  # 30 frames
    (root / "video_list.csv").write_text("video_test_0000001\n")
    rgb = extract(tmp_path, root, "thumos14_i3d", "i3d_inception_tiny")
    flow = extract(tmp_path, root, "thumos14_i3d_flow", "i3d_inception_flow_tiny")
    dest = tmp_path / "joined"
    summary = json.loads(export_two_stream(rgb, dest, flow_dir=flow).read_text())
    (rgb_file,) = (rgb / "features").glob("*.npy")
    (flow_file,) = (flow / "features").glob("*.npy")
    rgb_rows, flow_rows = np.load(rgb_file), np.load(flow_file)
    assert rgb_rows.shape == flow_rows.shape == ((29 - 8) // 4 + 1, 128)  # 29 images and 29 fields each
    joined = np.load(dest / "video_test_0000001.npy")
    np.testing.assert_array_equal(joined, np.concatenate([rgb_rows, flow_rows], axis=1))
    # rows cover frames 4i+1 .. 4i+8: centred at frame 4i + 5, so num_frames = 10 places them right
    assert (summary["feat_stride"], summary["offset_frames"], summary["num_frames"], summary["dim"]) == (
        4,
        5,
        10,
        256,
    )
    unskipped = extract(
        tmp_path, root, "thumos14_i3d", "i3d_inception_tiny", "data.stored_frames.skip_first=false"
    )
    with pytest.raises(ExportError, match="data.stored_frames.skip_first=true"):
        export_two_stream(unskipped, tmp_path / "refused", flow_dir=flow)

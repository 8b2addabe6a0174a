"""`--format tsp_h5`: TSP's merged feature file, against the file TSP's own merge script writes from the
same rows; read as ActionFormer's ActivityNet loader reads an HDF5 feat_folder; a data=activitynet_tsp run
exported in each format the ActivityNet trainers read, with the grid values their TSP configs hold."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from pipeline.api import CONF_PACKAGE
from pipeline.config import register_configs, validate
from pipeline.export import (
    H5_NAME,
    TSP_SUMMARY_NAME,
    ExportError,
    export_actionformer,
    export_opentad,
    export_tsp_h5,
    main,
)
from pipeline.synth import write_video
from tests.helpers import run_config
from tests.outputs_fixture import default_settings, make_output_dir
from tests.tsp_reference import tsp_source

# ActivityNet's TSP grid as the trainers' configs give it: ActionFormer configs/anet_tsp.yaml (feat_stride 16,
# num_frames 16, default_fps 15, file_prefix v_), OpenTAD configs/_base_/datasets/activitynet-1.3/
# features_tsp_pad.py (feature_stride 16, sample_stride 1, offset_frames 8, fps 15, LoadFeats prefix "v_").
TSP_SETTINGS = default_settings(model="r2plus1d_34_tsp_activitynet", fps=15.0, num_frames=16, pad="drop")
VIDEOS = {"v_abc": 5, "v_d.e": 3, "sub/v_fgh": 1, "v_none": 0}


def actionformer_anet_load(dataset_config: dict, video_id: str) -> np.ndarray:
    """ActionFormer's ActivityNet loader (libs/datasets/anet.py __getitem__): an HDF5 feat_folder when its
    path contains '.hdf5', read as h5[file_prefix + id][()] cast to float32; else feat_folder / (file_prefix
    + id + file_ext) through np.load; then (T, C) -> (C, T)."""
    feat_folder = dataset_config["feat_folder"]
    prefix = dataset_config["file_prefix"] or ""
    if ".hdf5" in feat_folder:
        with h5py.File(feat_folder, "r") as h5:
            feats = np.asarray(h5[prefix + video_id][()], dtype=np.float32)
    else:
        feats = np.load(os.path.join(feat_folder, prefix + video_id + dataset_config["file_ext"]))
        feats = feats.astype(np.float32)
    return np.ascontiguousarray(feats.transpose())


def tsp_merge(features_folder: Path, output_h5: Path) -> None:
    """TSP's extract_features/merge_pkl_files_into_one_h5_feature_file.py, run on a folder of pickles."""
    path = tsp_source() / "extract_features" / "merge_pkl_files_into_one_h5_feature_file.py"
    spec = importlib.util.spec_from_file_location("_tsp_ref_merge", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argparse.Namespace(features_folder=str(features_folder), output_h5=str(output_h5)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_file_is_the_one_tsps_merge_script_writes(tmp_path: Path, dtype: str) -> None:
    run = make_output_dir(
        tmp_path / "run",
        VIDEOS,
        dim=12,
        dtype=dtype,
        settings={**TSP_SETTINGS, "dtype": dtype},
        failed=["v_x"],
    )
    summary_path = export_tsp_h5(run, tmp_path / "tsp")
    assert summary_path == tmp_path / "tsp" / TSP_SUMMARY_NAME
    # TSP: each video's rows pickled as <file name up to its first '.'>.pkl (eval_video_dataset.py:109),
    # then merged; a video without a clip has no pickle (TSP cannot extract it)
    pickles = tmp_path / "pkl"
    pickles.mkdir()
    for key, rows in VIDEOS.items():
        if rows:
            array = np.load(run / "features" / f"{key}_16.npy").astype(np.float32)  # TSP's rows are float32
            with open(pickles / (os.path.basename(f"{key}.mp4").split(".")[0] + ".pkl"), "wb") as f:
                pickle.dump(array, f)
    tsp_merge(pickles, tmp_path / "theirs.h5")
    with h5py.File(tmp_path / "tsp" / H5_NAME, "r") as ours, h5py.File(tmp_path / "theirs.h5", "r") as theirs:
        assert sorted(ours) == sorted(theirs) == ["v_abc", "v_d", "v_fgh"]
        assert dict(ours.attrs) == dict(theirs.attrs) == {}
        for name in theirs:
            a, b = ours[name], theirs[name]
            assert isinstance(a, h5py.Dataset)
            assert (a.shape, a.dtype, a.chunks, a.compression, a.compression_opts) == (
                b.shape,
                b.dtype,
                b.chunks,
                b.compression,
                b.compression_opts,
            )
            assert a.dtype == np.float32 and a.compression == "gzip" and a.compression_opts == 9
            np.testing.assert_array_equal(a[()], b[()])
            assert dict(a.attrs) == {}
    summary = json.loads(summary_path.read_text())
    assert summary["empty"] == ["v_none"] and summary["failed"] == ["v_x"]
    assert summary["videos"]["v_d"] == {"key": "v_d.e", "rows": 3, "fps": 15.0}


def test_actionformer_reads_it_with_activitynets_grid(tmp_path: Path, capsys) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=12, settings=TSP_SETTINGS)
    assert main(["--format", "tsp_h5", str(run), str(tmp_path / "tsp")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "tsp" / TSP_SUMMARY_NAME)
    summary = json.loads((tmp_path / "tsp" / TSP_SUMMARY_NAME).read_text())
    config = summary["dataset_config"]
    assert config == {
        "feat_folder": str((tmp_path / "tsp" / H5_NAME).resolve()),
        "file_prefix": "v_",
        "file_ext": None,
        "input_dim": 12,
        "feat_stride": 16,
        "num_frames": 16,
        "default_fps": 15.0,
    }
    assert "feat_stride: 16," in captured.err and "file_prefix: v_," in captured.err  # the config snippet
    for key, rows in VIDEOS.items():
        if not rows:
            continue
        annotation_id = os.path.basename(key).split(".")[0].removeprefix("v_")  # ActivityNet's ids lack v_
        loaded = actionformer_anet_load(config, annotation_id)
        original = np.load(run / "features" / f"{key}_16.npy").astype(np.float32)
        np.testing.assert_array_equal(loaded, original.T)


def test_a_packed_run_exports_the_same_file(tmp_path: Path) -> None:
    """The same videos written by the packed store export to the same datasets and summary as files."""
    summaries = {}
    for store in ("files", "packed"):
        run = make_output_dir(
            tmp_path / store, VIDEOS, dim=12, settings=TSP_SETTINGS, failed=["v_x"], store=store
        )
        summaries[store] = json.loads(export_tsp_h5(run, tmp_path / f"tsp-{store}").read_text())
    with (
        h5py.File(tmp_path / "tsp-files" / H5_NAME, "r") as a,
        h5py.File(tmp_path / "tsp-packed" / H5_NAME, "r") as b,
    ):
        assert sorted(a) == sorted(b) == ["v_abc", "v_d", "v_fgh"]
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])
    for key in ("videos", "empty", "failed", "feat_stride", "num_frames", "window_frames"):
        assert summaries["files"][key] == summaries["packed"][key], key


def test_names_without_v_prefix_and_refusals(tmp_path: Path, capsys) -> None:
    run = make_output_dir(tmp_path / "run", {"video_test_0000004": 2, "b": 3}, settings=TSP_SETTINGS)
    summary = json.loads(export_tsp_h5(run, tmp_path / "tsp").read_text())
    assert summary["dataset_config"]["file_prefix"] is None
    loaded = actionformer_anet_load(summary["dataset_config"], "video_test_0000004")
    assert loaded.shape == (8, 2)
    clash = make_output_dir(tmp_path / "clash", {"a/v_1.part1": 2, "b/v_1.part2": 2}, settings=TSP_SETTINGS)
    with pytest.raises(ExportError, match="TSP name 'v_1' is shared by keys 'a/v_1.part1' and 'b/v_1.part2'"):
        export_tsp_h5(clash, tmp_path / "tsp2")
    assert not (tmp_path / "tsp2").exists()
    crops = make_output_dir(tmp_path / "crops", {"v_a": 2}, crops=3, settings=TSP_SETTINGS)
    with pytest.raises(ExportError, match="3 crops per row.*crop_reduce=mean"):
        export_tsp_h5(crops, tmp_path / "tsp3")
    with pytest.raises(SystemExit):
        main(["--format", "tsp_h5", "--ext", ".npy", str(run), str(tmp_path / "tsp4")])
    assert "writes one HDF5 file" in capsys.readouterr().err


def test_an_activitynet_tsp_run_exports_the_grid_the_trainers_configs_hold(tmp_path: Path) -> None:
    """data=activitynet_tsp (a tiny random R(2+1)D), videos named v_<id>.mp4 as ActivityNet ships them: every
    export's grid values are those of ActionFormer's anet_tsp.yaml and OpenTAD's features_tsp_pad.py."""
    root = tmp_path / "videos"
    for name, seconds in (("v_abc", 3.0), ("v_def", 2.2)):  # 45 and 33 frames at 15 fps: 2 rows each
        write_video(root / f"{name}.mp4", fps=30, seconds=seconds)
    (root / "video_list.csv").write_text("v_abc.mp4\nv_def.mp4\n")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "data=activitynet_tsp",
                "model=r2plus1d_tiny",
                "model.checkpoint=random",
                f"data.root={root}",
                f"output_dir={tmp_path / 'out'}",
                "output.hdf5=false",
            ],
        )
    validate(cfg)
    summary = run_config(cfg)
    assert (summary.ok, summary.failed, summary.rows) == (2, 0, 4)
    out = tmp_path / "out"
    tsp = json.loads(export_tsp_h5(out, tmp_path / "tsp").read_text())
    af = json.loads(export_actionformer(out, tmp_path / "af", file_ext=".npy").read_text())
    ot = json.loads(export_opentad(out, tmp_path / "ot").read_text())
    for config in (tsp["dataset_config"], af["dataset_config"]):
        assert (config["feat_stride"], config["num_frames"], config["default_fps"]) == (16, 16, 15.0)
    assert tsp["dataset_config"]["file_prefix"] == "v_"
    assert (ot["feature_stride"], ot["sample_stride"], ot["offset_frames"], ot["fps"]) == (16, 1, 8, 15.0)
    for video in ("abc", "def"):  # annotation ids (no v_), the trainers' prefix v_
        from_h5 = actionformer_anet_load(tsp["dataset_config"], video)
        from_npy = actionformer_anet_load({**af["dataset_config"], "file_prefix": "v_"}, video)
        opentad = np.load(os.path.join(ot["data_path"], f"v_{video}.npy")).astype(np.float32).T
        assert from_h5.shape == (32, 2)  # r2plus1d_tiny: 32-d
        np.testing.assert_array_equal(from_h5, from_npy)
        np.testing.assert_array_equal(from_h5, opentad)

"""Consolidation of output dirs into one HDF5 file: content, attributes, layouts, refusals, memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from pipeline import __version__, outputs
from pipeline.config import Hdf5Compression, Hdf5Layout
from pipeline.consolidate import (
    LAYOUTS,
    ConsolidateError,
    consolidate,
    flatten,
    main,
    open_dataset,
    read_failed,
    video_keys,
)
from tests.helpers import small_filesystem
from tests.outputs_fixture import CHECKPOINT_SHA256, default_settings, make_output_dir

REPO = Path(__file__).resolve().parents[2]
VIDEOS = {"P01/videos/P01_01": 7, "P01/videos/P01_02": 3, "P01": 2, "P02/P02_01": 1, "solo": 12}


def sidecar_of(output_dir: Path, key: str) -> dict[str, Any]:
    return outputs.read_sidecar(output_dir / "features" / f"{key}_32.json")


def snapshot(path: Path) -> dict[str, Any]:
    """Every dataset (values, dtype, chunks, compression) and attribute of a file, for comparisons."""
    with h5py.File(path, "r") as h5:
        found: dict[str, Any] = {"/": {k: np.asarray(v).tolist() for k, v in h5.attrs.items()}}
        names: list[str] = []
        h5.visit(names.append)  # names only: datasets are opened below with the external-file prefix
        for name in names:
            if h5.get(name, getclass=True) is h5py.Dataset:
                parent, _, leaf = name.rpartition("/")
                values = np.asarray(open_dataset(h5[parent] if parent else h5, leaf)[()]).tolist()
                obj = h5[name]  # the prefixed handle is gone: attributes can be read again
                attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
                found[name] = (values, str(obj.dtype), obj.chunks, obj.compression, attrs)
            else:
                found[name] = {k: np.asarray(v).tolist() for k, v in h5[name].attrs.items()}
    return found


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_output_dir(tmp_path / "run", VIDEOS, dim=16, failed=["broken/clip"], logits=["logits"])


def test_copy_holds_exactly_the_npy_files_and_sidecars(run_dir: Path) -> None:
    dest = consolidate([run_dir])
    assert dest == run_dir / "features.h5"
    with h5py.File(dest, "r") as h5:
        assert video_keys(h5) == sorted(VIDEOS)
        for key, rows in VIDEOS.items():
            sidecar = sidecar_of(run_dir, key)
            group = h5[key]  # slashes are nested groups
            expected = np.load(run_dir / "features" / f"{key}_32.npy")
            assert group["features"].dtype == expected.dtype
            np.testing.assert_array_equal(group["features"][()], expected)
            np.testing.assert_array_equal(group["timestamps"][()], np.asarray(sidecar["timestamps"]))
            assert group["timestamps"].dtype == np.float64 and group["timestamps"].shape == (rows, 3)
            np.testing.assert_array_equal(
                group["logits"][()], np.load(run_dir / "features" / f"{key}_32.logits.npy")
            )
            assert group["features"].chunks is not None
            for name in ("fps", "frames", "duration", "source", "video", "kind", "rows"):
                assert group.attrs[name] == sidecar[name], name
        assert isinstance(h5["P01"], h5py.Group) and isinstance(h5["P01/videos"], h5py.Group)
        attrs = h5.attrs
        assert attrs["model"] == "slowfast_r50"
        assert attrs["checkpoint_sha256"] == CHECKPOINT_SHA256
        assert attrs["resize.mode"] == "square"
        assert list(attrs["resize.size"]) == [256, 256]
        assert attrs["stride"] == 16 and attrs["num_frames"] == 32
        assert not attrs["random_weights"]
        assert attrs["layout"] == "copy" and attrs["compression"] == "none"
        assert attrs["package_version"] == __version__
        assert attrs["num_videos"] == len(VIDEOS) and attrs["num_failed"] == 1
        assert "created" in attrs
        for name in flatten(default_settings()):
            assert name in attrs, name
        config = yaml.safe_load(h5["_config"].asstr()[()])
        assert config == sidecar_of(run_dir, "solo")["config"]
        failed = read_failed(h5)
        assert [f["key"] for f in failed] == ["broken/clip"]
        assert "moov atom not found" in failed[0]["error"]
    assert not [p for p in run_dir.iterdir() if outputs.TEMP_MARK in p.name]


@pytest.mark.parametrize(("dtype", "crops"), [("float16", None), ("float32", 3)])
def test_copy_keeps_dtype_and_crops(tmp_path: Path, dtype: str, crops: int | None) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 5, "b": 2}, dim=6, crops=crops, dtype=dtype)
    with h5py.File(consolidate([run]), "r") as h5:
        for key in ("a", "b"):
            data = h5[key]["features"][()]
            expected = np.load(run / "features" / f"{key}_32.npy")
            assert data.dtype == np.dtype(dtype) and data.shape == expected.shape
            np.testing.assert_array_equal(data, expected)


def test_consolidating_twice_gives_the_same_file_but_creation_time(run_dir: Path) -> None:
    first = snapshot(consolidate([run_dir]))
    second = snapshot(consolidate([run_dir]))
    for snap in (first, second):
        snap["/"].pop("created")
    assert first == second
    assert len(first) > len(VIDEOS) * 3


def test_external_layout_reads_the_same_arrays_and_survives_a_move(run_dir: Path, tmp_path: Path) -> None:
    copy = consolidate([run_dir], run_dir / "copy.h5")
    external = consolidate([run_dir], run_dir / "external.h5", layout="external")
    with h5py.File(external, "r") as h5:
        assert h5.attrs["layout"] == "external"
        entries = h5["solo/features"].external
        assert entries is not None and entries[0][0] == "features/solo_32.npy"  # relative to the h5 file
    feature_bytes = sum(p.stat().st_size for p in (run_dir / "features").rglob("*.npy"))
    assert copy.stat().st_size - external.stat().st_size > 0.8 * feature_bytes  # no feature bytes inside
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(run_dir, moved)
    snap_copy, snap_external = snapshot(moved / "copy.h5"), snapshot(moved / "external.h5")
    for snap in (snap_copy, snap_external):
        for name in ("created", "layout", "records_sha256"):  # the digest names the layout
            snap["/"].pop(name)
        for key in VIDEOS:  # chunking differs by design
            for name in ("features", "logits"):
                values, dtype, *_ = snap[f"{key}/{name}"]
                snap[f"{key}/{name}"] = (values, dtype)
    assert snap_copy == snap_external
    # plain h5py also works with the documented environment variable, from any current directory
    script = "import h5py, sys; print(h5py.File(sys.argv[1])['solo/features'][()].sum())"
    env = {**os.environ, "HDF5_EXTFILE_PREFIX": "${ORIGIN}"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(moved / "external.h5")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(done.stdout) == pytest.approx(float(np.load(moved / "features/solo_32.npy").sum()), rel=1e-5)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_is_lossless_and_smaller(tmp_path: Path, compression: str) -> None:
    repetitive = {key: np.tile(np.arange(64, dtype=np.float32), (200, 1)) for key in ("a", "b")}
    run = make_output_dir(tmp_path / "run", {"a": 200, "b": 200}, dim=64, arrays=repetitive)
    plain = consolidate([run], run / "plain.h5")
    packed = consolidate([run], run / "packed.h5", compression=compression)
    with h5py.File(packed, "r") as h5:
        assert h5["a/features"].compression == compression and h5.attrs["compression"] == compression
        np.testing.assert_array_equal(h5["a/features"][()], repetitive["a"])
    assert packed.stat().st_size < plain.stat().st_size / 3


def test_config_enums_are_accepted(run_dir: Path) -> None:
    dest = consolidate([run_dir], layout=Hdf5Layout.copy, compression=Hdf5Compression.lzf)
    with h5py.File(dest, "r") as h5:
        assert h5.attrs["layout"] == "copy" and h5["solo/features"].compression == "lzf"


def test_compression_with_external_layout_is_refused(run_dir: Path) -> None:
    with pytest.raises(ConsolidateError, match="copy layout only"):
        consolidate([run_dir], layout="external", compression="gzip")


def test_mixed_settings_are_refused_naming_the_setting(tmp_path: Path) -> None:
    square = make_output_dir(tmp_path / "a", {"x": 3})
    other = default_settings()
    other["resize"] = {**other["resize"], "mode": "short_side"}
    short = make_output_dir(tmp_path / "b", {"y": 3}, settings=other)
    dest = tmp_path / "both.h5"
    with pytest.raises(ConsolidateError, match=r"resize\.mode \('square' vs 'short_side'\)"):
        consolidate([square, short], dest)
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if outputs.TEMP_MARK in p.name]
    assert consolidate([square, make_output_dir(tmp_path / "c", {"z": 2})], dest) == dest


def test_the_same_key_in_two_dirs_is_refused(tmp_path: Path) -> None:
    a = make_output_dir(tmp_path / "a", {"x": 3})
    b = make_output_dir(tmp_path / "b", {"x": 3})
    with pytest.raises(ConsolidateError, match="'x' appears twice"):
        consolidate([a, b], tmp_path / "out.h5")


def test_dirs_without_features_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "features").mkdir(parents=True)
    with pytest.raises(ConsolidateError, match="no features to consolidate"):
        consolidate([tmp_path / "empty"])
    only_failed = make_output_dir(tmp_path / "failed", {}, failed=["a", "b"])
    with pytest.raises(ConsolidateError, match=r"no features to consolidate \(2 failed"):
        consolidate([only_failed])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConsolidateError, match="not an output dir"):
        consolidate([tmp_path / "plain"])
    assert not list(tmp_path.rglob("*.h5")) and not list(tmp_path.rglob(f"*{outputs.TEMP_MARK}*"))


def test_truncated_npy_names_the_file_and_leaves_no_h5(run_dir: Path) -> None:
    victim = run_dir / "features" / "P01" / "videos" / "P01_02_32.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[:-10])
    with pytest.raises(ConsolidateError, match=r"P01_02_32\.npy: truncated"):
        consolidate([run_dir])
    assert not list(run_dir.rglob("*.h5")) and not list(run_dir.rglob(f"*{outputs.TEMP_MARK}*"))


def test_stale_sidecars_follow_the_newest_manifest_record(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"kept": 4, "now_failed": 4})
    # the video failed on a later run: its old features stay on disk but are not taken
    outputs.append_record(
        run / "manifests" / "shard-0-of-1.jsonl",
        {
            "key": "now_failed",
            "path": "now_failed.mp4",
            "status": "failed",
            "outcome": "failed",
            "error": "DecodeError: gone",
            "time": "2099-01-01T00:00:00+00:00",
        },
    )
    # an older file of "kept" under another clip length, superseded by the manifest's output
    shutil.copy(run / "features" / "kept_32.npy", run / "features" / "kept_16.npy")
    shutil.copy(run / "features" / "kept_32.json", run / "features" / "kept_16.json")
    with h5py.File(consolidate([run]), "r") as h5:
        assert video_keys(h5) == ["kept"]
        assert [f["key"] for f in read_failed(h5)] == ["now_failed"]


def test_cli_writes_and_reports_errors(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cli.h5"
    assert main([str(run_dir), "-o", str(dest), "--layout", "external"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    with h5py.File(dest, "r") as h5:
        assert h5.attrs["layout"] == "external"
    (tmp_path / "nothing" / "features").mkdir(parents=True)
    assert main([str(tmp_path / "nothing")]) == 1
    assert "no features to consolidate" in capsys.readouterr().err


def test_full_disk_is_one_line_from_the_cli_and_leaves_no_half_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_filesystem(tmp_path / "small", "64k") as small:
        dest = small / "big.h5"
        assert main([str(run_dir), "-o", str(dest)]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"error: cannot write {dest}: No space left on device"
        assert list(small.iterdir()) == []


def test_a_write_error_of_hdf5_is_an_output_error_without_a_temp_file(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.consolidate as module

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "Can't synchronously write data (file write failed: errno = 28)")

    monkeypatch.setattr(module, "_write_video", full_disk)
    dest = tmp_path / "out" / "f.h5"
    with pytest.raises(outputs.OutputError, match=f"cannot write {dest}: No space left on device"):
        consolidate([run_dir], dest)
    assert list(dest.parent.iterdir()) == []


def test_memory_stays_flat_with_many_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak RSS of a consolidation grows by far less than the feature bytes (131 MB) from 20 to 1000 videos.

    Measured: ~+25 MiB, HDF5's metadata cache, flat from 1000 to 3000 videos; holding every array: ~+150.
    """
    rows, dim = 32, 1024
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)  # durability of the fixture is not under test here
        small = make_output_dir(tmp_path / "small", {f"v{i:04d}": rows for i in range(20)}, dim=dim)
        large = make_output_dir(tmp_path / "large", {f"v{i:04d}": rows for i in range(1000)}, dim=dim)
    script = (
        "import resource, sys; from pathlib import Path; from pipeline.consolidate import consolidate; "
        "consolidate([Path(sys.argv[1])]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )

    def peak_kib(run: Path) -> int:
        done = subprocess.run(
            [sys.executable, "-c", script, str(run)], cwd=REPO, capture_output=True, text=True, check=True
        )
        return int(done.stdout.split()[-1])

    feature_bytes = sum(p.stat().st_size for p in (large / "features").glob("*.npy"))
    assert feature_bytes > 120e6
    growth_mib = (peak_kib(large) - peak_kib(small)) / 1024
    assert growth_mib < 60, f"peak RSS grew by {growth_mib:.0f} MiB"  # holding every array: ~150
    with h5py.File(large / "features.h5", "r") as h5:
        assert len(video_keys(h5)) == 1000
        np.testing.assert_array_equal(h5["v0999/features"][()], np.load(large / "features" / "v0999_32.npy"))
    with h5py.File(small / "features.h5", "r") as h5:
        assert json.loads(h5["_failed"].asstr()[()]) == []


def test_a_key_colliding_with_another_keys_datasets_is_refused(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 2, "a/features": 2})
    with pytest.raises(ConsolidateError, match="collides with another key"):
        consolidate([run])
    assert not list(run.rglob("*.h5"))


def test_every_logit_head_gets_a_dataset(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 3}, logits=["verb", "noun"])
    for layout in LAYOUTS:
        with h5py.File(consolidate([run], layout=layout), "r") as h5:
            group = h5["a"]
            for name in ("logits_verb", "logits_noun"):
                expected = np.load(run / "features" / f"a_32.{name.removeprefix('logits_')}.npy")
                np.testing.assert_array_equal(open_dataset(group, name)[()], expected)
            assert "logits" not in group


# --- reruns cost what changed ----------------------------------------------------------------------


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys consolidation writes, in order."""
    import pipeline.consolidate as module

    written: list[str] = []
    real = module._write_video

    def counting(h5, video, *args):
        written.append(video.key)
        return real(h5, video, *args)

    monkeypatch.setattr(module, "_write_video", counting)
    return written


def test_a_current_file_is_left_alone_without_opening_a_video(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.consolidate as module

    dest = consolidate([run_dir])
    before = dest.stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("a current file needs no video opened")

    monkeypatch.setattr(module, "scan", forbidden)
    monkeypatch.setattr(module, "open_record", forbidden)
    assert consolidate([run_dir]) == dest
    assert dest.stat().st_mtime_ns == before


@pytest.mark.parametrize("store", ["files", "packed"])
def test_one_changed_video_is_written_in_place_and_the_file_equals_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=16, failed=["broken/clip"], store=store)
    dest = consolidate([run])
    changed = {"solo": np.full((4, 16), 7.0, np.float32)}
    make_output_dir(run, {"solo": 12}, dim=16, arrays=changed, store=store, hour=1)  # solo recomputed
    written = count_writes(monkeypatch)
    assert consolidate([run]) == dest and written == ["solo"]
    assert not (run / "features.h5.updating").exists()
    fresh = consolidate([run], tmp_path / "fresh.h5")
    assert written[0] == "solo" and sorted(written[1:]) == sorted(VIDEOS)
    updated, whole = snapshot(dest), snapshot(fresh)
    for snap in (updated, whole):
        snap["/"].pop("created")
    assert updated == whole
    with h5py.File(dest, "r") as h5:
        np.testing.assert_array_equal(h5["solo/features"][()], changed["solo"])


def test_an_update_killed_midway_makes_the_next_run_write_the_whole_file(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = consolidate([run_dir])
    make_output_dir(run_dir, {"solo": 12}, dim=16, arrays={"solo": np.ones((2, 16), np.float32)}, hour=1)
    (run_dir / "features.h5.updating").write_text("updating since a kill\n")
    written = count_writes(monkeypatch)
    consolidate([run_dir])
    assert sorted(written) == sorted(VIDEOS) and not (run_dir / "features.h5.updating").exists()
    with h5py.File(dest, "r") as h5:
        np.testing.assert_array_equal(h5["solo/features"][()], np.ones((2, 16), np.float32))


def test_a_standalone_consolidation_removes_what_a_killed_one_left(run_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = run_dir / f".features.h5{outputs.TEMP_MARK}{os.uname().nodename}-{dead.pid}-abc"
    left.write_bytes(b"\0" * 1000)
    consolidate([run_dir])
    assert not left.exists()


def test_packed_and_files_stores_consolidate_to_the_same_videos(tmp_path: Path) -> None:
    files = make_output_dir(tmp_path / "files", VIDEOS, dim=16, failed=["broken/clip"], logits=["logits"])
    packed = make_output_dir(
        tmp_path / "packed", VIDEOS, dim=16, failed=["broken/clip"], logits=["logits"], store="packed"
    )
    a, b = snapshot(consolidate([files])), snapshot(consolidate([packed]))
    for snap in (a, b):
        for name in ("created", "records_sha256"):
            snap["/"].pop(name)
        for name in ("_index", "_failed", "_config", "_configs"):  # name the output dir
            snap.pop(name)
    assert a == b


def test_a_corrupted_packed_record_is_named_by_consolidation(tmp_path: Path) -> None:
    run = make_output_dir(tmp_path / "run", VIDEOS, dim=16, store="packed")
    latest, _ = outputs.latest_records(run)
    record = latest["solo"]
    part = run / str(record.output)
    data = bytearray(part.read_bytes())
    data[int(record.offset or 0) + int(record.size or 0) - 1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(
        ConsolidateError, match=r"solo's record differs from its manifest.*output.verify=full"
    ):
        consolidate([run])
    assert not (run / "features.h5").exists()

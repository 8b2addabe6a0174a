"""Reading releases the way the trainers store them, our own outputs in every layout, and bad inputs:
each bad file is one line of the report and the other videos are still compared."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.compare.ours import read_ours
from pipeline.compare.released import read_release
from tests.compare_data import compare, compare_cli, fine_videos, ours_dir, video_id, write_release


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Path:
    return ours_dir(tmp_path_factory.mktemp("ours"), fine_videos(seed=1, lengths=(120, 140)))


@pytest.fixture(scope="module")
def arrays(ours) -> dict[str, np.ndarray]:
    return {v.key: v.features for v in read_ours(ours).videos.values()}


@pytest.mark.parametrize("layout", ["npz", "npy", "pt", "h5", "pickle-2", "pickle-5"])
def test_each_layout_reads_back_the_same_arrays(ours, arrays, layout, tmp_path):
    path = write_release(tmp_path / "r", arrays, layout)
    release = read_release(path)
    assert not release.problems
    assert sorted(release.videos) == sorted(video_id(k) for k in arrays)
    for key, value in arrays.items():
        loaded = release.videos[video_id(key)].load()
        assert loaded.dtype == value.dtype and np.array_equal(loaded, value)
    status, report = compare(ours, path)
    assert status == 0 and report["verdict"] == "same"


def test_activitynet_prefix_in_a_tsp_style_h5(ours, arrays, tmp_path):
    path = write_release(tmp_path / "r", {k: v[::2] for k, v in arrays.items()}, "h5", prefix="v_")
    status, report = compare(ours, path)
    assert status == 1 and report["verdict"] == "nothing compared"
    assert report["ids"]["only_theirs"] == sorted("v_" + video_id(k) for k in arrays)
    assert any("--id-prefix v_" in note for note in report["notes"])
    status, report = compare(ours, path, "--id-prefix", "v_")
    assert status == 0 and report["verdict"] == "different grid"
    assert report["ids"]["compared"] == sorted(video_id(k) for k in arrays)


def test_float16_torch_files_and_per_video_pickles(ours, arrays, tmp_path):
    import torch

    folder = tmp_path / "pt"
    folder.mkdir()
    for key, value in arrays.items():
        torch.save(torch.from_numpy(value).half(), folder / f"{video_id(key)}.pt")
    status, report = compare(ours, folder)
    assert report["verdict"] == "same" and {v["theirs"]["dtype"] for v in report["videos"]} == {"float16"}
    folder = tmp_path / "pkl"  # TSP writes one pickled array per video
    folder.mkdir()
    for key, value in arrays.items():
        (folder / f"{video_id(key)}.pkl").write_bytes(pickle.dumps(value))
    assert compare(ours, folder)[1]["verdict"] == "same"


def test_npy_holding_a_dict_is_read_without_pickle_code(ours, arrays, tmp_path):
    path = tmp_path / "all.npy"
    np.save(path, {video_id(k): v for k, v in arrays.items()}, allow_pickle=True)
    release = read_release(path)
    assert sorted(release.videos) == sorted(video_id(k) for k in arrays)
    assert compare(ours, path)[1]["verdict"] == "same"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(ours, arrays, tmp_path):
    marker = tmp_path / "ran"
    whole = tmp_path / "whole.pkl"
    whole.write_bytes(pickle.dumps(_RunsCode(marker)))
    done = compare_cli(ours, whole)
    assert done.returncode == 2
    assert "refused: the pickle would load" in done.stderr and "system" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    folder = tmp_path / "per_video"  # one video's pickle runs code: that video is a problem, not the run
    folder.mkdir()
    (good, good_array), (bad, _) = ((video_id(k), v) for k, v in arrays.items())
    (folder / f"{good}.pkl").write_bytes(pickle.dumps({"feats": good_array}))
    (folder / f"{bad}.pkl").write_bytes(pickle.dumps({"feats": _RunsCode(marker)}))
    status, report = compare(ours, folder)
    assert status == 0 and report["ids"]["compared"] == [good] and report["verdict"] == "same"
    assert (
        len(report["problems"]) == 1 and f"{bad}.pkl: refused: the pickle would load" in report["problems"][0]
    )
    assert not marker.exists()


def test_a_folder_mixing_layouts_reads_the_most_common(ours, arrays, tmp_path):
    folder = write_release(tmp_path / "r", arrays, "npy")
    np.savez(folder / "extra.npz", feats=np.zeros((3, 16), np.float32))
    status, report = compare(ours, folder)
    assert report["problems"] == [f"{folder}: mixes layouts (2 npy, 1 npz); only the 2 npy files are read"]
    assert report["verdict"] == "same" and len(report["ids"]["compared"]) == 2


def test_bad_files_are_one_line_each_and_the_rest_is_compared(ours, arrays, tmp_path):
    folder = write_release(tmp_path / "r", arrays, "npy")
    first, second = (video_id(k) for k in arrays)
    np.save(folder / f"{first}.npy", np.zeros(5, np.float32))  # rank 1
    (folder / "empty_video.npy").write_bytes(b"")
    np.save(folder / "stranger.npy", np.zeros((4, 16), np.float32))
    (folder / "notes.txt").write_text("ignored")
    status, report = compare(ours, folder)
    assert status == 0
    assert report["ids"]["compared"] == [second]
    assert report["ids"]["only_theirs"] == ["empty_video", "stranger"]
    problems = " | ".join(report["problems"])
    assert f"{first}.npy: rank-1 array (5,)" in problems
    assert report["verdict"] == "same"


def test_unreadable_layouts_in_one_line(ours, tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    done = compare_cli(ours, bad)
    assert done.returncode == 2 and "unreadable .npz" in done.stderr
    np.savez(tmp_path / "y.npz", other=np.zeros((3, 2)), more=np.zeros((3, 2)))
    done = compare_cli(ours, tmp_path / "y.npz")
    assert done.returncode == 2 and "no 'feats' array" in done.stderr
    done = compare_cli(ours, tmp_path / "missing")
    assert done.returncode == 2 and "no such file or folder" in done.stderr
    import torch

    torch.save({"feats": torch.zeros(3, 2), "note": object.__new__(_Opaque)}, tmp_path / "z.pt")
    done = compare_cli(ours, tmp_path / "z.pt")
    assert done.returncode == 2 and "weights_only" in done.stderr


class _Opaque:
    pass


def test_nothing_matched_is_exit_status_1(ours, arrays, tmp_path):
    folder = write_release(tmp_path / "r", {f"other/{video_id(k)}x": v for k, v in arrays.items()}, "npz")
    done = compare_cli(ours, folder)
    assert done.returncode == 1
    assert "verdict: nothing compared" in done.stdout
    assert "only ours: 2" in done.stdout and "only theirs" in done.stdout


def test_ours_as_hdf5_and_as_exports(ours, arrays, tmp_path):
    from pipeline.consolidate import consolidate
    from pipeline.export import export_actionformer, export_opentad

    release = write_release(tmp_path / "r", {k: v[1:] for k, v in arrays.items()}, "npz")
    h5 = consolidate([ours], tmp_path / "features.h5")
    exported = export_actionformer(ours, tmp_path / "af").parent
    opentad = export_opentad(ours, tmp_path / "ot").parent
    for path, kind in ((h5, "features.h5"), (exported, "export folder"), (opentad, "export folder")):
        status, report = compare(path, release)
        assert report["ours"]["kind"].startswith(kind)
        assert report["verdict"] == "same up to an offset", path
        assert report["ours"]["settings"]["stride"] == 16
        assert [v["ours_step_s"] for v in report["videos"]] == pytest.approx([16 / 30] * len(arrays))
    status, report = compare(exported, exported)  # an export compared with itself
    assert report["verdict"] == "same"

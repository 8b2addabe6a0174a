"""Inspection report: statistics against numpy, bad videos, failures, external checks, plots."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import outputs
from pipeline.consolidate import consolidate
from pipeline.inspect import InspectError, feature_stats, format_report, inspect_path, main, plot_videos
from tests.outputs_fixture import make_output_dir, synthetic_features

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bad_dir(tmp_path: Path) -> Path:
    """Three videos: clean, one NaN planted, all rows zero; plus a failed one."""
    with_nan = synthetic_features("P01/nan", 6, 8, None, "float32")
    with_nan[2, 3] = np.nan
    with_nan[4, 0] = np.inf
    arrays = {"P01/nan": with_nan, "zeros": np.zeros((4, 8), np.float32)}
    return make_output_dir(
        tmp_path / "run", {"P01/clean": 5, "P01/nan": 6, "zeros": 4}, dim=8, arrays=arrays, failed=["lost"]
    )


def test_stats_match_numpy() -> None:
    features = synthetic_features("k", 9, 5, None, "float32")
    features[:, 1] = 0.0  # one constant dim (zero, so the zero row keeps it constant)
    features[3] = 0.0  # one zero row
    stats = feature_stats("k", features)
    norms = np.linalg.norm(features.astype(np.float64), axis=1)
    assert (stats.rows, stats.dims, stats.dtype) == (9, (5,), "float32")
    assert stats.nonfinite == 0 and stats.zero_rows == 1 and stats.constant_dims == 1
    assert stats.norm_min == pytest.approx(norms.min()) and stats.norm_max == pytest.approx(norms.max())
    assert stats.norm_mean == pytest.approx(norms.mean())
    assert not stats.bad


def test_stats_of_crops_and_empty_arrays() -> None:
    crops = synthetic_features("c", 4, 6, 3, "float16")
    stats = feature_stats("c", crops)
    norms = np.linalg.norm(crops.astype(np.float64), axis=-1)
    assert stats.dims == (3, 6) and stats.dtype == "float16"
    assert stats.norm_min == pytest.approx(norms.min()) and stats.norm_max == pytest.approx(norms.max())
    empty = feature_stats("e", np.zeros((0, 6), np.float32))
    assert empty.empty and empty.bad and empty.norm_mean is None and empty.constant_dims is None


def test_nan_and_zero_videos_are_reported_and_exit_1(
    bad_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = inspect_path(bad_dir)
    by_key = {v.key: v for v in report.videos}
    assert by_key["P01/nan"].nonfinite == 2 and not by_key["P01/nan"].empty
    assert by_key["zeros"].empty and by_key["zeros"].zero_rows == 4
    assert not by_key["P01/clean"].bad
    assert [f["key"] for f in report.failed] == ["lost"]
    assert not report.ok
    assert main([str(bad_dir)]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["P01/nan"].endswith("NAN/INF") and lines["zeros"].endswith("EMPTY")
    assert not lines["P01/clean"].endswith(("NAN/INF", "EMPTY"))
    assert "FAILED lost (lost.mp4): DecodeError" in out
    assert "1 with NaN/Inf, 1 empty, 1 failed" in out


def test_clean_dir_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_output_dir(tmp_path / "run", {"a": 3, "b": 4})
    assert main([str(run)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")


@pytest.mark.parametrize("layout", ["copy", "external"])
def test_h5_report_equals_dir_report(bad_dir: Path, layout: str) -> None:
    from_dir = inspect_path(bad_dir)
    from_h5 = inspect_path(consolidate([bad_dir], layout=layout))
    assert from_h5.videos == from_dir.videos
    assert [f["key"] for f in from_h5.failed] == ["lost"] and from_h5.problems == []


def test_single_npy(bad_dir: Path) -> None:
    report = inspect_path(bad_dir / "features" / "P01" / "nan_32.npy")
    assert [v.key for v in report.videos] == ["P01/nan"] and not report.ok


def test_external_entries_are_checked_against_the_npy_header(bad_dir: Path) -> None:
    h5 = consolidate([bad_dir], layout="external")
    victim = bad_dir / "features" / "P01" / "clean_32.npy"
    np.save(victim, np.ones((2, 8), np.float32))  # rewritten behind the file's back: fewer bytes
    report = inspect_path(h5)
    assert len(report.problems) == 1 and "P01/clean/features" in report.problems[0]
    assert "does not match" in report.problems[0] and not report.ok
    assert "PROBLEM" in format_report(report)


def test_truncated_npy_in_a_dir_is_a_problem(bad_dir: Path) -> None:
    victim = bad_dir / "features" / "zeros_32.npy"
    victim.write_bytes(victim.read_bytes()[:-4])
    report = inspect_path(bad_dir)
    assert any("zeros_32.npy: truncated" in p for p in report.problems)
    assert "zeros" not in {v.key for v in report.videos}


def test_plot_writes_a_png(bad_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "ssm.png"
    assert main([str(bad_dir), "--plot", str(out), "--videos", "P01/clean", "zeros"]) == 1  # zeros is bad
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    h5_out = tmp_path / "h5.png"
    plot_videos(consolidate([bad_dir], layout="external"), h5_out)
    assert h5_out.read_bytes()[:8] == PNG_MAGIC


def test_unknown_video_and_missing_path_exit_2(
    bad_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(bad_dir), "--plot", str(tmp_path / "x.png"), "--videos", "nope"]) == 2
    assert "no video 'nope'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(
    bad_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InspectError, match=r"needs matplotlib.*\[plot\]"):
        plot_videos(bad_dir, tmp_path / "x.png")


def test_h5_failed_list_and_keys(bad_dir: Path) -> None:
    path = consolidate([bad_dir])
    with h5py.File(path, "r") as h5:
        assert h5.attrs["num_failed"] == 1
    report = inspect_path(path)
    assert sorted(v.key for v in report.videos) == ["P01/clean", "P01/nan", "zeros"]
    assert not list(bad_dir.rglob(f"*{outputs.TEMP_MARK}*"))

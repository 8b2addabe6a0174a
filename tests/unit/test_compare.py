"""`python -m pipeline.compare`: releases built from our features with one KNOWN change each; the command
must name the change (verdict, finding, alignment, the setting to change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.compare_data import (
    DIM,
    compare,
    compare_cli,
    each,
    fine_videos,
    keys,
    ours_dir,
    scenes,
    write_release,
)


@pytest.fixture(scope="module")
def fine() -> dict[str, np.ndarray]:
    return fine_videos()


@pytest.fixture(scope="module")
def ours(fine, tmp_path_factory) -> Path:
    return ours_dir(tmp_path_factory.mktemp("ours"), fine)


@pytest.fixture(scope="module")
def our_arrays(fine) -> dict[str, np.ndarray]:
    return {k: v[::2] for k, v in fine.items()}


def _alignments(report: dict) -> set[tuple[float, float]]:
    return {(v["alignment"]["offset"], round(v["alignment"]["ratio"], 4)) for v in report["videos"]}


def _changes(report: dict) -> str:
    return " | ".join(f["change"] or "" for f in report["summary"])


def test_identical_release_is_the_same(ours, our_arrays, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", our_arrays))
    assert status == 0
    assert report["verdict"] == "same" and report["counts"] == {"same": 3}
    assert _alignments(report) == {(0.0, 1.0)}
    assert report["summary"] == []
    for video in report["videos"]:
        assert video["cosine"]["min"] > 0.99999 and video["rel_l2"]["max"] < 1e-6
        assert video["ours"]["rows"] == video["theirs"]["rows"]


def test_release_one_row_later_is_an_offset(ours, our_arrays, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, lambda a: a[1:])))
    assert status == 0 and report["verdict"] == "same up to an offset"
    assert _alignments(report) == {(1.0, 1.0)}
    assert keys(report) == {"offset:+1"}
    assert all(v["cosine"]["min"] > 0.99999 for v in report["videos"])


def test_release_starting_earlier_points_at_centered_windows(ours, our_arrays, tmp_path):
    rng = np.random.default_rng(3)
    earlier = each(our_arrays, lambda a: np.vstack([rng.standard_normal((2, DIM)).astype(a.dtype), a]))
    status, report = compare(ours, write_release(tmp_path / "r", earlier))
    assert report["verdict"] == "same up to an offset"
    assert _alignments(report) == {(-2.0, 1.0)}
    assert keys(report) == {"offset:-2"}
    assert "data.window=centered" in _changes(report)  # ours are sliding windows


def test_dropped_trailing_row_is_the_padding_rule(ours, our_arrays, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, lambda a: a[:-1])))
    assert report["verdict"] == "same up to an offset"
    assert _alignments(report) == {(0.0, 1.0)}
    assert keys(report) == {"trailing:-1"}
    assert "data.pad=shift" in _changes(report) and "data.pad=drop" in _changes(report)


def test_extra_trailing_rows_are_padding_past_the_end(ours, our_arrays, tmp_path):
    status, report = compare(
        ours, write_release(tmp_path / "r", each(our_arrays, lambda a: np.vstack([a, a[-2:]])))
    )
    assert report["verdict"] == "same up to an offset"
    assert keys(report) == {"trailing:+2"}
    assert "runs further past the end" in report["summary"][0]["change"]  # ours pad zero already


def test_every_other_row_is_twice_the_stride(ours, our_arrays, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, lambda a: a[::2])))
    assert report["verdict"] == "different grid"
    assert _alignments(report) == {(0.0, 2.0)}
    assert keys(report) == {"grid:2"}
    assert report["summary"][0]["change"] == "data.stride=32"  # ours: stride 16


def test_denser_release_is_half_the_stride(ours, fine, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", dict(fine)))
    assert report["verdict"] == "different grid"
    assert _alignments(report) == {(0.0, 0.5)}
    assert report["summary"][0]["change"] == "data.stride=8"
    assert all(v["cosine"]["min"] > 0.99999 for v in report["videos"])  # compared on our (sparser) rows


def test_another_frame_rate_is_a_fractional_ratio(ours, our_arrays, tmp_path):
    """Their rows 1.2 of ours apart (25 fps against our 30 with the same stride): read from our rows."""
    from pipeline.compare.align import interpolate

    def slower(a: np.ndarray) -> np.ndarray:
        return interpolate(a, np.arange(0, len(a) - 1, 1.2)).astype(np.float32)

    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, slower)))
    assert report["verdict"] == "different grid"
    assert {r for _, r in _alignments(report)} == {1.2}
    assert "data.fps=25" in report["summary"][0]["change"]


def test_independent_features_are_unrelated(ours, our_arrays, tmp_path):
    rng = np.random.default_rng(7)
    other = each(our_arrays, lambda a: scenes(len(a), DIM, rng).astype(np.float32))
    status, report = compare(ours, write_release(tmp_path / "r", other))
    assert status == 0
    assert report["verdict"] == "different values"
    assert {v["values"] for v in report["videos"]} == {"unrelated"}
    assert keys(report) == {"unrelated"}


def test_another_model_of_the_same_videos(ours, our_arrays, tmp_path):
    """Another network: a random ReLU layer to 32 dims; only the structure over time is shared."""
    weights = np.random.default_rng(11).standard_normal((DIM, 32))
    other = each(our_arrays, lambda a: np.maximum(a @ weights / 4, 0).astype(np.float32)[1:])
    status, report = compare(ours, write_release(tmp_path / "r", other))
    assert report["verdict"] == "different values"
    assert {v["values"] for v in report["videos"]} == {"other-model"}
    assert {v["alignment"]["mode"] for v in report["videos"]} == {"self-similarity"}
    assert _alignments(report) == {(1.0, 1.0)}  # the one-row offset is found from the structure
    assert "other-model:32" in keys(report)
    assert "mvitv2_tiny" in _changes(report)  # our registered models with 32 dims
    for video in report["videos"]:
        assert video["alignment"]["score"] >= video["alignment"]["null_score"] + 0.15


def test_l2_normalised_release(ours, our_arrays, tmp_path):
    release = each(our_arrays, lambda a: a / np.linalg.norm(a, axis=1, keepdims=True))
    status, report = compare(ours, write_release(tmp_path / "r", release))
    assert report["verdict"] == "different values"
    assert keys(report) == {"l2-normalised"}
    assert all(v["cosine"]["min"] > 0.99999 and v["rel_l2"]["median"] > 0.5 for v in report["videos"])


def test_rows_rescaled_each_by_its_own_factor(ours, our_arrays, tmp_path):
    rng = np.random.default_rng(5)
    release = each(our_arrays, lambda a: a * rng.uniform(0.5, 2.0, (len(a), 1)).astype(np.float32))
    status, report = compare(ours, write_release(tmp_path / "r", release))
    assert keys(report) == {"row-scale"}
    assert {v["values"] for v in report["videos"]} == {"row-scale"}


def test_z_normalised_per_video(ours, our_arrays, tmp_path):
    release = each(our_arrays, lambda a: (a - a.mean(axis=0)) / a.std(axis=0))
    status, report = compare(ours, write_release(tmp_path / "r", release))
    assert report["verdict"] == "different values"
    assert keys(report) == {"z-video"}
    assert _alignments(report) == {(0.0, 1.0)}


def test_z_normalised_with_dataset_statistics(ours, our_arrays, tmp_path):
    stacked = np.concatenate(list(our_arrays.values()))
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    status, report = compare(
        ours, write_release(tmp_path / "r", each(our_arrays, lambda a: (a - mean) / std))
    )
    assert {v["values"] for v in report["videos"]} == {"affine"}
    assert keys(report) == {"affine:shared"}
    assert "one mean/std over the whole dataset" in report["summary"][0]["text"]


def test_two_stream_concatenation(ours, our_arrays, tmp_path):
    rng = np.random.default_rng(9)
    release = each(our_arrays, lambda a: np.hstack([scenes(len(a), DIM, rng).astype(np.float32), a]))
    status, report = compare(ours, write_release(tmp_path / "r", release))
    assert report["verdict"] == "different values"
    assert keys(report) == {f"two-stream:{DIM}:{2 * DIM}"}
    assert "columns 0:16 are another stream" in report["summary"][0]["text"]
    assert all(v["cosine"]["min"] > 0.99999 for v in report["videos"])


def test_float16_release_is_the_same_up_to_rounding(ours, our_arrays, tmp_path):
    status, report = compare(
        ours, write_release(tmp_path / "r", each(our_arrays, lambda a: a.astype(np.float16)))
    )
    assert report["verdict"] == "same"
    assert keys(report) == {"dtype:float16"}
    assert all(0 < v["rel_l2"]["median"] < 1e-3 for v in report["videos"])


def test_channels_first_release_is_transposed(ours, our_arrays, tmp_path):
    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, lambda a: a.T.copy())))
    assert report["verdict"] == "same"
    assert keys(report) == {"transposed"}
    assert all(v["orientation"].startswith("stored (C, T)") for v in report["videos"])


def test_crop_mean_release_against_our_three_crops(fine, tmp_path):
    ours3 = ours_dir(tmp_path / "ours3", fine, crops=3)
    from pipeline.compare.ours import read_ours

    means = {v.key: v.features.mean(axis=1) for v in read_ours(ours3).videos.values()}
    status, report = compare(ours3, write_release(tmp_path / "r", means))
    assert keys(report) == {"crop-mean"}
    assert "data.crop_reduce=mean" in _changes(report)
    one = {v.key: v.features[:, 1] for v in read_ours(ours3).videos.values()}
    status, report = compare(ours3, write_release(tmp_path / "r1", one))
    assert keys(report) == {"crop:1"} and "data.crops=1" in _changes(report)


def test_text_report_and_exit_status(ours, our_arrays, tmp_path):
    release = write_release(tmp_path / "r", each(our_arrays, lambda a: a[1:]))
    done = compare_cli(ours, release, "--videos", "2")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "verdict: same up to an offset (2 of 2 videos)" in text
    assert "1 more matched, left out by --videos" in text
    assert "theirs start 1 row later" in text and "their row 0 is our row 1" in text


def test_plot_is_written(ours, our_arrays, tmp_path):
    pytest.importorskip("matplotlib")
    release = write_release(tmp_path / "r", each(our_arrays, lambda a: a[::2]))
    status, _ = compare(ours, release, "--plot", str(tmp_path / "plot.png"))
    assert status == 0
    data = (tmp_path / "plot.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_only_the_last_row_differs_is_the_padding_content(ours, our_arrays, tmp_path):
    """Ego4D's rule (pad shift) moves the last clip back: same rows, a different last one."""

    def last_moved(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[-1] = 0.5 * (a[-1] + a[-3])
        return out

    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, last_moved)))
    assert report["verdict"] == "same up to an offset"
    assert keys(report) == {"edge:last"}
    assert "data.pad" in report["summary"][0]["change"]


def test_a_few_rows_differ_inside_the_video(ours, our_arrays, tmp_path):
    rng = np.random.default_rng(2)

    def damaged(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[40:42] = rng.standard_normal((2, a.shape[1]))
        return out

    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, damaged)))
    assert report["verdict"] == "different values"
    assert keys(report) == {"rows-differ"}
    for video in report["videos"]:
        assert video["rows_differing"]["ours_rows"] == [40.0, 41.0]
        assert {w["ours_row"] for w in video["cosine"]["worst"][:2]} == {40.0, 41.0}


def test_nan_and_zero_rows_are_counted_and_left_out(ours, our_arrays, tmp_path):
    def broken(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[10] = np.nan
        out[20:23] = 0
        return out

    status, report = compare(ours, write_release(tmp_path / "r", each(our_arrays, broken)))
    assert {"nan:theirs", "zero:theirs"} <= keys(report)
    for video in report["videos"]:
        assert (video["theirs"]["nan_rows"], video["theirs"]["zero_rows"]) == (1, 3)
        assert video["alignment"]["offset"] == 0 and video["alignment"]["ratio"] == 1
        assert video["rows_differing"]["ours_rows"] == [20.0, 21.0, 22.0]  # the NaN row is not measured

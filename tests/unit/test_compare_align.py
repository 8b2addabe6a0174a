"""`pipeline.compare.align` alone: pairing, interpolation, and alignments recovered from the data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compare import align
from pipeline.compare.scaling import check_scaling
from tests.compare_data import scenes


@pytest.fixture(scope="module")
def seq() -> np.ndarray:
    return scenes(240, 24, np.random.default_rng(21))


def test_pairs_are_whole_rows_of_the_sparser_side():
    pairs = align.pair_rows(10, 5, 0.0, 2.0)  # theirs every other row of ours
    assert pairs.theirs.tolist() == [0, 1, 2, 3, 4] and pairs.ours.tolist() == [0, 2, 4, 6, 8]
    pairs = align.pair_rows(5, 10, 0.0, 0.5)  # theirs twice as dense
    assert pairs.ours.tolist() == [0, 1, 2, 3, 4] and pairs.theirs.tolist() == [0, 2, 4, 6, 8]
    pairs = align.pair_rows(10, 10, 2.0, 1.0)  # their row 0 is our row 2
    assert pairs.theirs.tolist() == list(range(8)) and pairs.ours.tolist() == list(range(2, 10))


def test_interpolation_is_exact_on_rows_and_linear_between():
    x = np.arange(12, dtype=np.float64).reshape(4, 3) ** 2
    assert np.array_equal(align.interpolate(x, np.array([0.0, 3.0, 2.0])), x[[0, 3, 2]])
    assert np.allclose(align.interpolate(x, np.array([1.25])), 0.75 * x[1] + 0.25 * x[2])
    x[1] = np.nan  # a NaN row does not leak into its neighbour's exact reads
    assert np.isfinite(align.interpolate(x, np.array([0.0, 2.0]))).all()


@pytest.mark.parametrize("lag", [-3, -1, 1, 2, 5])
def test_offsets_are_found(seq, lag):
    theirs = seq[lag:] if lag > 0 else np.vstack([scenes(-lag, 24, np.random.default_rng(1)), seq])
    found = align.find_alignment(seq, theirs)
    assert (found.offset, found.ratio, found.mode) == (float(lag), 1.0, "direct")
    match = align.row_match(seq, theirs, found)
    assert match.cosine[match.valid].min() > 1 - 1e-9


@pytest.mark.parametrize("ratio", [2.0, 3.0, 0.5, 5 / 6, 6 / 5, 4 / 3])
def test_ratios_are_found(seq, ratio):
    """Theirs sampled from ours at offset + ratio * j (ratio 4/3 is in no list: the row counts give it)."""
    positions = 1 + ratio * np.arange(int((len(seq) - 2) / ratio))
    theirs = align.interpolate(seq, positions)
    found = align.find_alignment(seq, theirs)
    assert found.ratio == pytest.approx(ratio, rel=0.003)
    assert found.offset == pytest.approx(1.0, abs=0.26)


def test_a_fractional_offset_is_refined(seq):
    theirs = align.interpolate(seq, 0.5 + np.arange(len(seq) - 1))
    found = align.find_alignment(seq, theirs)
    assert (found.offset, found.ratio) == (0.5, 1.0)


def test_unrelated_sequences_keep_the_simplest_alignment_or_stay_at_chance(seq):
    other = scenes(len(seq), 24, np.random.default_rng(99))
    direct = align.find_alignment(seq, other)
    assert direct.score < 0.5  # no direct match: the caller switches to self-similarity
    found = align.find_alignment(seq, other, "self-similarity")
    assert found.score < found.null_score + 0.15


def test_structure_alone_finds_the_offset_across_dims(seq):
    weights = np.random.default_rng(4).standard_normal((24, 40))
    theirs = np.maximum(seq @ weights / 5, 0)[2:]
    found = align.find_alignment(seq, theirs, "self-similarity")
    assert (found.offset, found.ratio) == (2.0, 1.0)
    assert found.score > found.null_score + 0.15
    assert align.selfsim_match(seq, theirs, found).overall > 0.5


def test_too_few_rows_are_not_searched():
    found = align.find_alignment(np.ones((3, 4)), np.ones((3, 4)))
    assert found.mode == "none" and (found.offset, found.ratio) == (0.0, 1.0)
    with pytest.raises(ValueError, match="equal dims"):
        align.find_alignment(np.ones((9, 4)), np.ones((9, 5)))


def test_scaling_checks_name_the_transform(seq):
    fits = check_scaling(seq, seq / np.linalg.norm(seq, axis=1, keepdims=True))
    assert fits is not None and fits.fit("L2 per row").rel_l2 < 1e-9 and fits.fit("as is").rel_l2 > 0.5
    z = (seq - seq.mean(axis=0)) / seq.std(axis=0)
    fits = check_scaling(seq, z)
    assert fits is not None and fits.fit("z per dim (this video)").rel_l2 < 1e-9
    fits = check_scaling(seq, seq * 3.5)
    assert (
        fits is not None
        and fits.fit("constant scale").rel_l2 < 1e-9
        and fits.norm_ratio == pytest.approx(3.5)
    )
    fits = check_scaling(seq, (seq - 1.0) * 0.3)
    assert fits is not None and fits.affine is not None and fits.affine.rel_l2 < 1e-9
    assert np.allclose(fits.slopes, 0.3)

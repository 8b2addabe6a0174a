"""The temporal alignment of two feature sequences, found from the data (pure, numpy only).

An alignment says where the other ("theirs") sequence's rows sit on our row grid: theirs row j is at our
position `offset + ratio * j` (our rows; fractional positions lie between two of our rows). `ratio` is
their row spacing in our rows: 2 = their stride is twice ours (every other row), 1/2 = half, 6/5 = their
rows 1.2 of ours apart (25 fps against 30 with the same stride in frames).

Pairing: a pair of rows is always taken on the sparser grid (whole rows there); the denser sequence is
read at the matching position by LINEAR INTERPOLATION between its two nearest rows (exactly a row when
the position is whole).

Search: every ratio of RATIOS plus the ratio of the row counts, and for each every offset of whole rows
of the denser sequence up to MAX_LAG (a quarter of its rows at most). The simplest alignment (offset 0,
ratio 1) is kept unless another scores MARGIN higher. Scores:
- "direct" (equal dims): the mean cosine of the paired rows (leaving out NaN/Inf and all-zero rows,
  which would pull the alignment) after standardising each sequence per dimension (z-score over its
  rows: a per-dimension normalisation of one side does not hide the alignment, and all-positive
  features still tell rows apart) and a fixed random projection to PROJECT_DIM dims (speed only). The
  best candidate is then refined locally, each side standardised by the statistics of its paired rows
  (equal rows stay exactly equal when the sides cover different rows): quarter-row offsets, then ratios
  0.1 % to 1 % off (the row counts give an inexact ratio; 29.97 against 30 fps is 0.1 % off). A
  refinement step must gain REFINE_MARGIN without pairing fewer rows.
- "self-similarity" (dims differ, or no alignment makes the rows alike): the correlation of the two
  sequences' self-similarity matrices (cosine of standardised rows) over the paired rows, positions
  rounded to the nearest row, each matrix with its mean per lag removed (else any two smooth sequences
  correlate). Structure alone matches too easily: only the ratios within 15 % of the row counts' ratio
  (and 1) are searched, and the search is run again against their rows reversed in time and / or rolled
  by a third or a half (the same structure, in no alignment with ours): `null_score`, the best of those,
  is what chance reaches (two unrelated 60-row sequences reach 0.6-0.8); the caller compares with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATIOS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 4 / 5, 5 / 6, 1.0, 6 / 5, 5 / 4, 3 / 2, 2.0, 3.0, 4.0)
MAX_LAG = 32  # offsets searched, in rows of the denser sequence
MIN_ROWS = 4  # fewer rows on either side: no search, offset 0 and ratio 1
MIN_OVERLAP = 0.6  # a candidate must pair this share of the rows it could pair at offset 0
SEARCH_PAIRS = 512  # rows paired per candidate during the search (evenly picked)
SELFSIM_WINDOW = 384  # self-similarity search: the first rows of each side
SELFSIM_ROWS = 128  # rows per self-similarity candidate
METRIC_ROWS = 512  # rows of the self-similarity matrices compared at the final alignment
PROJECT_DIM = 256
STANDARDISE_MIN_ROWS = 8  # fewer finite rows: the search uses the raw values
MARGIN = 0.01  # how much better than offset 0 / ratio 1 another alignment must score
REFINE_MARGIN = 0.002  # how much a fractional offset or a finer ratio must improve the score
RATIO_STEPS = (-0.01, -0.003, -0.001, 0.001, 0.003, 0.01)  # relative ratio changes tried when refining
RATIO_ROUNDS = 4
RATIO_MERGE = 0.02  # the row-count ratio joins RATIOS unless within 2 % of one of them
SELFSIM_RATIO_SPAN = 1.15  # self-similarity search: ratios within 15 % of the row counts' ratio (and 1)
NULLS = (
    "reversed",
    "rolled 1/3",
    "rolled 1/2",
    "reversed rolled 1/2",
)  # chance, for the self-similarity search


@dataclass(frozen=True)
class Alignment:
    """Where theirs row j sits on our rows: at offset + ratio * j."""

    offset: float
    ratio: float
    mode: str  # "direct" | "self-similarity" | "none" (too few rows to search)
    score: float  # the search score here (direct: after refining, on paired-row statistics; nan: none)
    default_score: float  # the score at offset 0, ratio 1
    candidates: int  # alignments tried
    null_score: float = float("nan")  # self-similarity: the best score against theirs reversed / rolled


@dataclass(frozen=True)
class Pairs:
    """Rows paired by an alignment: positions on each side (whole on the sparser side)."""

    ours: np.ndarray  # float positions in our rows
    theirs: np.ndarray  # float positions in their rows

    def __len__(self) -> int:
        return len(self.ours)


@dataclass(frozen=True)
class RowMatch:
    """Per paired row: cosine similarity and relative L2 distance ||ours - theirs|| / ||theirs||."""

    pairs: Pairs
    cosine: np.ndarray
    rel_l2: np.ndarray
    valid: np.ndarray  # bool: neither side has NaN/Inf


@dataclass(frozen=True)
class SelfSimMatch:
    """Per paired row (a subset of at most METRIC_ROWS): correlation of the two self-similarity rows."""

    pairs: Pairs
    correlation: np.ndarray
    overall: float  # correlation of the whole matrices (off-diagonal, lag means removed)


# --- pairing ------------------------------------------------------------------------------------


def pair_rows(n_ours: int, n_theirs: int, offset: float, ratio: float) -> Pairs:
    """The rows an alignment pairs, taken on the sparser grid (ratio >= 1: theirs, else ours)."""
    eps = 1e-9
    if n_ours <= 0 or n_theirs <= 0:
        empty = np.zeros(0)
        return Pairs(empty, empty)
    if ratio >= 1:
        theirs = np.arange(n_theirs, dtype=np.float64)
        ours = offset + ratio * theirs
        keep = (ours >= -eps) & (ours <= n_ours - 1 + eps)
        return Pairs(np.clip(ours[keep], 0, n_ours - 1), theirs[keep])
    ours = np.arange(n_ours, dtype=np.float64)
    theirs = (ours - offset) / ratio
    keep = (theirs >= -eps) & (theirs <= n_theirs - 1 + eps)
    return Pairs(ours[keep], np.clip(theirs[keep], 0, n_theirs - 1))


def interpolate(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of x at fractional positions, linearly between the two nearest rows (exact at whole ones)."""
    positions = np.asarray(positions, dtype=np.float64)
    low = np.floor(positions + 1e-9).astype(np.int64).clip(0, len(x) - 1)
    weight = (positions - low).clip(0, 1)
    out = x[low].astype(np.float64, copy=True)
    frac = weight > 1e-9
    if frac.any():
        high = np.minimum(low[frac] + 1, len(x) - 1)
        w = weight[frac, None]
        out[frac] = x[low[frac]] * (1 - w) + x[high] * w
    return out


def _evenly(count: int, most: int) -> np.ndarray:
    """Indices of at most `most` of `count` items, evenly spread (all when count <= most)."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(np.int64))


# --- preparation --------------------------------------------------------------------------------


def finite_rows(x: np.ndarray) -> np.ndarray:
    """Bool per row: every value finite."""
    return np.isfinite(x).all(axis=1)


Stats = tuple[np.ndarray, np.ndarray]  # per-dimension mean and std


def standardise(x: np.ndarray, stats: Stats | None = None) -> np.ndarray:
    """Per-dimension z-score, by `stats` or over x's own finite rows (raw values below
    STANDARDISE_MIN_ROWS rows); rows with NaN/Inf become zero rows."""
    x = np.asarray(x, dtype=np.float64)
    ok = finite_rows(x)
    out = np.where(ok[:, None], x, 0.0)
    if stats is None and ok.sum() >= STANDARDISE_MIN_ROWS:
        stats = out[ok].mean(axis=0), out[ok].std(axis=0)
    if stats is not None:
        mean, std = stats
        out = np.where(ok[:, None], (out - mean) / np.where(std > 1e-12, std, 1.0), 0.0)
    return out


def _stats(x: np.ndarray) -> Stats | None:
    ok = finite_rows(x) & np.any(x != 0, axis=1)
    if ok.sum() < STANDARDISE_MIN_ROWS:
        return None
    return x[ok].mean(axis=0), x[ok].std(axis=0)


def _projection(dim: int) -> np.ndarray | None:
    """A fixed Gaussian projection to PROJECT_DIM dims (None when the features are small already)."""
    if dim <= PROJECT_DIM:
        return None
    rng = np.random.default_rng(dim)
    return rng.standard_normal((dim, PROJECT_DIM)) / np.sqrt(PROJECT_DIM)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)


def _prepared(x: np.ndarray, projection: np.ndarray | None, stats: Stats | None = None) -> np.ndarray:
    z = standardise(x, stats)
    return z @ projection if projection is not None else z


# --- candidates ---------------------------------------------------------------------------------


def candidate_ratios(n_ours: int, n_theirs: int) -> list[float]:
    """RATIOS plus the ratio of the row counts (ours / theirs) when it is none of them."""
    ratios = list(RATIOS)
    if n_ours > 0 and n_theirs > 0:
        counted = n_ours / n_theirs
        if 1 / 8 <= counted <= 8 and all(abs(counted / r - 1) > RATIO_MERGE for r in ratios):
            ratios.append(counted)
    return ratios


def _candidates(n_ours: int, n_theirs: int, mode: str = "direct") -> list[tuple[float, float, int]]:
    """(offset, ratio, fewest pairs accepted) for every searched alignment, simplest first; the
    self-similarity search keeps only the ratios near the row counts' (SELFSIM_RATIO_SPAN)."""
    out = []
    dense = max(n_ours, n_theirs)
    lag = max(1, min(MAX_LAG, dense // 4))
    ratios = candidate_ratios(n_ours, n_theirs)
    if mode != "direct":
        counted = n_ours / n_theirs
        near = [r for r in ratios if abs(np.log(r / counted)) <= np.log(SELFSIM_RATIO_SPAN)]
        ratios = near or [1.0]
        if 1.0 not in ratios:
            ratios.append(1.0)  # the default stays the first candidate
    for ratio in sorted(ratios, key=lambda r: abs(np.log(r))):
        step = min(1.0, ratio)
        possible = len(pair_rows(n_ours, n_theirs, 0.0, ratio))
        fewest = max(3, int(np.ceil(MIN_OVERLAP * possible)))
        for k in sorted(range(-lag, lag + 1), key=abs):
            out.append((k * step, ratio, fewest))
    return out


# --- scores -------------------------------------------------------------------------------------


def _usable(x: np.ndarray) -> np.ndarray:
    """(rows, 1): 1.0 for rows with finite values not all zero, else 0.0 (NaN rows, zero padding)."""
    x = np.asarray(x)
    return (finite_rows(x) & np.any(x != 0, axis=1)).astype(np.float64)[:, None]


class _DirectScorer:
    """Mean cosine of standardised, projected rows paired by an alignment."""

    def __init__(
        self, ours: np.ndarray, theirs: np.ndarray, stats: tuple[Stats | None, Stats | None] = (None, None)
    ) -> None:
        self.last_count = 0  # usable pairs of the last call
        projection = _projection(ours.shape[1])
        self.ours = _prepared(ours, projection, stats[0])
        self.theirs = _prepared(theirs, projection, stats[1])
        self.ours_good = _usable(ours)  # (rows, 1) 1.0 / 0.0, interpolated like the rows
        self.theirs_good = _usable(theirs)

    def __call__(self, offset: float, ratio: float, fewest: int, per: int | None = None) -> float:
        """Mean cosine of the usable pairs; with `per`, their sum over at least `per` pairs (refining:
        an alignment must not gain by pairing fewer rows, e.g. by losing a badly matching end row)."""
        pairs = pair_rows(len(self.ours), len(self.theirs), offset, ratio)
        if len(pairs) < fewest:
            return -np.inf
        pick = _evenly(len(pairs), SEARCH_PAIRS)
        a = _unit(interpolate(self.ours, pairs.ours[pick]))
        b = _unit(interpolate(self.theirs, pairs.theirs[pick]))
        good = interpolate(self.ours_good, pairs.ours[pick])[:, 0] > 1 - 1e-9
        good &= interpolate(self.theirs_good, pairs.theirs[pick])[:, 0] > 1 - 1e-9
        if good.sum() < min(fewest, len(good)) / 2:
            return -np.inf
        cosines = np.einsum("ij,ij->i", a, b)[good]
        self.last_count = int(good.sum())
        return float(cosines.sum() / max(len(cosines), per or 0))


def _lag_detrended(s: np.ndarray) -> np.ndarray:
    """A square matrix minus the mean of each of its diagonals (the part not explained by the lag)."""
    size = len(s)
    idx = np.arange(size)
    lag = np.abs(idx[:, None] - idx[None, :])
    means = np.bincount(lag.ravel(), weights=s.ravel(), minlength=size) / np.bincount(
        lag.ravel(), minlength=size
    )
    return s - means[lag]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def _off_diagonal(size: int) -> np.ndarray:
    return ~np.eye(size, dtype=bool)


def self_similarity(x: np.ndarray) -> np.ndarray:
    """Cosine self-similarity of the standardised rows (projected when wide)."""
    unit = _unit(_prepared(x, _projection(x.shape[1])))
    return unit @ unit.T


class _SelfSimScorer:
    """Correlation of the two lag-detrended self-similarity matrices over the paired rows."""

    def __init__(self, ours: np.ndarray, theirs: np.ndarray, null: str = "") -> None:
        self.n_ours, self.n_theirs = len(ours), len(theirs)
        self.ours = self_similarity(ours[:SELFSIM_WINDOW])
        self.theirs = self_similarity(theirs[:SELFSIM_WINDOW])
        if null.startswith("reversed"):  # the same structure, in no alignment with ours
            self.theirs = self.theirs[::-1, ::-1]
        if "rolled" in null:
            shift = len(self.theirs) // (3 if null.endswith("1/3") else 2)
            self.theirs = np.roll(self.theirs, (shift, shift), axis=(0, 1))

    def __call__(self, offset: float, ratio: float, fewest: int) -> float:
        pairs = pair_rows(self.n_ours, self.n_theirs, offset, ratio)
        if len(pairs) < fewest:
            return -np.inf
        ours_rows = np.rint(pairs.ours).astype(np.int64)
        theirs_rows = np.rint(pairs.theirs).astype(np.int64)
        inside = (ours_rows < len(self.ours)) & (theirs_rows < len(self.theirs))
        ours_rows, theirs_rows = ours_rows[inside], theirs_rows[inside]
        if len(ours_rows) < 3:
            return -np.inf
        pick = _evenly(len(ours_rows), SELFSIM_ROWS)
        a = _lag_detrended(self.ours[np.ix_(ours_rows[pick], ours_rows[pick])])
        b = _lag_detrended(self.theirs[np.ix_(theirs_rows[pick], theirs_rows[pick])])
        mask = _off_diagonal(len(pick))
        return _correlation(a[mask], b[mask])


def _refine(
    scorer: _DirectScorer,
    offset: float,
    ratio: float,
    fewest: int,
    score: float,
    tried: int,
) -> tuple[float, float, float, int]:
    """Local search around the best candidate: quarter-row offsets, then ratios a little off (row counts
    give an inexact ratio; 29.97 against 30 fps is 0.1 % off); a step is taken when it gains
    REFINE_MARGIN."""
    scorer(offset, ratio, fewest)
    per = scorer.last_count
    step, whole, best = min(1.0, ratio), offset, score
    for shift in (-0.5, -0.25, 0.25, 0.5):
        tried += 1
        refined = scorer(whole + shift * step, ratio, fewest, per)
        if refined > best + REFINE_MARGIN:
            offset, best = whole + shift * step, refined
    score = best
    for _ in range(RATIO_ROUNDS):
        moved = False
        for factor in RATIO_STEPS:
            for shift in (0.0, -0.5, 0.5):
                tried += 1
                candidate = (offset + shift * step, ratio * (1 + factor))
                refined = scorer(*candidate, fewest, per)
                if refined > score + REFINE_MARGIN:
                    (offset, ratio), score, moved = candidate, refined, True
        if not moved:
            break
    return offset, ratio, score, tried


def find_alignment(ours: np.ndarray, theirs: np.ndarray, mode: str = "direct") -> Alignment:
    """The alignment of two (rows, dim) sequences scoring best ("direct" needs equal dims)."""
    n, m = len(ours), len(theirs)
    if n < MIN_ROWS or m < MIN_ROWS:
        return Alignment(0.0, 1.0, "none", float("nan"), float("nan"), 0)
    if mode == "direct" and ours.shape[1] != theirs.shape[1]:
        raise ValueError(f"direct alignment needs equal dims, got {ours.shape[1]} and {theirs.shape[1]}")
    scorer = _DirectScorer(ours, theirs) if mode == "direct" else _SelfSimScorer(ours, theirs)
    candidates = _candidates(n, m, mode)
    scores = [scorer(o, r, fewest) for o, r, fewest in candidates]
    default = scores[0]  # offset 0, ratio 1 comes first
    best = int(np.argmax(scores))
    offset, ratio, fewest = candidates[best]
    score = scores[best]
    if best != 0 and score < default + MARGIN:
        offset, ratio, fewest, score = 0.0, 1.0, candidates[0][2], default
    tried = len(candidates)
    if isinstance(scorer, _DirectScorer) and np.isfinite(score):  # self-similarity reads nearest rows
        pairs = pair_rows(n, m, offset, ratio)
        stats = _stats(interpolate(ours, pairs.ours)), _stats(interpolate(theirs, pairs.theirs))
        local = _DirectScorer(ours, theirs, stats)
        offset, ratio, score, tried = _refine(
            local, offset, ratio, fewest, local(offset, ratio, fewest), tried
        )
    if not np.isfinite(score):  # no candidate paired enough rows
        return Alignment(0.0, 1.0, "none", float("nan"), float("nan"), tried)
    null = float("nan")
    if mode != "direct":
        nulls = [_SelfSimScorer(ours, theirs, kind) for kind in NULLS]
        null = max(max(scorer(o, r, fewest) for o, r, fewest in candidates) for scorer in nulls)
        tried += len(NULLS) * len(candidates)
    return Alignment(float(offset), float(ratio), mode, float(score), float(default), tried, null)


# --- metrics at an alignment --------------------------------------------------------------------


def row_match(ours: np.ndarray, theirs: np.ndarray, alignment: Alignment) -> RowMatch:
    """Cosine and relative L2 of every paired row, on the raw values (ours interpolated when between rows)."""
    pairs = pair_rows(len(ours), len(theirs), alignment.offset, alignment.ratio)
    a = interpolate(np.asarray(ours, dtype=np.float64), pairs.ours)
    b = interpolate(np.asarray(theirs, dtype=np.float64), pairs.theirs)
    valid = finite_rows(a) & finite_rows(b)
    a = np.where(valid[:, None], a, 0.0)
    b = np.where(valid[:, None], b, 0.0)
    norm_a = np.linalg.norm(a, axis=1)
    norm_b = np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both_zero = (norm_a == 0) & (norm_b == 0)
    cosine = np.where(
        both_zero, 1.0, np.divide(dot, norm_a * norm_b, out=np.zeros_like(dot), where=norm_a * norm_b > 0)
    )
    distance = np.linalg.norm(a - b, axis=1)
    rel = np.divide(distance, norm_b, out=np.where(distance > 0, np.inf, 0.0), where=norm_b > 0)
    return RowMatch(pairs, np.clip(cosine, -1, 1), rel, valid)


def paired_values(ours: np.ndarray, theirs: np.ndarray, match: RowMatch) -> tuple[np.ndarray, np.ndarray]:
    """The valid paired rows (ours interpolated, theirs), float64, for further checks."""
    keep = match.valid
    a = interpolate(np.asarray(ours, dtype=np.float64), match.pairs.ours[keep])
    b = interpolate(np.asarray(theirs, dtype=np.float64), match.pairs.theirs[keep])
    return a, b


def selfsim_match(ours: np.ndarray, theirs: np.ndarray, alignment: Alignment) -> SelfSimMatch:
    """Per paired row (at most METRIC_ROWS, evenly picked), the correlation of its two self-similarity
    rows (lag means removed, the row's own entry left out); nearest rows at fractional positions."""
    pairs = pair_rows(len(ours), len(theirs), alignment.offset, alignment.ratio)
    pick = _evenly(len(pairs), METRIC_ROWS)
    pairs = Pairs(pairs.ours[pick], pairs.theirs[pick])
    if len(pairs) < 3:
        return SelfSimMatch(pairs, np.zeros(len(pairs)), float("nan"))
    ours_rows = np.rint(pairs.ours).astype(np.int64)
    theirs_rows = np.rint(pairs.theirs).astype(np.int64)
    a = _lag_detrended(self_similarity(np.asarray(ours)[ours_rows]))
    b = _lag_detrended(self_similarity(np.asarray(theirs)[theirs_rows]))
    mask = _off_diagonal(len(pairs))
    per_row = np.array([_correlation(a[i][mask[i]], b[i][mask[i]]) for i in range(len(pairs))])
    return SelfSimMatch(pairs, per_row, _correlation(a[mask], b[mask]))

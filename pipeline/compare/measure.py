"""Every number about one video pair: both sides' shapes and bad rows, the views compared, the alignment,
per-row cosine / relative L2 / self-similarity at it, the rows left over at either end, the scaling checks.

Views: when the arrays differ in shape, the comparable parts are tried and the best kept, e.g. our crop
mean or one crop against 2-D release rows, the first or last `dim` columns of a wider release (a
two-stream concatenation such as RGB + flow). With equal dims the alignment is searched on the rows
themselves ("direct"); when no view has equal dims or no direct alignment makes the rows alike
(DIRECT_RELATED), it is searched on the self-similarity matrices instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.compare import align
from pipeline.compare.released import orient
from pipeline.compare.scaling import ScalingCheck, check_scaling

DIRECT_RELATED = 0.5  # direct search score (cosine of standardised rows) below which rows are unalike
# A self-similarity match counts when its score is at least RELATED_SELFSIM and NULL_MARGIN above what the
# same search reaches against their rows reversed / rolled (chance). Measured on synthetic scene-like
# sequences through a random ReLU layer: the same video scores 0.93-0.97 at 60 rows (chance 0.7-0.9),
# 0.83-0.95 at 100 (chance 0.4-0.65), ~0.6 at 600 (chance ~0.2); unrelated ones stay within 0.1 of
# chance. Below ~100 rows a related video is often not told apart from chance: reported as unrelated.
RELATED_SELFSIM = 0.3
NULL_MARGIN = 0.15
MAX_CROP_VIEWS = 10
VIEW_TIE = 1e-6  # views are alternatives of equal standing: the best search score wins, ties the plainer
LOW_COSINE = 0.99  # a paired row below this cosine "differs"
WORST_ROWS = 3


@dataclass(frozen=True)
class Side:
    """Shape and bad rows of one side's array (as read, before any view)."""

    rows: int
    shape: tuple[int, ...]
    dtype: str
    nan_rows: int  # rows with a NaN or Inf
    zero_rows: int  # rows whose values are all zero


@dataclass(frozen=True)
class RowStat:
    """A per-row measure summarised: median, 5th percentile, the extreme and the worst rows."""

    median: float
    p5: float  # 5th percentile (95th for relative L2, where high is bad)
    extreme: float  # min (max for relative L2)
    worst: tuple[tuple[float, float, float], ...]  # (our position, their position, value), worst first


@dataclass(frozen=True)
class View:
    """Comparable 2-D forms of the two arrays."""

    name: str  # "" for the arrays as they are
    ours: np.ndarray
    theirs: np.ndarray


@dataclass
class VideoResult:
    """All the measures of one video; `diagnose` turns them into findings."""

    id: str
    ours: Side
    theirs: Side
    source: str
    orientation: str
    view: str
    view_scores: dict[str, float]
    alignment: align.Alignment
    pairs: int = 0
    cosine: RowStat | None = None
    rel_l2: RowStat | None = None
    selfsim: RowStat | None = None
    selfsim_overall: float = float("nan")
    first_cosine: float | None = None
    last_cosine: float | None = None
    interior_cosine: float | None = None  # median cosine without the first and last paired rows
    low_rows: tuple[float, ...] = ()  # our positions of the paired rows with cosine < LOW_COSINE (at most 20)
    low_count: int = 0  # how many there are
    low_at_ends_only: bool = False  # all of them are the first or the last paired row
    lead: tuple[int, int] = (0, 0)  # unpaired rows before the first pair: (ours, theirs)
    trail: tuple[int, int] = (0, 0)  # unpaired rows after the last pair: (ours, theirs)
    ours_step_s: float | None = None  # seconds between our rows (from the timestamps)
    scaling: ScalingCheck | None = None
    related: bool = False  # an alignment makes either the rows or their structure alike
    notes: list[str] = field(default_factory=list)

    @property
    def dims_equal(self) -> bool:
        return self.cosine is not None


def side(array: np.ndarray) -> Side:
    flat = np.asarray(array).reshape(len(array), -1)
    finite = np.isfinite(flat).all(axis=1) if flat.dtype.kind == "f" else np.ones(len(flat), dtype=bool)
    return Side(
        rows=int(array.shape[0]),
        shape=tuple(int(s) for s in array.shape),
        dtype=str(array.dtype),
        nan_rows=int((~finite).sum()),
        zero_rows=int((~flat.any(axis=1)).sum()) if flat.shape[1] else int(len(flat)),
    )


def _forms(x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """2-D forms of one side: itself, or for (rows, crops, dim) the crop mean then each crop."""
    if x.ndim == 2:
        return [("", x)]
    forms = [("crop mean", x.mean(axis=1))]
    if x.shape[1] <= MAX_CROP_VIEWS:
        forms += [(f"crop {k}", x[:, k]) for k in range(x.shape[1])]
    return forms


def _label(ours: str, theirs: str) -> str:
    return "; ".join(p for p in (f"ours {ours}" if ours else "", f"theirs {theirs}" if theirs else "") if p)


def views(ours: np.ndarray, theirs: np.ndarray) -> list[View]:
    """The comparable forms, the plainest first (crops flattened when both sides have the same crops)."""
    if ours.ndim == 3 and theirs.ndim == 3 and ours.shape[1:] == theirs.shape[1:]:
        return [View("", ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1))]
    out = []
    for ours_name, a in _forms(ours):
        for theirs_name, b in _forms(theirs):
            da, db = a.shape[1], b.shape[1]
            if da == db:
                out.append(View(_label(ours_name, theirs_name), a, b))
            elif db > da:
                for start in dict.fromkeys((0, db - da)):
                    cols = f"columns {start}:{start + da} of {db}"
                    out.append(
                        View(_label(ours_name, f"{theirs_name} {cols}".strip()), a, b[:, start : start + da])
                    )
            else:
                for start in dict.fromkeys((0, da - db)):
                    cols = f"columns {start}:{start + db} of {da}"
                    out.append(
                        View(_label(f"{ours_name} {cols}".strip(), theirs_name), a[:, start : start + db], b)
                    )
    return out


def primary(ours: np.ndarray, theirs: np.ndarray) -> View:
    """Both sides as 2-D arrays of their full width (crop means), for the self-similarity comparison."""
    if ours.ndim == 3 and theirs.ndim == 3 and ours.shape[1:] == theirs.shape[1:]:
        return views(ours, theirs)[0]
    return View("", _forms(ours)[0][1], _forms(theirs)[0][1])


def row_stat(values: np.ndarray, pairs: align.Pairs, high_is_bad: bool = False) -> RowStat | None:
    """Summary of a per-row measure over the paired rows (NaN values left out)."""
    ok = np.isfinite(values) if not high_is_bad else ~np.isnan(values)
    if not ok.any():
        return None
    kept, ours_pos, theirs_pos = values[ok], pairs.ours[ok], pairs.theirs[ok]
    order = np.argsort(-kept if high_is_bad else kept, kind="stable")[:WORST_ROWS]
    worst = tuple((float(ours_pos[i]), float(theirs_pos[i]), float(kept[i])) for i in order)
    finite = kept[np.isfinite(kept)] if np.isfinite(kept).any() else kept
    return RowStat(
        median=float(np.median(kept)),
        p5=float(np.percentile(finite, 95 if high_is_bad else 5)),
        extreme=float(kept.max() if high_is_bad else kept.min()),
        worst=worst,
    )


def _step_seconds(timestamps: np.ndarray | None) -> float | None:
    if timestamps is None or len(timestamps) < 2:
        return None
    step = float(np.median(np.diff(np.asarray(timestamps)[:, 2])))
    return step if step > 0 else None


def compare_video(
    vid: str,
    ours: np.ndarray,
    theirs: np.ndarray,
    *,
    timestamps: np.ndarray | None = None,
    source: str = "",
) -> VideoResult:
    """Measure one video pair (theirs as read; oriented here against our rows and dim)."""
    theirs, orientation = orient(theirs, len(ours), int(ours.shape[-1]))
    result = VideoResult(
        id=vid,
        ours=side(ours),
        theirs=side(theirs),
        source=source,
        orientation=orientation,
        view="",
        view_scores={},
        alignment=align.Alignment(0.0, 1.0, "none", math.nan, math.nan, 0),
        ours_step_s=_step_seconds(timestamps),
    )
    chosen: View | None = None
    best = -math.inf
    for view in views(ours, theirs):
        found = align.find_alignment(view.ours, view.theirs, "direct")
        score = found.score if np.isfinite(found.score) else -1.0
        result.view_scores[view.name or "as is"] = round(float(score), 4)
        if chosen is None or score > best + VIEW_TIE:
            chosen, best, result.alignment, result.view = view, score, found, view.name
    whole = primary(ours, theirs)
    if chosen is None or (result.alignment.mode == "direct" and best < DIRECT_RELATED):
        searched = align.find_alignment(whole.ours, whole.theirs, "self-similarity")
        if searched.mode != "none":
            result.alignment = searched
        if chosen is None or whole.ours.shape[1] != whole.theirs.shape[1]:
            chosen, result.view = None, ""
        else:
            chosen, result.view = whole, whole.name
    if result.alignment.mode == "none":
        result.notes.append(
            f"too few rows to search an alignment (fewer than {align.MIN_ROWS}): rows paired as they are"
        )
    al = result.alignment
    pairs = align.pair_rows(len(whole.ours), len(whole.theirs), al.offset, al.ratio)
    result.pairs = len(pairs)
    if len(pairs):
        result.lead = (int(math.floor(pairs.ours.min() + 1e-6)), int(math.floor(pairs.theirs.min() + 1e-6)))
        result.trail = (
            int(math.floor(len(whole.ours) - 1 - pairs.ours.max() + 1e-6)),
            int(math.floor(len(whole.theirs) - 1 - pairs.theirs.max() + 1e-6)),
        )
    if chosen is not None:
        match = align.row_match(chosen.ours, chosen.theirs, al)
        valid = match.valid
        result.cosine = row_stat(np.where(valid, match.cosine, np.nan), match.pairs)
        result.rel_l2 = row_stat(np.where(valid, match.rel_l2, np.nan), match.pairs, high_is_bad=True)
        if valid.any():
            cos = match.cosine[valid]
            result.first_cosine, result.last_cosine = float(cos[0]), float(cos[-1])
            if len(cos) >= 3:
                result.interior_cosine = float(np.median(cos[1:-1]))
            low = np.flatnonzero(cos < LOW_COSINE)
            result.low_count = len(low)
            result.low_rows = tuple(float(p) for p in match.pairs.ours[valid][low][:20])
            result.low_at_ends_only = bool(len(low)) and set(low.tolist()) <= {0, len(cos) - 1}
            a, b = align.paired_values(chosen.ours, chosen.theirs, match)
            result.scaling = check_scaling(a, b)
    sim = align.selfsim_match(whole.ours, whole.theirs, al)
    result.selfsim = row_stat(sim.correlation, sim.pairs)
    result.selfsim_overall = sim.overall
    result.related = _related(result)
    return result


def _related(r: VideoResult) -> bool:
    """Whether the alignment found means something: a direct match, or a self-similarity match that
    beats both a fixed level and what the same search reaches by chance."""
    al = r.alignment
    if al.mode == "direct":
        return al.score >= DIRECT_RELATED
    if al.mode == "self-similarity":
        if al.score >= RELATED_SELFSIM and al.score >= al.null_score + NULL_MARGIN:
            return True
        r.notes.append(
            f"self-similarity search: best {al.score:.2f}, {al.null_score:.2f} against their rows reversed "
            f"or rolled (chance); related needs >= {RELATED_SELFSIM} and {NULL_MARGIN} above chance"
        )
        return False
    return r.cosine is not None and r.cosine.median >= DIRECT_RELATED  # too few rows to search

"""From the measures to a diagnosis: what differs, and which of our settings to change (pure).

Per video, the values first (at the alignment found):
- equal: median cosine >= EQUAL_COSINE, median relative L2 <= EQUAL_REL_L2 and no paired row below
  measure.LOW_COSINE except the first or last (bf16 / TF32 / float16 rounding stays far inside these:
  relative L2 ~1e-3; a changed input frame or preprocessing does not);
- explained by a normalisation of ours (scaling.py), checked in this order: L2 per row, z per dimension
  over the video, one constant scale, an affine map per dimension (statistics shared by all videos when
  the slopes agree across videos within SLOPE_AGREEMENT), then "same direction, other norm" (cosine >=
  EQUAL_COSINE alone: rows rescaled each by its own factor);
- close (median cosine >= CLOSE_COSINE): same model and grid, other preprocessing;
- related (the direct search matched standardised rows: other preprocessing or checkpoint), another
  model (the self-similarity search matched: measure.RELATED_SELFSIM and measure.NULL_MARGIN above
  what the same search reaches against their rows reversed or rolled), or unrelated (nothing matched:
  another model, other videos, broken features; alignments are then not reported).
Then the grid: a ratio other than 1 (stride or fps), a constant offset (window kind, padding at the
start), rows more or less at the end (padding rule), only an end row differing (padding content).
Category per video, most severe first: `different values` (unrelated, or values not equal on the same
grid, or equal only in part: a crop, some columns), `different grid` (ratio != 1), `same up to an offset` (equal values, rows shifted / added /
dropped / an end row padded differently), `same`. The verdict is the category of most videos (ties: the
more severe).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.compare.measure import LOW_COSINE, VideoResult

EQUAL_COSINE = 0.999
EQUAL_REL_L2 = 0.03
CLOSE_COSINE = 0.95
SLOPE_AGREEMENT = 0.05  # median relative difference of the per-dimension slopes between videos

VERDICTS = ("same", "same up to an offset", "different grid", "different values")  # least severe first


@dataclass(frozen=True)
class Finding:
    """One thing that differs (or is worth knowing), with the settings that would change it."""

    key: str  # groups the same finding over videos, e.g. "offset:+1", "grid:2", "l2-normalised"
    text: str
    change: str | None = None  # our settings to change, or what to do when no setting does it


@dataclass
class VideoDiagnosis:
    id: str
    category: str
    level: (
        str  # equal | l2-normalised | z-video | scale | affine | row-scale | rows-differ | close | related
        # | other-model | unrelated
    )
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Summary:
    """The diagnosis over all videos."""

    verdict: str
    counts: dict[str, int]
    videos: list[VideoDiagnosis]
    findings: list[tuple[Finding, int, list[str]]]  # (finding, how many videos, their ids), most first

    @property
    def line(self) -> str:
        total = sum(self.counts.values())
        others = [f"{n} {c}" for c in VERDICTS if (n := self.counts.get(c, 0)) and c != self.verdict]
        return (
            f"verdict: {self.verdict} ({self.counts.get(self.verdict, 0)} of {total} video"
            f"{'s' if total != 1 else ''}{'; ' + ', '.join(others) if others else ''})"
        )


def _number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.3g}"


def _rows(count: float) -> str:
    return f"{_number(abs(count))} row{'s' if abs(count) != 1 else ''}"


def _seconds(rows: float, step: float | None) -> str:
    return f", {abs(rows) * step:.3g} s" if step else ""


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    return settings.get(name)


# --- values -------------------------------------------------------------------------------------


def _chance(r: VideoResult) -> str:
    null = r.alignment.null_score
    return f"; chance reaches {null:.2f}" if np.isfinite(null) else ""


def _level(r: VideoResult) -> tuple[str, Finding | None]:
    """How the values compare, and the finding that says so (None when equal)."""
    selfsim = r.selfsim_overall if np.isfinite(r.selfsim_overall) else -1.0
    if r.cosine is None or r.rel_l2 is None:
        if r.related:
            return "other-model", Finding(
                f"other-model:{r.theirs.shape[-1]}",
                f"theirs have {r.theirs.shape[-1]} dims, ours {r.ours.shape[-1]}, and no part of theirs matches "
                f"ours; their self-similarity follows ours (correlation {selfsim:.2f}{_chance(r)}): the same "
                "videos through another model or layer",
                "model=<a model with their dims> or model.feature_layer",
            )
        return "unrelated", _unrelated(r, selfsim)
    cos, rel = r.cosine.median, r.rel_l2.median
    if cos >= EQUAL_COSINE and rel <= EQUAL_REL_L2 and (r.low_count == 0 or r.low_at_ends_only):
        return "equal", None
    check = r.scaling
    if check is not None and r.related and check.fit("as is").rel_l2 > EQUAL_REL_L2:  # the values differ
        named = (
            (
                "L2 per row",
                "l2-normalised",
                f"theirs are ours L2-normalised per row (each row has norm {check.theirs_norm:.3g})",
                "not an extraction setting: divide each of our rows by its L2 norm (or let the trainer normalise)",
            ),
            (
                "z per dim (this video)",
                "z-video",
                "theirs are ours z-normalised per dimension over each video (mean 0, std 1 per dim)",
                "not an extraction setting: z-normalise our features per dimension over each video",
            ),
            (
                "constant scale",
                "scale",
                f"theirs are ours times {check.norm_ratio:.4g}",
                f"not an extraction setting: multiply ours by {check.norm_ratio:.4g}",
            ),
        )
        for name, key, text, change in named:
            fit = check.fit(name) if any(f.name == name for f in check.fits) else None
            if fit is not None and fit.rel_l2 <= EQUAL_REL_L2 and fit.cosine >= EQUAL_COSINE:
                return key, Finding(
                    key, f"{text} (relative L2 {fit.rel_l2:.2g} after doing the same to ours)", change
                )
        if check.affine is not None and check.affine.rel_l2 <= EQUAL_REL_L2:
            return "affine", Finding(
                "affine",
                "theirs are an affine map of ours per dimension (relative L2 "
                f"{check.affine.rel_l2:.2g} after a per-dimension fit): normalised per dimension "
                "with statistics other than this video's",
                "not an extraction setting: normalise ours per dimension with the release's mean/std",
            )
        if cos >= EQUAL_COSINE:
            return "row-scale", Finding(
                "row-scale",
                f"same directions (cosine {cos:.4f}) but other norms: theirs/ours norm ratio "
                f"{check.norm_ratio:.3g} varying by {check.norm_ratio_spread:.0%} over the rows: rows "
                "rescaled each by its own factor",
                "not an extraction setting: the release rescales rows (compare cosines, or rescale ours)",
            )
    if cos >= EQUAL_COSINE and rel <= EQUAL_REL_L2:  # equal but for some rows inside the video
        return "rows-differ", Finding(
            "rows-differ",
            f"{r.low_count} paired row(s) differ (cosine < {LOW_COSINE}; our rows "
            f"{', '.join(_number(p) for p in r.low_rows[:6])}) while the rest match: frames decoded "
            "differently there (a damaged or variable-rate stretch of the video)",
            "check the video: decoding (data.fps, the decoder) around those rows",
        )
    if cos >= CLOSE_COSINE:
        return "close", Finding(
            "close",
            f"close but not equal (median cosine {cos:.4f}, relative L2 {rel:.3g}): same model and grid, "
            "other preprocessing or precision",
            "data.resize.mode / data.resize.backend / data.resize.short_side, model.mean / model.std / "
            "model.channel_order, data.fps (frame selection), hardware.precision",
        )
    if not r.related:
        return "unrelated", _unrelated(r, selfsim)
    if r.alignment.mode == "direct":
        return "related", Finding(
            "related",
            f"values differ (median cosine {cos:.3f}) but the rows follow ours once each dimension is "
            f"standardised (cosine {r.alignment.score:.2f}): other preprocessing, another checkpoint of "
            "the same model, or a normalisation not recognised",
            "model.checkpoint=..., data.resize.*, model.mean / model.std / model.channel_order",
        )
    return "other-model", Finding(
        "other-model-same-dim",
        f"values differ (median cosine {cos:.3f}) but their self-similarity follows ours (correlation "
        f"{selfsim:.2f}{_chance(r)}): the same videos through another model or checkpoint of the same "
        f"width ({r.ours.shape[-1]} dims)",
        "model=... / model.checkpoint=... / model.feature_layer",
    )


def _unrelated(r: VideoResult, selfsim: float) -> Finding:
    direct = f"median cosine {r.cosine.median:.3f}, " if r.cosine is not None else ""
    return Finding(
        "unrelated",
        f"unrelated: no alignment makes the rows or their self-similarity alike ({direct}self-similarity "
        f"correlation {selfsim:.2f}{_chance(r)}): another model, other videos under the same id, or broken "
        "features",
        "check the ids and the model (model=...)",
    )


# --- grid ---------------------------------------------------------------------------------------


def _grid(r: VideoResult, equal: bool, settings: Mapping[str, Any]) -> Finding:
    ratio, step = r.alignment.ratio, r.ours_step_s
    stride, fps = _setting(settings, "stride"), _setting(settings, "fps")
    if fps is None and step and stride:
        fps = float(stride) / step  # the rate our rows imply
    when = f" ({ratio * step:.3g} s against {step:.3g} s)" if step else ""
    options = []
    if stride:
        theirs = ratio * float(stride)
        if abs(theirs - round(theirs)) < 1e-6:
            options.append(f"data.stride={round(theirs)}")
    if fps and (not equal or not options):
        options.append(f"data.fps={_number(round(float(fps) / ratio, 3))}")
    if not options:
        options.append(f"data.stride = {_number(ratio)} x ours, or data.fps = ours / {_number(ratio)}")
    why = (
        "the same clips on another stride (values equal on the shared rows)"
        if equal
        else "another stride or frame rate (the clips themselves differ too)"
    )
    return Finding(
        f"grid:{_number(ratio)}",
        f"their rows are {_number(ratio)} of our rows apart{when}: {why}",
        " or ".join(options),
    )


def _offset(r: VideoResult, settings: Mapping[str, Any]) -> Finding:
    o, step = r.alignment.offset, r.ours_step_s
    window, pad = _setting(settings, "window"), _setting(settings, "pad")
    if abs(o - round(o)) > 1e-6:
        return Finding(
            f"offset:{o:+g}",
            f"their rows are centred {_number(abs(o))} of a row {'later' if o > 0 else 'earlier'} than ours"
            f"{_seconds(o, step)}: the window is placed or sized differently",
            "data.window (sliding | centered), data.num_frames / data.sampling_rate (the window span)",
        )
    k = int(round(o))
    if k > 0:
        text = f"theirs start {_rows(k)} later{_seconds(k, step)}: their row 0 is our row {k}"
        if window == "centered" and pad != "drop":
            change = "data.pad=drop (leave out the clips that need padding) or data.window=sliding"
        elif window == "sliding":
            change = (
                "no setting of ours skips clips at the start of a sliding window: their first clip starts "
                f"{_rows(k)} in (trimmed video, or a centred window with padded clips dropped)"
            )
        else:
            change = "data.window / data.pad"
    else:
        text = f"theirs start {_rows(k)} earlier{_seconds(k, step)}: their row {-k} is our row 0"
        if window == "sliding":
            change = "data.window=centered (clips centred on frames 0, stride, ...)"
        elif pad == "drop":
            change = "data.pad=zero or data.pad=edge (keep the first clips that need padding)"
        else:
            change = "data.window / data.pad"
    if r.ours.rows == r.theirs.rows:
        text += f" (as many rows as ours: the whole grid is shifted, {_rows(k)} unpaired at each end)"
    return Finding(f"offset:{k:+d}", text, change)


def _trailing(r: VideoResult, settings: Mapping[str, Any]) -> Finding | None:
    extra = r.trail[1] - r.trail[0]  # > 0: theirs have more rows after the last shared one
    if extra == 0:
        return None
    pad = _setting(settings, "pad")
    if extra < 0:
        change = "data.pad=shift (Ego4D: the last clip moved back to end on the last frame) or data.pad=drop"
        if pad == "drop":
            change = "their grid stops earlier than ours even with data.pad=drop: a shorter decoded video"
        return Finding(
            f"trailing:{extra:+d}",
            f"theirs have {_rows(extra)} fewer at the end: they leave out (or move back) the last clip(s) "
            "that would need padding",
            change,
        )
    change = "data.pad=zero or data.pad=edge (one row per stride up to the video's end)"
    if pad in ("zero", "edge"):
        change = "their grid runs further past the end than ours: more decoded frames (data.fps, decoding)"
    return Finding(
        f"trailing:{extra:+d}",
        f"theirs have {_rows(extra)} more at the end: their clips run past the video's end (padded)",
        change,
    )


def _edges(r: VideoResult) -> Finding | None:
    if not r.low_at_ends_only or r.first_cosine is None or r.last_cosine is None:
        return None
    ends = []
    if r.first_cosine < LOW_COSINE:
        ends.append(f"first (cosine {r.first_cosine:.3f})")
    if r.last_cosine < LOW_COSINE:
        ends.append(f"last (cosine {r.last_cosine:.3f})")
    where = "first" if len(ends) == 1 and ends[0].startswith("first") else "last" if len(ends) == 1 else "end"
    return Finding(
        f"edge:{where}",
        f"only the {' and '.join(ends)} paired row differs: the clip at the video's {where if where != 'end' else 'ends'} "
        "is padded or placed differently",
        "data.pad (zero: mean-colour frames | edge: repeated end frame | shift: last clip moved back)",
    )


def _view(r: VideoResult, settings: Mapping[str, Any]) -> Finding | None:
    view = r.view
    if not view:
        return None
    cos = f" (median cosine {r.cosine.median:.4f})" if r.cosine is not None else ""
    if view.startswith("theirs columns") or "; theirs columns" in view:
        cols = view.split("columns ", 1)[1]
        span, total = cols.split(" of ")
        start, end = (int(x) for x in span.split(":"))
        others = f"{end}:{total}" if start == 0 else f"0:{start}"
        return Finding(
            f"two-stream:{span}",
            f"theirs have {total} dims and their columns {span} are ours{cos}: a concatenation of streams "
            f"(e.g. RGB + flow, or two models); columns {others} are another stream",
            f"not a setting of ours: compare and train with their columns {span}, or concatenate the other "
            "stream's features to ours",
        )
    if view.startswith("ours columns"):
        span = view.split("columns ", 1)[1].split(" of ")[0]
        return Finding(
            f"ours-columns:{span}",
            f"our columns {span} are theirs{cos}: ours hold more than their stream",
            "model.feature_layer (a narrower layer) or compare with our columns " + span,
        )
    crops = _setting(settings, "crops")
    if "ours crop mean" in view:
        return Finding(
            "crop-mean",
            f"theirs are the mean of our {crops or 'several'} crops{cos}",
            "data.crop_reduce=mean",
        )
    if "ours crop " in view:
        k = view.split("ours crop ", 1)[1].split(";")[0]
        return Finding(f"crop:{k}", f"theirs are our crop {k} alone{cos}: one crop per row", "data.crops=1")
    if "theirs crop mean" in view:
        return Finding(
            "their-crop-mean",
            f"ours are the mean of their crops{cos}",
            "data.crop_reduce=stack (keep the crops)",
        )
    if "theirs crop " in view:
        return Finding(
            "their-crop",
            f"ours are one of their crops ({view}){cos}",
            "data.crops=3 with data.crop_reduce=stack",
        )
    return Finding(f"view:{view}", f"compared as {view}{cos}")


def _side_findings(r: VideoResult) -> list[Finding]:
    found = []
    for name, s in (("ours", r.ours), ("theirs", r.theirs)):
        if s.nan_rows:
            found.append(
                Finding(
                    f"nan:{name}", f"{name} have {s.nan_rows} row(s) with NaN/Inf (left out of the measures)"
                )
            )
        if s.zero_rows:
            found.append(Finding(f"zero:{name}", f"{name} have {s.zero_rows} all-zero row(s)"))
    if r.orientation.startswith("stored (C, T)"):
        found.append(Finding("transposed", f"theirs {r.orientation}"))
    return found


def diagnose_video(r: VideoResult, settings: Mapping[str, Any] | None = None) -> VideoDiagnosis:
    """The category and findings of one video."""
    settings = settings or {}
    level, value_finding = _level(r)
    findings: list[Finding] = [value_finding] if value_finding is not None else []
    equal = level == "equal"
    if r.related:
        if (view := _view(r, settings)) is not None:
            findings.append(view)
        if r.alignment.ratio != 1:
            findings.append(_grid(r, equal, settings))
        if r.alignment.offset != 0:
            findings.append(_offset(r, settings))
        shifted = r.alignment.offset != 0 and r.ours.rows == r.theirs.rows  # the ends follow the shift
        if r.alignment.ratio == 1 and not shifted and (trailing := _trailing(r, settings)) is not None:
            findings.append(trailing)
        if equal and (edge := _edges(r)) is not None:
            findings.append(edge)
    if equal and r.ours.dtype != r.theirs.dtype and r.rel_l2 is not None:
        findings.append(
            Finding(
                f"dtype:{r.theirs.dtype}",
                f"theirs {r.theirs.dtype}, ours {r.ours.dtype}: the differences (relative L2 "
                f"{r.rel_l2.median:.2g}) are rounding",
                f"output.dtype={r.theirs.dtype}" if r.theirs.dtype in ("float16", "float32") else None,
            )
        )
    findings.extend(_side_findings(r))
    if not r.related or ((not equal or r.view) and r.alignment.ratio == 1):
        category = "different values"
    elif r.alignment.ratio != 1:
        category = "different grid"
    elif any(f.key.split(":")[0] in ("offset", "trailing", "edge") for f in findings):
        category = "same up to an offset"
    else:
        category = "same"
    return VideoDiagnosis(r.id, category, level, findings)


def _affine_agreement(results: Sequence[VideoResult], diagnoses: Sequence[VideoDiagnosis]) -> Finding | None:
    """Across the videos explained by a per-dimension affine map: do the slopes agree (fixed statistics)?"""
    slopes = [
        r.scaling.slopes
        for r, d in zip(results, diagnoses, strict=True)
        if d.level == "affine" and r.scaling is not None and r.scaling.slopes is not None
    ]
    if len(slopes) < 2:
        return None
    reference = slopes[0]
    scale = np.where(np.abs(reference) > 1e-12, np.abs(reference), 1.0)
    spread = max(float(np.median(np.abs(s - reference) / scale)) for s in slopes[1:])
    if spread <= SLOPE_AGREEMENT:
        return Finding(
            "affine:shared",
            f"the per-dimension map is the same for all {len(slopes)} such videos (slopes within "
            f"{spread:.1%}): z-normalised with one mean/std over the whole dataset",
            "not an extraction setting: normalise ours with the release's dataset-wide mean/std",
        )
    return Finding(
        "affine:per-video",
        f"the per-dimension map differs between videos (slopes {spread:.0%} apart): statistics per video, "
        "but not of the rows we pair",
        "not an extraction setting: normalise ours per video the release's way",
    )


def summarise(
    results: Sequence[VideoResult],
    settings: Mapping[str, Any] | None = None,
    models_by_dim: Mapping[int, Sequence[str]] | None = None,
) -> Summary:
    """Diagnose every video, group the findings over videos and give the verdict."""
    diagnoses = [diagnose_video(r, settings) for r in results]
    if models_by_dim:
        for r, d in zip(results, diagnoses, strict=True):
            names = models_by_dim.get(int(r.theirs.shape[-1]))
            for i, f in enumerate(d.findings):
                if f.key.startswith("other-model") and names:
                    d.findings[i] = Finding(
                        f.key, f.text, f"model=... (ours with {r.theirs.shape[-1]} dims: {', '.join(names)})"
                    )
    groups: dict[str, tuple[Finding, list[str]]] = {}
    for d in diagnoses:
        for f in d.findings:
            groups.setdefault(f.key, (f, []))[1].append(d.id)
    if (shared := _affine_agreement(results, diagnoses)) is not None:  # says more than "affine" alone
        affine, ids = groups.pop("affine")
        groups[shared.key] = (Finding(shared.key, f"{affine.text}; {shared.text}", shared.change), ids)
    findings = sorted(((f, len(ids), ids) for f, ids in groups.values()), key=lambda x: -x[1])
    counts = Counter(d.category for d in diagnoses)
    verdict = (
        max(VERDICTS, key=lambda c: (counts.get(c, 0), VERDICTS.index(c)))
        if diagnoses
        else "nothing compared"
    )
    return Summary(verdict, {c: counts[c] for c in VERDICTS if counts.get(c)}, diagnoses, findings)

"""The comparison as readable text (per-video lines, findings, summary, verdict) or as JSON for scripts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.compare.align import Alignment
from pipeline.compare.diagnose import Summary
from pipeline.compare.measure import LOW_COSINE, RowStat, VideoResult

MAX_TEXT_VIDEOS = 50  # per-video lines in the text report (JSON has them all)
MAX_LISTED_IDS = 10
SETTINGS_SHOWN = ("model", "num_frames", "sampling_rate", "stride", "fps", "window", "pad", "crops", "dtype")


@dataclass
class Comparison:
    """Everything one run of the command found."""

    ours: str
    ours_kind: str
    ours_videos: int
    settings: dict[str, Any]
    theirs: str
    theirs_layout: str
    theirs_videos: int
    id_prefix: str
    compared: list[str]
    only_ours: list[str]
    only_theirs: list[str]
    not_compared: int  # matched ids left out by --videos
    results: list[VideoResult]
    summary: Summary
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _f(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _position(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_LISTED_IDS])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > MAX_LISTED_IDS else ''})"


def _alignment(al: Alignment, related: bool) -> tuple[str, str]:
    if al.mode == "none" or not related:
        return "-", "-"
    return f"{al.offset:+g}", f"{al.ratio:.4g}"


def format_text(c: Comparison) -> str:
    """The report for a person: sources, per-video table and findings, problems, summary, verdict."""
    shown = ", ".join(f"{k} {c.settings[k]}" for k in SETTINGS_SHOWN if c.settings.get(k) is not None)
    lines = [
        f"ours:   {c.ours} ({c.ours_kind}, {c.ours_videos} videos{'; ' + shown if shown else ''})",
        f"theirs: {c.theirs} ({c.theirs_layout}, {c.theirs_videos} videos"
        f"{f'; id prefix {c.id_prefix!r} removed' if c.id_prefix else ''})",
        f"ids:    {len(c.compared)} compared"
        + (f" ({c.not_compared} more matched, left out by --videos)" if c.not_compared else ""),
    ]
    if c.only_ours:
        lines.append(f"        only ours: {_ids(c.only_ours)}")
    if c.only_theirs:
        lines.append(f"        only theirs (no video of ours has these ids): {_ids(c.only_theirs)}")
    diagnoses = {d.id: d for d in c.summary.videos}
    header = (
        "video",
        "rows o/t",
        "dims o/t",
        "offset",
        "ratio",
        "cos med",
        "cos p5",
        "cos min",
        "relL2 med",
        "selfsim",
        "category",
    )
    table = [header]
    for r in c.results[:MAX_TEXT_VIDEOS]:
        d = diagnoses[r.id]
        offset, ratio = _alignment(r.alignment, r.related)
        cos = r.cosine
        table.append(
            (
                r.id,
                f"{r.ours.rows}/{r.theirs.rows}",
                f"{'x'.join(map(str, r.ours.shape[1:]))}/{'x'.join(map(str, r.theirs.shape[1:]))}",
                offset,
                ratio,
                _f(cos.median if cos else None),
                _f(cos.p5 if cos else None),
                _f(cos.extreme if cos else None),
                _f(r.rel_l2.median if r.rel_l2 else None, 3),
                _f(r.selfsim_overall, 2),
                d.category,
            )
        )
    if c.results:
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append("")
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
        ]
        if len(c.results) > MAX_TEXT_VIDEOS:
            lines.append(f"... {len(c.results) - MAX_TEXT_VIDEOS} more videos (--json lists them all)")
        lines.append("")
        everywhere = {f.key for f, count, _ in c.summary.findings if count == len(c.results) > 1}
        lines.append(
            "per video (theirs row j sits at our row offset + ratio * j; ours read linearly between rows"
            + ("; findings shared by every video are in the summary" if everywhere else "")
            + "):"
        )
        for r in c.results[:MAX_TEXT_VIDEOS]:
            d = diagnoses[r.id]
            where = f"{r.alignment.mode} search" if r.alignment.mode != "none" else "not searched"
            details = [where] + ([f"compared as {r.view}"] if r.view else [])
            if not r.orientation.startswith("(T, C) as stored (its"):
                details.append(f"theirs {r.orientation}")
            lines.append(f"  {r.id}: {d.category} [{'; '.join(details)}]")
            for f in d.findings:
                if f.key not in everywhere:
                    lines.append(f"    - {f.text}" + (f"\n      change: {f.change}" if f.change else ""))
            worst = _worst(r)
            if worst:
                lines.append(f"    worst rows: {worst}")
            for note in r.notes:
                lines.append(f"    note: {note}")
    if c.problems or c.notes:
        lines.append("")
        lines.append("problems:")
        lines += [f"  - {p}" for p in c.problems]
        lines += [f"  - note: {n}" for n in c.notes]
    if c.summary.findings:
        lines.append("")
        lines.append("summary:")
        total = len(c.results)
        for f, count, ids in c.summary.findings:
            lines.append(
                f"  {count}/{total} videos: {f.text}" + (f" (e.g. {ids[0]})" if count < total else "")
            )
            if f.change:
                lines.append(f"      change: {f.change}")
    lines.append("")
    lines.append(
        c.summary.line if c.results else "verdict: nothing compared (no video of theirs matched one of ours)"
    )
    return "\n".join(lines)


def _worst(r: VideoResult) -> str:
    """The worst paired rows by cosine, when some differ (below LOW_COSINE); JSON has them always."""
    stat = r.cosine
    if stat is None or not r.related or stat.extreme >= LOW_COSINE:
        return ""
    return "cosine " + "; ".join(
        f"their row {_position(t)} / our row {_position(o)}: {v:.4f}" for o, t, v in stat.worst
    )


# --- JSON ---------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/Inf to None, tuples to lists, numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stat(stat: RowStat | None, extreme: str) -> dict[str, Any] | None:
    if stat is None:
        return None
    return {
        "median": stat.median,
        "p5" if extreme == "min" else "p95": stat.p5,
        extreme: stat.extreme,
        "worst": [{"ours_row": o, "theirs_row": t, "value": v} for o, t, v in stat.worst],
    }


def video_json(r: VideoResult, c: Comparison) -> dict[str, Any]:
    d = next(d for d in c.summary.videos if d.id == r.id)
    scaling = None
    if r.scaling is not None:
        scaling = {
            "fits": [asdict(f) for f in r.scaling.fits]
            + ([asdict(r.scaling.affine)] if r.scaling.affine else []),
            "norm_ratio": r.scaling.norm_ratio,
            "norm_ratio_spread": r.scaling.norm_ratio_spread,
            "theirs_norm": r.scaling.theirs_norm,
        }
    return {
        "id": r.id,
        "category": d.category,
        "values": d.level,
        "source": r.source,
        "ours": asdict(r.ours),
        "theirs": asdict(r.theirs),
        "orientation": r.orientation,
        "view": r.view,
        "view_scores": r.view_scores,
        "alignment": {**asdict(r.alignment), "interpolation": "linear"},
        "pairs": r.pairs,
        "cosine": _stat(r.cosine, "min"),
        "rel_l2": _stat(r.rel_l2, "max"),
        "selfsim": _stat(r.selfsim, "min"),
        "selfsim_overall": r.selfsim_overall,
        "first_cosine": r.first_cosine,
        "last_cosine": r.last_cosine,
        "interior_cosine": r.interior_cosine,
        "rows_differing": {
            "count": r.low_count,
            "ours_rows": list(r.low_rows),
            "at_ends_only": r.low_at_ends_only,
        },
        "unpaired_before": {"ours": r.lead[0], "theirs": r.lead[1]},
        "unpaired_after": {"ours": r.trail[0], "theirs": r.trail[1]},
        "ours_step_s": r.ours_step_s,
        "scaling": scaling,
        "findings": [asdict(f) for f in d.findings],
        "notes": r.notes,
    }


def to_json(c: Comparison) -> dict[str, Any]:
    """The report for scripts (every video; NaN as null)."""
    return _clean(
        {
            "ours": {"path": c.ours, "kind": c.ours_kind, "videos": c.ours_videos, "settings": c.settings},
            "theirs": {
                "path": c.theirs,
                "layout": c.theirs_layout,
                "videos": c.theirs_videos,
                "id_prefix": c.id_prefix,
            },
            "ids": {
                "compared": c.compared,
                "only_ours": c.only_ours,
                "only_theirs": c.only_theirs,
                "not_compared": c.not_compared,
            },
            "videos": [video_json(r, c) for r in c.results],
            "summary": [{**asdict(f), "videos": count, "ids": ids} for f, count, ids in c.summary.findings],
            "problems": c.problems,
            "notes": c.notes,
            "counts": c.summary.counts,
            "verdict": c.summary.verdict if c.results else "nothing compared",
            "verdict_line": c.summary.line if c.results else "verdict: nothing compared",
        }
    )

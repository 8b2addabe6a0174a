"""`--plot out.png`: for a few videos, the per-row match over time at the alignment found and the two
self-similarity matrices over the paired rows, side by side (matplotlib, imported when asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.compare import align
from pipeline.compare.diagnose import VideoDiagnosis
from pipeline.compare.measure import VideoResult, primary, views
from pipeline.errors import PipelineError

MATRIX_ROWS = 300  # paired rows shown in a self-similarity matrix (evenly picked)
HEADLINE_CHARS = 75  # the first finding, cut to fit above its panel


class PlotError(PipelineError, RuntimeError):
    """The plot cannot be drawn (matplotlib missing)."""


def _chosen(
    result: VideoResult, ours: np.ndarray, theirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays compared row by row for this result (its view), or None when only structure was."""
    if result.cosine is None:
        return None
    for view in views(ours, theirs):
        if view.name == result.view:
            return view.ours, view.theirs
    whole = primary(ours, theirs)
    return (whole.ours, whole.theirs) if whole.ours.shape[1] == whole.theirs.shape[1] else None


def plot_comparison(
    out: Path,
    items: Sequence[tuple[VideoResult, VideoDiagnosis, np.ndarray, np.ndarray]],
) -> Path:
    """Draw one row of three panels per (result, diagnosis, ours, theirs as oriented) into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise PlotError("--plot needs matplotlib: pip install 'slowfast-feature-extractor[plot]'") from error
    figure, axes = plt.subplots(len(items), 3, figsize=(16, 4.6 * len(items)), squeeze=False)
    for (result, diagnosis, ours, theirs), (curve, left, right) in zip(items, axes, strict=True):
        al = result.alignment
        title = f"{result.id}: {diagnosis.category}"
        if result.related and al.mode != "none":
            title += f" (offset {al.offset:+g}, ratio {al.ratio:.4g})"
        unit = f"our row ({result.ours_step_s:.3g} s each)" if result.ours_step_s else "our row"
        arrays = _chosen(result, ours, theirs)
        if arrays is not None:
            match = align.row_match(arrays[0], arrays[1], al)
            curve.plot(match.pairs.ours, np.where(match.valid, match.cosine, np.nan), lw=1.2, label="cosine")
            curve.set_ylabel("cosine (ours, theirs)")
            low = float(np.nanmin(np.where(match.valid, match.cosine, np.nan))) if match.valid.any() else 0.0
            curve.set_ylim(min(0.0, low) - 0.02, 1.02)
        else:
            sim = align.selfsim_match(primary(ours, theirs).ours, primary(ours, theirs).theirs, al)
            curve.plot(sim.pairs.ours, sim.correlation, lw=1.2, color="tab:orange")
            curve.set_ylabel("self-similarity row correlation")
            curve.set_ylim(-1.02, 1.02)
        curve.axhline(1.0, color="grey", lw=0.6, ls=":")
        curve.set_xlabel(unit)
        headline = diagnosis.findings[0].text if diagnosis.findings else "values equal on every paired row"
        if len(headline) > HEADLINE_CHARS:
            headline = headline[: HEADLINE_CHARS - 3] + "..."
        curve.set_title(f"{title}\n{headline}\nper-row match at the alignment", fontsize=9)
        whole = primary(ours, theirs)
        pairs = align.pair_rows(len(whole.ours), len(whole.theirs), al.offset, al.ratio)
        if len(pairs) >= 2:
            pick = np.unique(np.linspace(0, len(pairs) - 1, min(len(pairs), MATRIX_ROWS)).round().astype(int))
            ours_rows = np.rint(pairs.ours[pick]).astype(int)
            theirs_rows = np.rint(pairs.theirs[pick]).astype(int)
            extent = (ours_rows[0], ours_rows[-1], ours_rows[-1], ours_rows[0])
            for ax, matrix, name in (
                (left, align.self_similarity(whole.ours[ours_rows]), "ours"),
                (right, align.self_similarity(whole.theirs[theirs_rows]), "theirs (at our rows)"),
            ):
                image = ax.imshow(
                    matrix, cmap="viridis", vmin=-1, vmax=1, extent=extent, interpolation="nearest"
                )
                ax.set_title(f"{result.id}: {name} self-similarity", fontsize=10)
                ax.set_xlabel(unit)
                ax.set_ylabel(unit)
                figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        else:
            left.set_axis_off()
            right.set_axis_off()
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out

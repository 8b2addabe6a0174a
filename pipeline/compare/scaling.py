"""Does a normalisation of ours explain theirs? Checked on the rows an alignment pairs (pure, numpy only).

Cosine similarity ignores a row's scale, relative L2 does not: rows alike in direction (cosine ~1) but not
in size point at a per-row scaling, and rows alike only after a per-dimension affine map at a
per-dimension normalisation. Each candidate transform is applied to OUR paired rows and its match with
theirs measured again (median cosine, median relative L2 ||ours' - theirs|| / ||theirs||):
- "as is";
- "L2 per row": ours / ||ours|| (releases normalised per row, as some trainers expect);
- "z per dim (this video)": (ours - mean) / std per dimension over this video's paired rows;
- "constant scale": ours * c, c the median norm ratio;
- the least-squares affine map per dimension (theirs_k = a_k ours_k + b_k): when it fits and no named
  transform does, the slopes a_k say whether the statistics were the video's own or fixed ones shared by
  every video (a dataset-wide mean/std), which the diagnosis judges across videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AFFINE_MIN_ROWS = 8  # fewer paired rows: no per-dimension fit (two parameters per dimension)


@dataclass(frozen=True)
class Fit:
    """How well theirs match one transform of ours."""

    name: str
    cosine: float  # median over the paired rows
    rel_l2: float  # median over the paired rows


@dataclass(frozen=True)
class ScalingCheck:
    """The candidate transforms' fits and what the norms say."""

    fits: tuple[Fit, ...]
    norm_ratio: float  # median ||theirs|| / ||ours|| per row
    norm_ratio_spread: float  # (95th - 5th percentile) / median of that ratio
    theirs_norm: float  # median row norm of theirs
    theirs_norm_spread: float  # (95th - 5th percentile) / median of their row norms
    affine: Fit | None  # the per-dimension least-squares fit, when there are enough rows
    slopes: np.ndarray | None  # its a_k
    intercepts: np.ndarray | None  # its b_k

    def fit(self, name: str) -> Fit:
        return next(f for f in self.fits if f.name == name)


def _match(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    norm_a = np.linalg.norm(a, axis=1)
    norm_b = np.linalg.norm(b, axis=1)
    product = norm_a * norm_b
    cosine = np.divide(np.einsum("ij,ij->i", a, b), product, out=np.zeros(len(a)), where=product > 0)
    distance = np.linalg.norm(a - b, axis=1)
    rel = np.divide(distance, norm_b, out=np.where(distance > 0, np.inf, 0.0), where=norm_b > 0)
    return float(np.median(cosine)), float(np.median(rel))


def _spread(values: np.ndarray) -> float:
    middle = float(np.median(values))
    if middle <= 0:
        return float("inf")
    return float((np.percentile(values, 95) - np.percentile(values, 5)) / middle)


def check_scaling(ours: np.ndarray, theirs: np.ndarray) -> ScalingCheck | None:
    """The fits of every candidate transform on paired (rows, dim) arrays; None without rows."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if len(ours) == 0:
        return None
    norm_ours = np.linalg.norm(ours, axis=1)
    norm_theirs = np.linalg.norm(theirs, axis=1)
    usable = norm_ours > 0
    ratios = norm_theirs[usable] / norm_ours[usable] if usable.any() else np.ones(1)
    scale = float(np.median(ratios))
    candidates = {
        "as is": ours,
        "L2 per row": ours / np.where(norm_ours > 0, norm_ours, 1.0)[:, None],
        "constant scale": ours * scale,
    }
    if len(ours) >= 2:
        std = ours.std(axis=0)
        candidates["z per dim (this video)"] = (ours - ours.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    fits = tuple(Fit(name, *_match(values, theirs)) for name, values in candidates.items())
    affine = slopes = intercepts = None
    if len(ours) >= AFFINE_MIN_ROWS:
        centred = ours - ours.mean(axis=0)
        variance = (centred * centred).sum(axis=0)
        slopes = np.divide(
            (centred * (theirs - theirs.mean(axis=0))).sum(axis=0),
            variance,
            out=np.zeros(ours.shape[1]),
            where=variance > 1e-12,
        )
        intercepts = theirs.mean(axis=0) - slopes * ours.mean(axis=0)
        affine = Fit("affine per dim", *_match(ours * slopes + intercepts, theirs))
    return ScalingCheck(
        fits=fits,
        norm_ratio=scale,
        norm_ratio_spread=_spread(ratios),
        theirs_norm=float(np.median(norm_theirs)),
        theirs_norm_spread=_spread(norm_theirs),
        affine=affine,
        slopes=slopes,
        intercepts=intercepts,
    )

"""Sanity report on extracted features: per-video statistics, failures, optional similarity plots.

    python -m pipeline.inspect <features.h5 | output dir | file.npy> [--plot out.png [--videos KEY ...]]
    python -m pipeline.inspect --top5 <output dir | features.h5>

Prints one line per video (rows, dims, dtype, NaN/Inf values, all-zero rows, constant dims = dims
with zero variance over the rows, min/mean/max L2 norm of the rows), then totals and the failed
videos (from the manifests for an output dir, from `/_failed` for an .h5). For an .h5 with the
external layout each external entry is checked against its .npy header. Exit status 1 when a video
has NaN/Inf values, no rows or only all-zero rows, or a file is broken; 2 for bad arguments.
`--plot` draws, per video, the cosine self-similarity matrix of the features and their norm over
time (seconds, from the timestamp centres); it needs matplotlib (`pip install ...[plot]`).
`--top5` prints instead each video's five most likely classes (mean softmax over its rows) from the logits
a run keeps with `output.logits=true`, with class names where the model's label map ships: does the
model see what is in the video? Exit status 1 when the run kept no logits.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import naming, outputs
from pipeline.consolidate import open_dataset, read_failed, video_keys
from pipeline.errors import PipelineError, exit_status
from pipeline.outputs.reader import ReadError, StoredVideo, scan

log = logging.getLogger(__name__)

MAX_PLOT_ROWS = 1500  # longer videos are subsampled evenly for the similarity matrix
TOP_K = 5
NO_LOGITS = "extract with output.logits=true to keep them (a model with a classifier head)"


class InspectError(PipelineError, ValueError):
    """The thing to inspect cannot be read (missing path, unknown video, no matplotlib)."""


@dataclass(frozen=True)
class VideoStats:
    """Statistics of one video's feature array."""

    key: str
    rows: int
    dims: tuple[int, ...]  # shape after the rows: (dim,) or (crops, dim)
    dtype: str
    nonfinite: int  # NaN or Inf values
    zero_rows: int  # rows whose values are all zero
    constant_dims: int | None  # dims with zero variance over the finite rows; None below 2 rows
    norm_min: float | None  # L2 norms of the finite rows (per crop), None when there are none
    norm_mean: float | None
    norm_max: float | None

    @property
    def empty(self) -> bool:
        """No rows, or only all-zero rows."""
        return self.rows == 0 or self.zero_rows == self.rows

    @property
    def bad(self) -> bool:
        """NaN/Inf values or an empty video."""
        return self.nonfinite > 0 or self.empty


@dataclass
class Report:
    """Everything inspect found in one path."""

    source: Path
    videos: list[VideoStats] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)  # key, path, error
    problems: list[str] = field(default_factory=list)  # broken files, settings mismatches

    @property
    def ok(self) -> bool:
        """No bad video and no problem."""
        return not self.problems and not any(v.bad for v in self.videos)


def feature_stats(key: str, features: np.ndarray) -> VideoStats:
    """Statistics of a (rows, dim) or (rows, crops, dim) array."""
    rows = int(features.shape[0])
    flat = np.asarray(features).reshape(rows, int(np.prod(features.shape[1:], dtype=np.int64)))
    finite_mask = np.isfinite(flat)
    finite_rows = flat[finite_mask.all(axis=1)].astype(np.float64)
    constant = None
    if rows >= 2:
        constant = (
            int(np.count_nonzero(finite_rows.max(axis=0) == finite_rows.min(axis=0)))
            if len(finite_rows)
            else 0
        )
    norms = np.linalg.norm(finite_rows.reshape(len(finite_rows), *features.shape[1:]), axis=-1).ravel()
    return VideoStats(
        key=key,
        rows=rows,
        dims=tuple(int(d) for d in features.shape[1:]),
        dtype=str(features.dtype),
        nonfinite=int(flat.size - np.count_nonzero(finite_mask)),
        zero_rows=int(np.count_nonzero(~flat.any(axis=1))) if flat.shape[1] else rows,
        constant_dims=constant,
        norm_min=float(norms.min()) if norms.size else None,
        norm_mean=float(norms.mean()) if norms.size else None,
        norm_max=float(norms.max()) if norms.size else None,
    )


# --- sources ------------------------------------------------------------------------------------


def external_problems(h5_path: Path, dataset: h5py.Dataset) -> list[str]:
    """Mismatches between a dataset's external entries and the .npy headers they point into."""
    problems = []
    entries = dataset.external or []
    total = sum(size for _, _, size in entries)
    if entries and total != dataset.size * dataset.dtype.itemsize:
        problems.append(
            f"{dataset.name}: external entries hold {total} bytes, the dataset needs "
            f"{dataset.size * dataset.dtype.itemsize}"
        )
    for name, offset, size in entries:
        target = Path(os.fsdecode(name))
        target = target if target.is_absolute() else h5_path.parent / target
        try:
            data_offset, shape, dtype = outputs.npy_data_offset(target)
        except (OSError, ValueError) as error:
            problems.append(f"{dataset.name}: external file {target}: {error}")
            continue
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if (offset, size) != (data_offset, nbytes) or dtype != dataset.dtype:
            problems.append(
                f"{dataset.name}: external entry (offset {offset}, {size} bytes) does not match "
                f"{target} (data at {data_offset}, {nbytes} bytes, {dtype})"
            )
    return problems


def _h5_videos(
    path: Path,
    keys: Sequence[str] | None,
    report: Report | None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    with h5py.File(path, "r") as h5:
        if report is not None:
            report.failed.extend(read_failed(h5))
        for key in keys if keys is not None else video_keys(h5):
            if key not in h5 or "features" not in h5[key]:
                raise InspectError(f"{path}: no video {key!r}")
            group = h5[key]
            dataset = open_dataset(group, "features")
            broken = external_problems(path, dataset)
            if broken:
                if report is None:
                    raise InspectError("; ".join(broken))
                report.problems.extend(broken)
                continue
            yield key, dataset[()], group["timestamps"][()] if "timestamps" in group else None


def _dir_videos(
    path: Path,
    keys: Sequence[str] | None,
    report: Report | None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    try:
        found = scan([path], strict=False)
    except ReadError as error:
        raise InspectError(str(error)) from error
    if report is not None:
        report.failed.extend(vars(f) for f in found.failed)
        report.problems.extend(found.problems)
    by_key = {v.key: v for v in found.videos}
    for key in keys if keys is not None else sorted(by_key):
        if key not in by_key:
            raise InspectError(f"{path}: no video {key!r}")
        video = by_key[key]
        try:
            features = video.load()
        except ReadError as error:
            if report is None:
                raise InspectError(str(error)) from error
            report.problems.append(str(error))
            continue
        yield key, features, video.timestamps


def _npy_video(
    path: Path,
    keys: Sequence[str] | None,
    report: Report | None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    sidecar = Path(naming.sidecar_of_feature(str(path)))
    data = outputs.read_sidecar(sidecar) if sidecar.is_file() else {}
    key = str(data.get("key", path.stem))
    if keys is not None and list(keys) != [key]:
        raise InspectError(f"{path}: holds only video {key!r}")
    try:
        outputs.npy_data_offset(path)
        features = np.load(path)
    except (OSError, ValueError) as error:
        if report is None:
            raise InspectError(str(error)) from error
        report.problems.append(str(error))
        return
    stamps = np.asarray(data.get("timestamps", []), dtype=np.float64).reshape(-1, 3)
    yield key, features, stamps if len(stamps) == len(features) and data else None


def iter_videos(
    path: Path,
    keys: Sequence[str] | None = None,
    report: Report | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(key, features, timestamps or None) of each video in an .h5, output dir or .npy, one at a time.

    With a `report`, failures and broken files are recorded there; without, they raise InspectError.
    """
    path = Path(path)
    if path.is_dir():
        yield from _dir_videos(path, keys, report)
    elif not path.is_file():
        raise InspectError(f"{path}: no such file or directory")
    elif path.suffix == ".npy":
        yield from _npy_video(path, keys, report)
    elif h5py.is_hdf5(path):
        yield from _h5_videos(path, keys, report)
    else:
        raise InspectError(f"{path}: not an output dir, .h5 or .npy file")


def inspect_path(path: Path) -> Report:
    """Statistics of every video of an .h5, output dir or .npy."""
    report = Report(Path(path))
    for key, features, _ in iter_videos(Path(path), report=report):
        report.videos.append(feature_stats(key, features))
    return report


# --- output -------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_report(report: Report) -> str:
    """The report as a plain-text table with totals, failures and problems."""
    header = (
        "video",
        "rows",
        "dims",
        "dtype",
        "nan/inf",
        "zero rows",
        "const dims",
        "norm min",
        "norm mean",
        "norm max",
        "",
    )
    lines = [header]
    for v in report.videos:
        flag = "NAN/INF" if v.nonfinite else "EMPTY" if v.empty else ""
        lines.append(
            (
                v.key,
                str(v.rows),
                "x".join(map(str, v.dims)),
                v.dtype,
                str(v.nonfinite),
                str(v.zero_rows),
                "-" if v.constant_dims is None else str(v.constant_dims),
                _number(v.norm_min),
                _number(v.norm_mean),
                _number(v.norm_max),
                flag,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    bad = [v for v in report.videos if v.bad]
    text.append("")
    text.append(
        f"{len(report.videos)} videos, {sum(v.rows for v in report.videos)} rows; "
        f"{sum(1 for v in report.videos if v.nonfinite)} with NaN/Inf, "
        f"{sum(1 for v in report.videos if v.empty)} empty, {len(report.failed)} failed, "
        f"{len(report.problems)} problem(s)"
    )
    for failure in report.failed:
        text.append(f"FAILED {failure.get('key')} ({failure.get('path')}): {failure.get('error')}")
    for problem in report.problems:
        text.append(f"PROBLEM {problem}")
    text.append("OK" if report.ok else f"NOT OK: {len(bad)} bad video(s), {len(report.problems)} problem(s)")
    return "\n".join(text)


def _cosine_similarity(features: np.ndarray) -> np.ndarray:
    flat = features.astype(np.float64).reshape(len(features), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
    return unit @ unit.T


def plot_videos(path: Path, out: Path, keys: Sequence[str] | None = None) -> Path:
    """Self-similarity matrix and norm over time of some videos (default: the first) into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise InspectError(
            "--plot needs matplotlib: pip install 'slowfast-feature-extractor[plot]'"
        ) from error
    videos = []
    for key, features, stamps in iter_videos(Path(path), keys):
        videos.append((key, features, stamps))
        if keys is None:
            break
    if not videos:
        raise InspectError(f"{path}: no video to plot")
    figure, axes = plt.subplots(len(videos), 2, figsize=(11, 4.5 * len(videos)), squeeze=False)
    for (key, features, stamps), (left, right) in zip(videos, axes, strict=True):
        features = features.astype(np.float64)
        if features.ndim == 3:
            features = features.mean(axis=1)  # average the crops
        times = stamps[:, 2] if stamps is not None else np.arange(len(features), dtype=np.float64)
        unit = "s" if stamps is not None else "row"
        step = max(1, math.ceil(len(features) / MAX_PLOT_ROWS))
        picked, picked_times = features[::step], times[::step]
        if len(picked):
            half = (picked_times[-1] - picked_times[0]) / (len(picked) - 1) / 2 if len(picked) > 1 else 0.5
            first, last = picked_times[0] - half, picked_times[-1] + half
            extent = (first, last, last, first)  # cell edges half a step around the row centres
            image = left.imshow(
                _cosine_similarity(picked),
                cmap="viridis",
                vmax=1,  # lower end from the data: post-ReLU features are rarely below 0
                extent=extent,
                interpolation="nearest",
            )
            figure.colorbar(image, ax=left, fraction=0.046, pad=0.04)
        left.set_title(f"{key}: cosine self-similarity" + (f" (every {step}th row)" if step > 1 else ""))
        left.set_xlabel(f"time ({unit})")
        left.set_ylabel(f"time ({unit})")
        right.plot(times, np.linalg.norm(features, axis=-1))
        right.set_title(f"{key}: feature L2 norm")
        right.set_xlabel(f"time ({unit})")
        right.set_ylabel("norm")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


# --- top-5 classes -------------------------------------------------------------------------------

Classes = list[list[Any]]  # [[index, name or None, probability], ...], best first (`top_classes`)


def _names(model: str | None) -> tuple[str, ...] | None:
    from pipeline.models.labels import class_names  # imports torch (the registry): only --top5 needs it

    try:
        return class_names(model) if model else None
    except KeyError:  # a model this package does not know: indices only
        return None


def _video_top(video: StoredVideo, k: int) -> dict[str, Classes]:
    """A stored video's top classes per head: its sidecar's `top5` when it has one (written by the run),
    else computed from its logits the same way."""
    if video.sidecar.top5 and k <= TOP_K:
        return {head: [list(c) for c in classes[:k]] for head, classes in video.sidecar.top5.items()}
    from pipeline.models.labels import top_classes  # imports torch (the registry): only --top5 needs it

    names = _names(video.sidecar.model or video.sidecar.settings.get("model"))
    found = {}
    for name, ref in sorted(video.logits.items()):
        head = naming.head_of_logits_name(name)
        found[head] = top_classes(ref.load(), names if head == "logits" else None, k)
    return found


def _dir_top(path: Path, k: int, problems: list[str]) -> Iterator[tuple[str, dict[str, Classes]]]:
    try:
        found = scan([path], strict=False)
    except ReadError as error:
        raise InspectError(str(error)) from error
    problems.extend(found.problems)
    for video in sorted(found.videos, key=lambda v: v.key):
        try:
            yield video.key, _video_top(video, k)
        except (OSError, ValueError) as error:
            problems.append(f"{video.key}: logits unreadable ({error})")


def _h5_top(path: Path, k: int) -> Iterator[tuple[str, dict[str, Classes]]]:
    from pipeline.models.labels import top_classes  # imports torch (the registry): only --top5 needs it

    with h5py.File(path, "r") as h5:
        model = h5.attrs.get("model")
        model = model.decode() if isinstance(model, bytes) else model
        names = _names(None if model in (None, "null") else str(model))
        for key in video_keys(h5):
            group = h5[key]
            heads = sorted(n for n in group if n == "logits" or n.startswith("logits_"))
            yield (
                key,
                {
                    naming.head_of_logits_name(n): top_classes(
                        open_dataset(group, n)[()], names if n == "logits" else None, k
                    )
                    for n in heads
                },
            )


def video_top_classes(path: Path, k: int = TOP_K) -> tuple[list[tuple[str, dict[str, Classes]]], list[str]]:
    """Each video's top-k classes per classifier head (empty dict: no logits kept) of an output dir (either
    store) or a features.h5, and the problems met; InspectError when the path is neither."""
    path = Path(path)
    problems: list[str] = []
    if path.is_dir():
        videos = list(_dir_top(path, k, problems))
    elif path.is_file() and h5py.is_hdf5(path):
        videos = list(_h5_top(path, k))
    elif path.exists():
        raise InspectError(
            f"{path}: --top5 reads an output dir or a features.h5 (the logits are not in a .npy)"
        )
    else:
        raise InspectError(f"{path}: no such file or directory")
    return videos, problems


def format_top_classes(videos: Sequence[tuple[str, dict[str, Classes]]]) -> str:
    """One block per video and head: rank, probability, class index, class name (when known)."""
    lines = []
    for key, heads in videos:
        for head, classes in heads.items():
            lines.append(key if head == "logits" else f"{key} [{head}]")
            for rank, (index, name, probability) in enumerate(classes, 1):
                lines.append(f"  {rank}. {probability:.4f}  {index:>4}  {name or ''}".rstrip())
    return "\n".join(lines)


def print_top_classes(path: Path) -> int:
    """`--top5`: print the top classes; 1 (and one line saying why) when no video kept logits."""
    videos, problems = video_top_classes(path)
    with_logits = [(key, heads) for key, heads in videos if heads]
    if with_logits:
        print(format_top_classes(with_logits))
    missing = len(videos) - len(with_logits)
    if not videos:
        print(f"{path}: no video to show")
    elif not with_logits:
        print(f"{path}: this run kept no logits: {NO_LOGITS}")
    elif missing:
        print(f"{missing} of {len(videos)} videos have no logits: {NO_LOGITS}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 0 if with_logits and not problems else 1


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints the report; 0 when all is well, 1 on bad features, 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="features.h5, an output dir or one .npy file")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="write self-similarity and norm plots to this PNG",
    )
    parser.add_argument(
        "--videos", nargs="+", default=None, metavar="KEY", help="videos to plot (default: the first one)"
    )
    parser.add_argument(
        "--top5", action="store_true", help="print each video's top-5 classes from the logits the run kept"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.videos and not args.plot:
        parser.error("--videos needs --plot")
    if args.top5 and args.plot:
        parser.error("--top5 and --plot are separate reports: run them one at a time")
    try:
        if args.top5:
            return print_top_classes(args.path)
        report = inspect_path(args.path)
        print(format_report(report))
        if args.plot:
            print(f"plot: {plot_videos(args.path, args.plot, args.videos)}")
    except InspectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(exit_status(main, "pipeline.inspect"))  # a reader that goes away (| head) is no error

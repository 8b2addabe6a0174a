"""Export an output dir's features for other tools; today: ActionFormer (temporal action localisation).

    python -m pipeline.export --format actionformer <output dir> <dest>

ActionFormer (github.com/happyharrycn/actionformer_release, libs/datasets/epic_kitchens.py) loads
`<feat_folder>/<file_prefix><video id><file_ext>` with `np.load(...)["feats"]`, expects (T, C), casts
to float32 and transposes to (C, T). It maps a time in seconds to a feature row as
`(seconds * fps - 0.5 * num_frames) / feat_stride`, and back with `(row * feat_stride + 0.5 * num_frames)
/ fps`, where fps is `default_fps` or each video's "fps" in the annotation JSON.

Written to <dest>:
    <video id>.npz                one per video; key "feats": (rows, dim) in the extracted dtype.
                                  video id = last component of the key ("P01/videos/P01_01" -> "P01_01");
                                  two keys with the same id are refused.
    actionformer_features.json    "feat_stride" (frames between rows), "num_frames" (chosen so that
                                  row t is centred at (t * feat_stride + num_frames / 2) / fps, as our
                                  timestamps say; for sliding windows it is the clip span in frames),
                                  "fps" (null when videos differ: then per video in "videos"), "dim",
                                  "dtype", "window_frames", "videos" {id: key, rows, fps, duration},
                                  "dataset_config" (the values for ActionFormer's `dataset:` section)
                                  and "note".
Multi-crop features (rows, crops, dim) are refused: extract with data.crop_reduce=mean.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import outputs
from pipeline.consolidate import ConsolidateError, Scan, scan

log = logging.getLogger(__name__)

FORMATS = ("actionformer",)
SUMMARY_NAME = "actionformer_features.json"
NOTE = (
    "Put dataset_config under `dataset:` in an ActionFormer config with a loader that reads .npz files "
    "(e.g. dataset_name: epic; the thumos loader reads .npy). Video ids in the annotation JSON must be "
    "the .npz file stems. When fps is null, give each video's fps in the annotation JSON and set "
    "default_fps: null. input_dim must equal dim; max_seq_len and the rest are model choices."
)


class ExportError(ValueError):
    """The output dir cannot be exported (no videos, duplicate ids, multi-crop features...)."""


def video_id(key: str) -> str:
    """ActionFormer's video id of a key: its last path component."""
    return key.rsplit("/", 1)[-1]


def _ids(found: Scan) -> dict[str, str]:
    """Video id -> key, refusing two keys with the same id."""
    ids: dict[str, str] = {}
    for entry in found.videos:
        vid = video_id(entry.key)
        if vid in ids:
            raise ExportError(
                f"video id {vid!r} is shared by keys {ids[vid]!r} and {entry.key!r} "
                "(ActionFormer names files by id only)"
            )
        ids[vid] = entry.key
    return ids


def _grid_offset(widths: dict[float, Counter[float]], settings: dict[str, Any]) -> tuple[float, float]:
    """(window span, centre offset of row 0) in frames, from the rows not clamped at the video ends."""
    if not widths:
        frames = (int(settings["num_frames"]) - 1) * int(settings["sampling_rate"]) + 1
        log.warning(
            "no feature rows to measure the window from; assuming a sliding window of %d frames", frames
        )
        return float(frames), frames / 2
    span = max(widths)
    offsets = widths[span]
    if len(offsets) > 1:
        log.warning(
            "row centres are not on one grid (offsets %s frames); using the most common", sorted(offsets)
        )
    return span, offsets.most_common(1)[0][0]


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def export_actionformer(output_dir: Path, dest: Path) -> Path:
    """Write one <video id>.npz per video plus actionformer_features.json; returns the JSON's path."""
    try:
        found = scan([Path(output_dir)])
    except ConsolidateError as error:
        raise ExportError(str(error)) from error
    if not found.videos:
        raise ExportError(f"{output_dir}: no features to export")
    _ids(found)
    three_d = [v for v in found.videos if len(v.shape) != 2]
    if three_d:
        raise ExportError(
            f"{three_d[0].features}: features have {three_d[0].shape[1]} crops per row; "
            "ActionFormer reads (T, C): extract with data.crop_reduce=mean"
        )
    settings = found.settings or {}
    stride = int(settings["stride"])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    widths: dict[float, Counter[float]] = defaultdict(Counter)
    videos: dict[str, dict[str, Any]] = {}
    for entry in found.videos:
        vid = video_id(entry.key)
        sidecar = outputs.read_sidecar(entry.sidecar)
        feats = np.load(entry.features)
        if not len(feats):
            log.warning("%s has no rows: ActionFormer cannot use %s.npz", entry.key, vid)
        outputs.atomic_write(dest / f"{vid}.npz", partial(np.savez, feats=feats))
        fps = float(sidecar["fps"])
        stamps = np.asarray(sidecar["timestamps"], dtype=np.float64).reshape(-1, 3)
        row_widths = np.round((stamps[:, 1] - stamps[:, 0]) * fps, 3)
        row_offsets = np.round(stamps[:, 2] * fps - np.arange(len(stamps)) * stride, 3)
        for w, o in zip(row_widths.tolist(), row_offsets.tolist(), strict=True):
            widths[w][o] += 1
        videos[vid] = {
            "key": entry.key,
            "rows": entry.shape[0],
            "fps": fps,
            "duration": sidecar.get("duration"),
        }
    span, offset = _grid_offset(widths, settings)
    rates = {v["fps"] for v in videos.values()}
    fps_all = rates.pop() if len(rates) == 1 else None
    dim = found.videos[0].shape[-1]
    num_frames = _plain(round(2 * offset, 3))
    summary = {
        "format": "actionformer",
        "feat_stride": stride,
        "num_frames": num_frames,
        "fps": fps_all,
        "dim": dim,
        "dtype": found.videos[0].dtype,
        "window_frames": _plain(span),
        "videos": videos,
        "dataset_config": {
            "feat_folder": str(dest.resolve()),
            "file_prefix": None,
            "file_ext": ".npz",
            "input_dim": dim,
            "feat_stride": stride,
            "num_frames": num_frames,
            "default_fps": fps_all,
        },
        "note": NOTE,
        "source": str(Path(output_dir).resolve()),
        "settings": settings,
    }
    path = dest / SUMMARY_NAME
    outputs.save_json(path, summary)
    log.info(
        "exported %d videos to %s (feat_stride %d, num_frames %s, fps %s)",
        len(videos),
        dest,
        stride,
        num_frames,
        fps_all,
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, required=True, help="target tool")
    parser.add_argument("output_dir", type=Path, help="output dir of an extraction run")
    parser.add_argument("dest", type=Path, help="folder to write the exported files into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = export_actionformer(args.output_dir, args.dest)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

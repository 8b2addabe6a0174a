"""What every export shares: the video ids (a key's last component), the error, and writing one flat
(rows, dim) file per video while measuring the grid the rows lie on (frames at the extracted fps).
A rerun writes only the files whose video changed since (`.exported.json` in the destination says what
each file was written from)."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import outputs
from pipeline.errors import PipelineError
from pipeline.outputs.reader import ReadError, Scan, StoredVideo, scan

log = logging.getLogger(__name__)

FILE_EXTS = (".npz", ".npy")
WRITTEN_NAME = ".exported.json"  # file name -> [identity of its video, size]: what a rerun may skip


class ExportError(PipelineError, ValueError):
    """The output dir cannot be exported (no videos, duplicate ids, multi-crop features...)."""


def video_id(key: str) -> str:
    """ActionFormer's video id of a key: its last path component."""
    return key.rsplit("/", 1)[-1]


def ids_of(found: Scan) -> dict[str, str]:
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


def scan_flat(output_dir: Path, tool: str) -> Scan:
    """The videos of an output dir for an export: at least one, each (rows, dim) (ExportError otherwise)."""
    try:
        found = scan([Path(output_dir)])
    except ReadError as error:
        raise ExportError(str(error)) from error
    if not found.videos:
        raise ExportError(f"{output_dir}: no features to export")
    multi = [v for v in found.videos if len(v.shape) != 2]
    if multi:
        raise ExportError(
            f"{multi[0].where}: features have {multi[0].shape[1]} crops per row; "
            f"{tool} reads (T, C): extract with data.crop_reduce=mean"
        )
    return found


def read_written(dest: Path) -> dict[str, Any]:
    """What an earlier export into `dest` wrote: file name -> [identity of its video's output, size]."""
    try:
        data = json.loads((dest / WRITTEN_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _current(target: Path, written: Any, identity: str) -> bool:
    """Whether an exported file is still what its video's output gives: written from the same identity,
    and of the size it had then."""
    if not isinstance(written, list) or len(written) != 2 or written[0] != identity:
        return False
    try:
        return target.stat().st_size == written[1]
    except OSError:
        return False


def grid_offset(widths: dict[float, Counter[float]], settings: dict[str, Any]) -> tuple[float, float]:
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


def count_row_grid(widths: dict[float, Counter[float]], entry: StoredVideo, stride: int) -> float:
    """Count a video's rows into `widths` (window width -> centre offset of the row grid -> rows), both in
    frames at the extracted rate; returns that rate."""
    fps = float(entry.sidecar.fps or 0.0)
    stamps = entry.timestamps
    row_widths = np.round((stamps[:, 1] - stamps[:, 0]) * fps, 3)
    row_offsets = np.round(stamps[:, 2] * fps - np.arange(len(stamps)) * stride, 3)
    for w, o in zip(row_widths.tolist(), row_offsets.tolist(), strict=True):
        widths[w][o] += 1
    return fps


def plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


@dataclass
class Exported:
    """What the per-video export wrote and the grid its rows lie on (frames at the extracted fps)."""

    dest: Path
    videos: dict[str, dict[str, Any]]
    failed_ids: list[str]
    stride: int
    span: float
    offset: float
    fps: float | None
    dim: int
    dtype: str
    settings: dict[str, Any]


def write_videos(output_dir: Path, dest: Path, file_ext: str, tool: str) -> Exported:
    """Write one flat (rows, dim) file per video (ids checked first) and measure the row grid."""
    if file_ext not in FILE_EXTS:
        raise ExportError(f"file extension must be one of {FILE_EXTS} (got {file_ext!r})")
    found = scan_flat(output_dir, tool)
    ids = ids_of(found)
    settings = found.settings or {}
    stride = int(settings["stride"])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    outputs.clean_stale_temps(dest)  # an export killed before left its temp files
    written = read_written(dest)
    widths: dict[float, Counter[float]] = defaultdict(Counter)
    videos: dict[str, dict[str, Any]] = {}
    rewritten = 0
    for entry in found.videos:
        vid = video_id(entry.key)
        target = dest / f"{vid}{file_ext}"
        if not _current(target, written.get(target.name), entry.identity):
            try:
                feats = entry.load()
            except ReadError as error:
                raise ExportError(str(error)) from error
            if not len(feats):
                log.warning("%s has no rows: %s cannot use %s%s", entry.key, tool, vid, file_ext)
            # not fsynced one by one (a million files): the index below keeps each file's size, and a
            # file a crash left short or empty is written again
            if file_ext == ".npz":
                outputs.atomic_write(target, partial(np.savez, feats=feats), durable=False)
            else:
                outputs.save_array(target, feats, durable=False)
            written[target.name] = [entry.identity, target.stat().st_size]
            rewritten += 1
        fps = count_row_grid(widths, entry, stride)
        videos[vid] = {
            "key": entry.key,
            "rows": entry.shape[0],
            "fps": fps,
            "duration": entry.sidecar.duration,
        }
    outputs.save_json(dest / WRITTEN_NAME, written)
    log.info("%s: %d video files written, %d unchanged", dest, rewritten, len(found.videos) - rewritten)
    span, offset = grid_offset(widths, settings)
    rates = {v["fps"] for v in videos.values()}
    failed_ids = sorted({video_id(f.key) for f in found.failed} - set(ids))
    return Exported(
        dest=dest,
        videos=videos,
        failed_ids=failed_ids,
        stride=stride,
        span=span,
        offset=offset,
        fps=rates.pop() if len(rates) == 1 else None,
        dim=found.videos[0].shape[-1],
        dtype=found.videos[0].dtype,
        settings=settings,
    )

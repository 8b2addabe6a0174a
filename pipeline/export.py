"""Export an output dir's features for temporal action localisation trainers: ActionFormer, OpenTAD.

    python -m pipeline.export --format actionformer [--ext .npz|.npy] <output dir> <dest>
    python -m pipeline.export --format opentad <output dir> <dest>

Both trainers read one file per video from one flat folder, named by the video id, holding a (T, C)
array (rows x feature dim) that they cast to float32 and transpose to (C, T) themselves:
- ActionFormer (github.com/happyharrycn/actionformer_release, libs/datasets/): `<feat_folder>/<file_prefix>
  <id><file_ext>`; the EPIC loader (epic_kitchens.py) reads `np.load(...)["feats"]` from `.npz`, the THUMOS,
  Ego4D and ActivityNet loaders (thumos14.py, ego4d.py, anet.py) `np.load(...)` of `.npy`. A time in
  seconds maps to a row as `(seconds * fps - 0.5 * num_frames) / feat_stride`.
- OpenTAD (github.com/sming256/OpenTAD, opentad/datasets/transforms/loading.py `LoadFeats`):
  `{data_path}/{prefix}{video_name}{suffix}.npy` read with `np.load(...).astype(np.float32)`, then the
  configs' `Rearrange("t c -> c t")`. Its padding datasets (opentad/datasets/base/padding_dataset.py,
  thumos.py) map an annotated frame f to the row `(f - offset_frames) / (feature_stride * sample_stride)`
  and read `block_list` (the configs use `<data_path>missing_files.txt`) as one video name per line.

Written to <dest>:
    <video id>.npz | .npy         one per video ("feats": (rows, dim) in the .npz), in the extracted dtype;
                                  video id = last component of the key ("P01/videos/P01_01" -> "P01_01");
                                  two keys with the same id are refused before anything is written.
    actionformer_features.json    (ActionFormer) "feat_stride" (frames between rows), "num_frames" (chosen
                                  so that row t is centred at (t * feat_stride + num_frames / 2) / fps, as
                                  our timestamps say; for sliding windows it is the clip span in frames),
                                  "fps" (null when videos differ: then per video in "videos"), "dim",
                                  "dtype", "window_frames", "videos" {id: key, rows, fps, duration},
                                  "dataset_config" (the values for ActionFormer's `dataset:` section),
                                  "config_snippet" and "note".
    opentad_features.json         (OpenTAD) "feature_stride", "sample_stride" (1), "offset_frames" (the
                                  frame at the centre of row 0), "fps", "dim", "data_path", "block_list",
                                  "videos", "config_snippet" and "note".
    missing_files.txt             (OpenTAD) ids of the videos that failed, one per line (OpenTAD's block list).
The command prints the summary's path on stdout and the config snippet for the trainer on stderr.
Multi-crop features (rows, crops, dim) are refused: extract with data.crop_reduce=mean.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import outputs
from pipeline.consolidate import ConsolidateError, Scan, scan
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

FORMATS = ("actionformer", "opentad")
SUMMARY_NAME = "actionformer_features.json"
OPENTAD_SUMMARY_NAME = "opentad_features.json"
MISSING_NAME = "missing_files.txt"
FILE_EXTS = (".npz", ".npy")
NOTE = (
    "Put dataset_config under `dataset:` in an ActionFormer config with a loader that reads {ext} files "
    "({loaders}). Video ids in the annotation JSON must be the {ext} file stems. When fps is null, give "
    "each video's fps in the annotation JSON and set default_fps: null. input_dim must equal dim; "
    "max_seq_len and the rest are model choices."
)
LOADERS = {".npz": "dataset_name: epic", ".npy": "dataset_name: thumos, ego4d or anet"}
OPENTAD_NOTE = (
    "Set these in each of dataset.train / val / test of an OpenTAD feature config with LoadFeats "
    "(feat_format npy, no prefix or suffix: annotation video names must be the file stems; ActivityNet's "
    "configs add prefix 'v_' to names that lack it) and Rearrange 't c -> c t'; the model's projection "
    "in_channels must equal dim. fps is used by datasets whose annotations are in seconds (EPIC-Kitchens, "
    "Ego4D); THUMOS-style datasets convert with the annotation's frame count. When fps is null, videos "
    "differ: see videos.<id>.fps."
)


class ExportError(PipelineError, ValueError):
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


@dataclass
class _Exported:
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


def _write_videos(output_dir: Path, dest: Path, file_ext: str, tool: str) -> _Exported:
    """Write one flat (rows, dim) file per video (ids checked first) and measure the row grid."""
    if file_ext not in FILE_EXTS:
        raise ExportError(f"file extension must be one of {FILE_EXTS} (got {file_ext!r})")
    try:
        found = scan([Path(output_dir)])
    except ConsolidateError as error:
        raise ExportError(str(error)) from error
    if not found.videos:
        raise ExportError(f"{output_dir}: no features to export")
    ids = _ids(found)
    three_d = [v for v in found.videos if len(v.shape) != 2]
    if three_d:
        raise ExportError(
            f"{three_d[0].features}: features have {three_d[0].shape[1]} crops per row; "
            f"{tool} reads (T, C): extract with data.crop_reduce=mean"
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
            log.warning("%s has no rows: %s cannot use %s%s", entry.key, tool, vid, file_ext)
        if file_ext == ".npz":
            outputs.atomic_write(dest / f"{vid}.npz", partial(np.savez, feats=feats))
        else:
            outputs.save_array(dest / f"{vid}.npy", feats)
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
    failed_ids = sorted({video_id(f.key) for f in found.failed} - set(ids))
    return _Exported(
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


def _yaml_value(value: object) -> str:
    """A scalar as ActionFormer's YAML configs write it (~ for None)."""
    return "~" if value is None else str(value)


def actionformer_snippet(dataset_config: dict[str, Any]) -> str:
    """The `dataset:` lines of an ActionFormer YAML config for this export."""
    lines = ["dataset: {"]
    lines += [f"  {name}: {_yaml_value(value)}," for name, value in dataset_config.items()]
    return "\n".join([*lines, "}"])


def opentad_snippet(summary: dict[str, Any]) -> str:
    """The lines of an OpenTAD dataset config (Python) for this export."""
    fps = summary["fps"]
    return "\n".join(
        [
            f'data_path = "{summary["data_path"]}"',
            f'block_list = data_path + "{MISSING_NAME}"',
            "# in each of dataset = dict(train=dict(...), val=dict(...), test=dict(...)):",
            f"#   data_path=data_path, block_list=block_list, feature_stride={summary['feature_stride']},",
            f"#   sample_stride=1, offset_frames={summary['offset_frames']},"
            + (f" fps={fps}," if fps is not None else " (fps differs per video),"),
            '#   pipeline=[dict(type="LoadFeats", feat_format="npy"), ...,'
            ' dict(type="Rearrange", keys=["feats"], ops="t c -> c t"), ...]',
            f"model = dict(projection=dict(in_channels={summary['dim']}))",
        ]
    )


def export_actionformer(output_dir: Path, dest: Path, file_ext: str = ".npz") -> Path:
    """Write one <video id><file_ext> per video plus actionformer_features.json; returns the JSON's path."""
    done = _write_videos(output_dir, dest, file_ext, "ActionFormer")
    num_frames = _plain(round(2 * done.offset, 3))
    dataset_config = {
        "feat_folder": str(done.dest.resolve()),
        "file_prefix": None,
        "file_ext": file_ext,
        "input_dim": done.dim,
        "feat_stride": done.stride,
        "num_frames": num_frames,
        "default_fps": done.fps,
    }
    summary = {
        "format": "actionformer",
        "feat_stride": done.stride,
        "num_frames": num_frames,
        "fps": done.fps,
        "dim": done.dim,
        "dtype": done.dtype,
        "window_frames": _plain(done.span),
        "videos": done.videos,
        "dataset_config": dataset_config,
        "config_snippet": actionformer_snippet(dataset_config),
        "note": NOTE.format(ext=file_ext, loaders=LOADERS[file_ext]),
        "source": str(Path(output_dir).resolve()),
        "settings": done.settings,
    }
    path = done.dest / SUMMARY_NAME
    outputs.save_json(path, summary)
    log.info(
        "exported %d videos to %s (feat_stride %d, num_frames %s, fps %s)",
        len(done.videos),
        done.dest,
        done.stride,
        num_frames,
        done.fps,
    )
    return path


def export_opentad(output_dir: Path, dest: Path) -> Path:
    """Write one <video id>.npy per video, missing_files.txt and opentad_features.json; returns its path."""
    done = _write_videos(output_dir, dest, ".npy", "OpenTAD")
    offset = _plain(round(done.offset, 3))
    if not float(offset).is_integer():
        log.warning(
            "row 0 is centred at frame %s; OpenTAD truncates offset_frames to an integer (%d)",
            offset,
            int(offset),
        )
    outputs.atomic_write(
        done.dest / MISSING_NAME, lambda f: f.write("".join(f"{vid}\n" for vid in done.failed_ids).encode())
    )
    data_path = str(done.dest.resolve()) + "/"
    summary: dict[str, Any] = {
        "format": "opentad",
        "feature_stride": done.stride,
        "sample_stride": 1,
        "offset_frames": offset,
        "fps": done.fps,
        "dim": done.dim,
        "dtype": done.dtype,
        "window_frames": _plain(done.span),
        "data_path": data_path,
        "block_list": data_path + MISSING_NAME,
        "feat_format": "npy",
        "videos": done.videos,
        "failed": done.failed_ids,
    }
    summary["config_snippet"] = opentad_snippet(summary)
    summary["note"] = OPENTAD_NOTE
    summary["source"] = str(Path(output_dir).resolve())
    summary["settings"] = done.settings
    path = done.dest / OPENTAD_SUMMARY_NAME
    outputs.save_json(path, summary)
    log.info(
        "exported %d videos to %s (feature_stride %d, offset_frames %s, fps %s; %d failed in the block list)",
        len(done.videos),
        done.dest,
        done.stride,
        offset,
        done.fps,
        len(done.failed_ids),
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, required=True, help="target tool")
    parser.add_argument(
        "--ext",
        choices=FILE_EXTS,
        default=None,
        help="actionformer only: .npz (EPIC loader, the default) or .npy (THUMOS, Ego4D, ActivityNet loaders)",
    )
    parser.add_argument("output_dir", type=Path, help="output dir of an extraction run")
    parser.add_argument("dest", type=Path, help="folder to write the exported files into")
    args = parser.parse_args(argv)
    if args.format == "opentad" and args.ext not in (None, ".npy"):
        parser.error("--format opentad writes .npy files (OpenTAD's LoadFeats feat_format npy)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.format == "opentad":
            summary = export_opentad(args.output_dir, args.dest)
        else:
            summary = export_actionformer(args.output_dir, args.dest, args.ext or ".npz")
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    snippet = json.loads(summary.read_text())["config_snippet"]
    print(f"config for {args.format} (also in {summary.name}):\n{snippet}", file=sys.stderr)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Read OURS (an output dir, a `features.h5`, one `.npy` or a `pipeline.export` folder) for the comparison.

Output dirs (either store) are read through the project's one output reader (`pipeline.outputs.reader`,
via `pipeline.inspect.iter_videos`). Videos are keyed by `pipeline.export.video_id(key)` (the key's last component), the id the exported files
and the released files carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import naming, outputs
from pipeline.consolidate import INDEX_ATTR, RECORDS_ATTR
from pipeline.export import OPENTAD_SUMMARY_NAME, SUMMARY_NAME, video_id
from pipeline.inspect import InspectError, Report, iter_videos
from pipeline.outputs.reader import ReadError, flatten, scan


@dataclass
class OurVideo:
    """One of our videos: its features and, when known, its row timestamps (start, end, centre s)."""

    id: str
    key: str
    features: np.ndarray
    timestamps: np.ndarray | None


@dataclass
class Ours:
    """Our videos by id, our extraction settings (dotted names, empty when unknown) and problems."""

    path: Path
    kind: str
    videos: dict[str, OurVideo] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _h5_settings(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as h5:
        settings = {}
        for name, value in h5.attrs.items():
            if name in (INDEX_ATTR, RECORDS_ATTR):
                continue
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            settings[name] = None if value == "null" else value
        return settings


def _export_folder(path: Path, summary_path: Path, ours: Ours) -> None:
    """A `pipeline.export` folder: its summary names the videos and the row grid."""
    summary = json.loads(summary_path.read_text())
    ours.settings = flatten(summary.get("settings") or {})
    if summary.get("format") == "opentad":
        stride, first = float(summary["feature_stride"]), float(summary["offset_frames"])
    else:
        stride, first = float(summary["feat_stride"]), float(summary["num_frames"]) / 2
    half = float(summary.get("window_frames") or stride) / 2
    for vid, info in sorted((summary.get("videos") or {}).items()):
        file = path / f"{vid}.npz"
        if not file.is_file():
            file = path / f"{vid}.npy"
        try:
            features = np.load(file)["feats"] if file.suffix == ".npz" else np.load(file)
        except (OSError, ValueError, KeyError) as error:
            ours.problems.append(f"{file}: unreadable ({error})")
            continue
        fps = info.get("fps") or summary.get("fps")
        stamps = None
        if fps:
            centre = (first + stride * np.arange(len(features))) / float(fps)
            stamps = np.stack([centre - half / float(fps), centre + half / float(fps), centre], axis=1)
        ours.videos[vid] = OurVideo(vid, str(info.get("key", vid)), features, stamps)


def read_ours(path: Path | str) -> Ours:
    """Our videos, settings and problems; InspectError when `path` is none of our layouts."""
    path = Path(path)
    for name in (SUMMARY_NAME, OPENTAD_SUMMARY_NAME):
        if (path / name).is_file():
            ours = Ours(path, f"export folder ({name})")
            _export_folder(path, path / name, ours)
            return ours
    kind = "output dir" if path.is_dir() else "features.h5" if path.suffix in (".h5", ".hdf5") else "one .npy"
    ours = Ours(path, kind)
    report = Report(path)
    for key, features, stamps in iter_videos(path, report=report):
        vid = video_id(key)
        if vid in ours.videos:
            ours.problems.append(
                f"our keys {ours.videos[vid].key!r} and {key!r} share the id {vid!r}: the first is compared"
            )
            continue
        ours.videos[vid] = OurVideo(vid, key, features, stamps)
    ours.problems.extend(report.problems)
    if path.is_dir():
        try:
            ours.settings = flatten(scan([path], strict=False).settings or {})
        except ReadError as error:
            ours.problems.append(str(error))
    elif h5py.is_hdf5(path):
        ours.settings = _h5_settings(path)
    elif path.suffix == ".npy" and Path(naming.sidecar_of_feature(str(path))).is_file():
        sidecar = outputs.read_sidecar(Path(naming.sidecar_of_feature(str(path))))
        ours.settings = flatten(outputs.settings_of_sidecar(sidecar))
    return ours


__all__ = ["InspectError", "OurVideo", "Ours", "read_ours"]

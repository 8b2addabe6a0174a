"""ActionFormer's layout (github.com/happyharrycn/actionformer_release, libs/datasets/): one
`<feat_folder>/<file_prefix><id><file_ext>` per video; the EPIC loader (epic_kitchens.py) reads
`np.load(...)["feats"]` from `.npz`, the THUMOS, Ego4D and ActivityNet loaders (thumos14.py, ego4d.py,
anet.py) `np.load(...)` of `.npy`; a (T, C) array each loader transposes. A time in seconds maps to a row as
`(seconds * fps - 0.5 * num_frames) / feat_stride`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline import outputs
from pipeline.export.common import plain, write_videos

log = logging.getLogger(__name__)

SUMMARY_NAME = "actionformer_features.json"
NOTE = (
    "Put dataset_config under `dataset:` in an ActionFormer config with a loader that reads {ext} files "
    "({loaders}). Video ids in the annotation JSON must be the {ext} file stems. When fps is null, give "
    "each video's fps in the annotation JSON and set default_fps: null. input_dim must equal dim; "
    "max_seq_len and the rest are model choices."
)
LOADERS = {".npz": "dataset_name: epic", ".npy": "dataset_name: thumos, ego4d or anet"}


def _yaml_value(value: object) -> str:
    """A scalar as ActionFormer's YAML configs write it (~ for None)."""
    return "~" if value is None else str(value)


def actionformer_snippet(dataset_config: dict[str, Any]) -> str:
    """The `dataset:` lines of an ActionFormer YAML config for this export."""
    lines = ["dataset: {"]
    lines += [f"  {name}: {_yaml_value(value)}," for name, value in dataset_config.items()]
    return "\n".join([*lines, "}"])


def export_actionformer(output_dir: Path, dest: Path, file_ext: str = ".npz") -> Path:
    """Write one <video id><file_ext> per video plus actionformer_features.json; returns the JSON's path."""
    done = write_videos(output_dir, dest, file_ext, "ActionFormer")
    num_frames = plain(round(2 * done.offset, 3))
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
        "window_frames": plain(done.span),
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

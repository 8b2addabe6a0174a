"""TSP's merged feature file (github.com/HumamAlwassel/TSP, extract_features/): the layout of its released
`r2plus1d_34-tsp_on_{activitynet,thumos14}-*_features.h5`, as merge_pkl_files_into_one_h5_feature_file.py
writes it: one HDF5 file, one dataset per video at the file's root, named by the video's file name cut at
its first "." (eval_video_dataset.py:109 names each video's pickle so, the merge keeps that name), holding
the video's (rows, dim) float32 features, chunked, gzip level 9, no attributes.

Readers: ActionFormer's ActivityNet loader (libs/datasets/anet.py) opens one such file itself when its
`feat_folder` contains ".hdf5" and reads `h5[file_prefix + id][()]` as float32, hence the file's name
`tsp_features.hdf5`; ActivityNet's annotation ids lack the `v_` its video files start with, hence
`file_prefix: v_` when every name starts with it. Code written for TSP's released files reads it with
h5py. ActionFormer's npy loaders and OpenTAD read one .npy per video: `--format actionformer --ext .npy`,
`--format opentad`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import outputs
from pipeline.export.actionformer import actionformer_snippet
from pipeline.export.common import ExportError, count_row_grid, grid_offset, plain, scan_flat, video_id
from pipeline.outputs.reader import ReadError

log = logging.getLogger(__name__)

H5_NAME = "tsp_features.hdf5"
TSP_SUMMARY_NAME = "tsp_h5_features.json"
COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 9}
ACTIVITYNET_PREFIX = "v_"
TSP_NOTE = (
    "TSP's layout: one float32 (rows, dim) dataset per video at the root of {file}, named by the video's "
    "file name up to its first '.'; read one with h5py.File(path)[name][()]. ActionFormer (dataset_name: "
    "anet) reads the file itself when feat_folder contains '.hdf5': put dataset_config under `dataset:`; "
    "file_prefix is v_ when every name starts with v_ (ActivityNet's annotation ids lack it), else none: the "
    "annotation ids must then be the names. Videos without rows and failed videos are not in the file (TSP "
    "has none either): see empty and failed."
)


def dataset_name(key: str) -> str:
    """TSP's name of a video: its file name (the key's last component) up to the first '.'."""
    return video_id(key).split(".", 1)[0]


def export_tsp_h5(output_dir: Path, dest: Path, file_name: str = H5_NAME) -> Path:
    """Write `<dest>/<file_name>` in TSP's merged layout plus tsp_h5_features.json; returns the JSON's path.

    Names are checked (two videos with one name, or an empty name, are refused) before anything is written;
    videos without rows are left out with a warning.
    """
    found = scan_flat(output_dir, "TSP's layout (rows, dim)")
    names: dict[str, str] = {}
    for entry in found.videos:
        name = dataset_name(entry.key)
        if not name:
            raise ExportError(f"key {entry.key!r} gives an empty TSP name (its file name starts with '.')")
        if name in names:
            raise ExportError(
                f"TSP name {name!r} is shared by keys {names[name]!r} and {entry.key!r} (TSP names a video by "
                "its file name up to the first '.')"
            )
        names[name] = entry.key
    entries = sorted(found.videos, key=lambda e: dataset_name(e.key))
    empty = [dataset_name(e.key) for e in entries if not e.shape[0]]
    for name in empty:
        log.warning(
            "%s has no rows: left out of %s (TSP's layout has no video without a clip)", name, file_name
        )
    kept = [e for e in entries if e.shape[0]]
    if not kept:
        raise ExportError(f"{output_dir}: no video has a row to export")
    if ".hdf5" not in file_name:
        log.warning(
            "%s: ActionFormer reads an HDF5 feat_folder only when its path contains '.hdf5'", file_name
        )
    settings = found.settings or {}
    stride = int(settings["stride"])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / file_name
    widths: dict[float, Counter[float]] = defaultdict(Counter)
    videos: dict[str, dict[str, Any]] = {}
    with outputs.atomic_file(path) as temp, h5py.File(temp, "w") as h5:
        for entry in kept:
            name = dataset_name(entry.key)
            try:
                feats = entry.load().astype(np.float32, copy=False)
            except ReadError as error:
                raise ExportError(str(error)) from error
            h5.create_dataset(name, data=feats, chunks=True, **COMPRESSION)
            fps = count_row_grid(widths, entry, stride)
            videos[name] = {"key": entry.key, "rows": int(feats.shape[0]), "fps": fps}
    span, offset = grid_offset(widths, settings)
    rates = {v["fps"] for v in videos.values()}
    fps_all = rates.pop() if len(rates) == 1 else None
    dim = int(kept[0].shape[-1])
    num_frames = plain(round(2 * offset, 3))
    prefix = ACTIVITYNET_PREFIX if all(n.startswith(ACTIVITYNET_PREFIX) for n in videos) else None
    dataset_config = {
        "feat_folder": str(path.resolve()),
        "file_prefix": prefix,
        "file_ext": None,  # not read for an HDF5 feat_folder
        "input_dim": dim,
        "feat_stride": stride,
        "num_frames": num_frames,
        "default_fps": fps_all,
    }
    failed = sorted({dataset_name(f.key) for f in found.failed} - set(names))
    summary = {
        "format": "tsp_h5",
        "file": str(path.resolve()),
        "layout": "one (rows, dim) float32 dataset per video at the root, gzip 9, chunked",
        "feat_stride": stride,
        "num_frames": num_frames,
        "fps": fps_all,
        "dim": dim,
        "dtype": "float32",
        "window_frames": plain(span),
        "videos": videos,
        "empty": empty,
        "failed": failed,
        "dataset_config": dataset_config,
        "config_snippet": actionformer_snippet(dataset_config),
        "note": TSP_NOTE.format(file=file_name),
        "source": str(Path(output_dir).resolve()),
        "settings": settings,
    }
    summary_path = dest / TSP_SUMMARY_NAME
    outputs.save_json(summary_path, summary)
    log.info(
        "exported %d videos to %s (feat_stride %d, num_frames %s, fps %s; %d without rows, %d failed)",
        len(videos),
        path,
        stride,
        num_frames,
        fps_all,
        len(empty),
        len(failed),
    )
    return summary_path

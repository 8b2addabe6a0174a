"""Two streams joined: an RGB run and an optical-flow run of the same videos become one (rows, rgb dim + flow
dim) array per video, RGB first, rows cut to the count both streams have, in ActionFormer's layout.

That is how the two-stream I3D features of THUMOS14 are released: ActionFormer's `thumos/i3d_features`
hold one `<video id>.npy` per video, (T, 2048) float32, the first 1024 columns from the RGB stream and the
last 1024 from the flow stream (actionformer_release issue #60; libs/datasets/thumos14.py reads
`np.load(<feat_folder>/<file_prefix><id><file_ext>)` and transposes it), from CMCS's per-stream features,
whose two streams have the same number of rows (CMCS utils.py asserts equal frame counts). OpenTAD's
THUMOS14 feature configs read the same files (LoadFeats, feat_format npy).

Each run keeps its own manifest and resumes as any run does; this reads both output dirs and writes:
    <video id>.npy | .npz          (rows, rgb dim + flow dim) in the runs' dtype ("feats" in a .npz)
    two_stream_features.json       the row grid (feat_stride, num_frames, fps), dim, both sources and their
                                   settings, per video the rows of each stream and of the join, the videos
                                   only one stream has, ActionFormer's `dataset:` values and its snippet.
The two runs must cut the same windows (fps, frames per clip, tau, stride, window, padding) and their rows
must cover the same frames: the start times of every joined row must agree (an RGB run without
data.stored_frames.skip_first starts one frame before the flow run: refused, naming that setting).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import outputs
from pipeline.export.actionformer import LOADERS, actionformer_snippet
from pipeline.export.common import FILE_EXTS, ExportError, grid_offset, ids_of, plain, scan_flat
from pipeline.outputs.reader import ReadError, Scan, StoredVideo

log = logging.getLogger(__name__)

TWO_STREAM_SUMMARY_NAME = "two_stream_features.json"
STREAMS = ("rgb", "flow")
# The window settings both runs must share for their rows to be the same clips.
GRID_SETTINGS = ("fps", "num_frames", "sampling_rate", "stride", "window", "pad")
TIME_TOLERANCE_S = 1e-4  # row timestamps are frame times: far below any frame period
NOTE = (
    "Put dataset_config under `dataset:` in an ActionFormer config ({loaders}); video ids in the annotation "
    "JSON must be the {ext} file stems; input_dim must equal dim. num_frames is where the rows are: row t is "
    "centred at (t * feat_stride + num_frames / 2) / fps. ActionFormer's own THUMOS14 I3D config says 16 "
    "for the released features although their rows, like these with data.stored_frames.skip_first, start "
    "at the video's second frame (dense_flow writes no image for the first): 16 reproduces its training "
    "setup, the value here places the rows where they are."
)


def _stream_of(settings: dict[str, Any]) -> str:
    return str(settings.get("stream", "rgb"))


def check_runs(rgb: Scan, flow: Scan, rgb_dir: Path, flow_dir: Path) -> None:
    """ExportError unless the first run is an RGB run, the second a flow run, with the same windows and dtype."""
    a, b = rgb.settings or {}, flow.settings or {}
    if _stream_of(a) != "rgb" or _stream_of(b) != "flow":
        raise ExportError(
            f"{rgb_dir} is a {_stream_of(a)} run and {flow_dir} a {_stream_of(b)} run: give the RGB run's "
            "output dir first and the flow run's with --flow"
        )
    differ = [f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in GRID_SETTINGS if a.get(k) != b.get(k)]
    if differ:
        raise ExportError(
            f"the two runs cut different clips: {', '.join(differ)}; extract both with the same data settings"
        )
    dtypes = {rgb.videos[0].dtype, flow.videos[0].dtype}
    if len(dtypes) > 1:
        raise ExportError(f"the two runs saved different dtypes {sorted(dtypes)}: use the same output.dtype")


def _timestamps(entry: StoredVideo) -> tuple[np.ndarray, dict[str, Any]]:
    return entry.timestamps, {"fps": entry.sidecar.fps, "duration": entry.sidecar.duration}


def export_two_stream(output_dir: Path, dest: Path, file_ext: str = ".npy", *, flow_dir: Path) -> Path:
    """Join the RGB run in `output_dir` and the flow run in `flow_dir` into one <video id><file_ext> per video
    (RGB columns first) plus two_stream_features.json; returns the JSON's path."""
    if file_ext not in FILE_EXTS:
        raise ExportError(f"file extension must be one of {FILE_EXTS} (got {file_ext!r})")
    rgb_dir, flow_dir = Path(output_dir), Path(flow_dir)
    runs = {"rgb": scan_flat(rgb_dir, "the join"), "flow": scan_flat(flow_dir, "the join")}
    check_runs(runs["rgb"], runs["flow"], rgb_dir, flow_dir)
    entries: dict[str, dict[str, StoredVideo]] = {}
    for name, found in runs.items():
        by_key = {v.key: v for v in found.videos}
        entries[name] = {vid: by_key[key] for vid, key in ids_of(found).items()}
    both = sorted(set(entries["rgb"]) & set(entries["flow"]))
    only = {name: sorted(set(entries[name]) - set(both)) for name in STREAMS}
    for name, ids in only.items():
        if ids:
            log.warning(
                "%d video(s) only in the %s run are not exported: %s", len(ids), name, ", ".join(ids[:5])
            )
    if not both:
        raise ExportError(f"no video is in both runs ({rgb_dir}, {flow_dir})")
    settings = runs["rgb"].settings or {}
    stride = int(settings["stride"])
    # every check before anything is written: rows of both streams must cover the same frames
    plans: dict[str, tuple[int, np.ndarray, dict[str, Any]]] = {}
    for vid in both:
        (rgb_stamps, sidecar), (flow_stamps, _) = (_timestamps(entries[s][vid]) for s in STREAMS)
        rows = min(len(rgb_stamps), len(flow_stamps))
        # start times: a row's end is clamped at its video's end, where two streams may end differently
        gap = np.abs(rgb_stamps[:rows, 0] - flow_stamps[:rows, 0]).max() if rows else 0.0
        if gap > TIME_TOLERANCE_S:
            fps = float(sidecar["fps"])
            raise ExportError(
                f"{vid}: RGB row 0 covers {rgb_stamps[0, 0]:.4f}-{rgb_stamps[0, 1]:.4f} s, flow row 0 "
                f"{flow_stamps[0, 0]:.4f}-{flow_stamps[0, 1]:.4f} s ({gap * fps:.2f} frames apart): flow field k "
                "is the motion into frame k, so the RGB stream must start at frame 1 too: extract it with "
                "data.stored_frames.skip_first=true"
            )
        plans[vid] = (rows, rgb_stamps[:rows], sidecar)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    widths: dict[float, Counter[float]] = defaultdict(Counter)
    videos: dict[str, dict[str, Any]] = {}
    dims = {name: runs[name].videos[0].shape[-1] for name in STREAMS}
    for vid in both:
        rows, stamps, sidecar = plans[vid]
        try:
            rgb, flow = (entries[s][vid].load() for s in STREAMS)
        except ReadError as error:
            raise ExportError(str(error)) from error
        joined = np.concatenate([rgb[:rows], flow[:rows]], axis=1)
        if file_ext == ".npz":
            outputs.atomic_write(dest / f"{vid}.npz", partial(np.savez, feats=joined))
        else:
            outputs.save_array(dest / f"{vid}.npy", joined)
        fps = float(sidecar["fps"])
        for w, o in zip(
            np.round((stamps[:, 1] - stamps[:, 0]) * fps, 3).tolist(),
            np.round(stamps[:, 2] * fps - np.arange(rows) * stride, 3).tolist(),
            strict=True,
        ):
            widths[w][o] += 1
        videos[vid] = {
            "rgb_key": entries["rgb"][vid].key,
            "flow_key": entries["flow"][vid].key,
            "rows": rows,
            "rgb_rows": len(rgb),
            "flow_rows": len(flow),
            "fps": fps,
            "duration": sidecar.get("duration"),
        }
    span, offset = grid_offset(widths, settings)
    rates = {v["fps"] for v in videos.values()}
    fps_all = rates.pop() if len(rates) == 1 else None
    num_frames = plain(round(2 * offset, 3))
    dim = dims["rgb"] + dims["flow"]
    dataset_config = {
        "feat_folder": str(dest.resolve()),
        "file_prefix": None,
        "file_ext": file_ext,
        "input_dim": dim,
        "feat_stride": stride,
        "num_frames": num_frames,
        "default_fps": fps_all,
    }
    summary = {
        "format": "two_stream",
        "layout": "actionformer",
        "feat_stride": stride,
        "num_frames": num_frames,
        "fps": fps_all,
        "dim": dim,
        "columns": {"rgb": [0, dims["rgb"]], "flow": [dims["rgb"], dim]},
        "dtype": runs["rgb"].videos[0].dtype,
        "window_frames": plain(span),
        "offset_frames": plain(round(offset, 3)),
        "videos": videos,
        "only_in_one_stream": only,
        "failed": {name: sorted({f.key for f in runs[name].failed}) for name in STREAMS},
        "streams": {
            name: {
                "source": str((rgb_dir if name == "rgb" else flow_dir).resolve()),
                "model": runs[name].model,
                "dim": dims[name],
                "settings": runs[name].settings,
            }
            for name in STREAMS
        },
        "dataset_config": dataset_config,
        "config_snippet": actionformer_snippet(dataset_config),
        "note": NOTE.format(ext=file_ext, loaders=LOADERS[file_ext]),
    }
    path = dest / TWO_STREAM_SUMMARY_NAME
    outputs.save_json(path, summary)
    log.info(
        "joined %d videos into %s (%d + %d columns, feat_stride %d)",
        len(videos),
        dest,
        dims["rgb"],
        dims["flow"],
        stride,
    )
    return path

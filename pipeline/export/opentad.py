"""OpenTAD's layout (github.com/sming256/OpenTAD, opentad/datasets/transforms/loading.py `LoadFeats`):
`{data_path}/{prefix}{video_name}{suffix}.npy` read with `np.load(...).astype(np.float32)`, then the configs'
`Rearrange("t c -> c t")`. Its padding datasets (opentad/datasets/base/padding_dataset.py, thumos.py) map an
annotated frame f to the row `(f - offset_frames) / (feature_stride * sample_stride)` and read `block_list`
(the configs use `<data_path>missing_files.txt`) as one video name per line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline import outputs
from pipeline.export.common import plain, write_videos

log = logging.getLogger(__name__)

OPENTAD_SUMMARY_NAME = "opentad_features.json"
MISSING_NAME = "missing_files.txt"
OPENTAD_NOTE = (
    "Set these in each of dataset.train / val / test of an OpenTAD feature config with LoadFeats "
    "(feat_format npy, no prefix or suffix: annotation video names must be the file stems; ActivityNet's "
    "configs add prefix 'v_' to names that lack it) and Rearrange 't c -> c t'; the model's projection "
    "in_channels must equal dim. fps is used by datasets whose annotations are in seconds (EPIC-Kitchens, "
    "Ego4D); THUMOS-style datasets convert with the annotation's frame count. When fps is null, videos "
    "differ: see videos.<id>.fps."
)


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


def export_opentad(output_dir: Path, dest: Path) -> Path:
    """Write one <video id>.npy per video, missing_files.txt and opentad_features.json; returns its path."""
    done = write_videos(output_dir, dest, ".npy", "OpenTAD")
    offset = plain(round(done.offset, 3))
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
        "window_frames": plain(done.span),
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

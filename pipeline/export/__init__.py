"""Export an output dir's features for temporal action localisation trainers: ActionFormer, OpenTAD, and
TSP's merged HDF5 file.

One module per format (`actionformer`, `opentad`, `two_stream`, `tsp_h5`), each a function
`export_<format>(output_dir, dest, ...) -> summary path` registered in FORMATS
below; `common` writes the per-video files.

    python -m pipeline.export --format actionformer [--ext .npz|.npy] <output dir> <dest>
    python -m pipeline.export --format opentad <output dir> <dest>
    python -m pipeline.export --format two_stream --flow <flow run dir> [--ext .npy|.npz] <rgb run dir> <dest>
    python -m pipeline.export --format tsp_h5 <output dir> <dest>

`two_stream` joins an RGB run and an optical-flow run (data.stream=flow) of the same videos: one (rows,
rgb dim + flow dim) file per video, RGB first, rows cut to the common count (ActionFormer's THUMOS14 I3D
layout, 2048-d); see `pipeline.export.two_stream`.

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
    .exported.json                what each file was written from: a rerun rewrites only the files whose
                                  video changed (a million-video export costs what changed).
    tsp_features.hdf5             (tsp_h5) instead of the per-video files: TSP's released layout, one
                                  (rows, dim) float32 dataset per video at the root named by its file name
                                  up to the first '.', gzip 9; ActionFormer's ActivityNet loader reads it
                                  (feat_folder containing '.hdf5'). With tsp_h5_features.json ("videos",
                                  "empty", "failed", "dataset_config", "config_snippet", "note").
The command prints the summary's path on stdout and the config snippet for the trainer on stderr.
Multi-crop features (rows, crops, dim) are refused: extract with data.crop_reduce=mean.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.export.actionformer import SUMMARY_NAME, actionformer_snippet, export_actionformer
from pipeline.export.common import FILE_EXTS, WRITTEN_NAME, ExportError, video_id
from pipeline.export.opentad import MISSING_NAME, OPENTAD_SUMMARY_NAME, export_opentad, opentad_snippet
from pipeline.export.tsp_h5 import H5_NAME, TSP_SUMMARY_NAME, export_tsp_h5
from pipeline.export.two_stream import TWO_STREAM_SUMMARY_NAME, export_two_stream

FORMATS: dict[str, Callable[..., Path]] = {
    "actionformer": export_actionformer,
    "opentad": export_opentad,
    "two_stream": export_two_stream,
    "tsp_h5": export_tsp_h5,
}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(FORMATS), required=True, help="target tool")
    parser.add_argument(
        "--ext",
        choices=FILE_EXTS,
        default=None,
        help="actionformer: .npz (EPIC loader, the default) or .npy (THUMOS, Ego4D, ActivityNet loaders); "
        "two_stream: .npy (the default) or .npz",
    )
    parser.add_argument(
        "--flow",
        type=Path,
        default=None,
        metavar="FLOW_DIR",
        help="two_stream only (required there): the output dir of the flow run (data.stream=flow)",
    )
    parser.add_argument(
        "output_dir", type=Path, help="output dir of an extraction run (two_stream: the RGB run)"
    )
    parser.add_argument("dest", type=Path, help="folder to write the exported files into")
    args = parser.parse_args(argv)
    if args.format == "opentad" and args.ext not in (None, ".npy"):
        parser.error("--format opentad writes .npy files (OpenTAD's LoadFeats feat_format npy)")
    if (args.format == "two_stream") != (args.flow is not None):
        parser.error("--flow FLOW_DIR goes with --format two_stream (and two_stream needs it)")
    if args.format == "tsp_h5" and args.ext is not None:
        parser.error(f"--format tsp_h5 writes one HDF5 file ({H5_NAME})")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.format == "opentad":
            summary = export_opentad(args.output_dir, args.dest)
        elif args.format == "two_stream":
            summary = export_two_stream(args.output_dir, args.dest, args.ext or ".npy", flow_dir=args.flow)
        elif args.format == "tsp_h5":
            summary = export_tsp_h5(args.output_dir, args.dest)
        else:
            summary = export_actionformer(args.output_dir, args.dest, args.ext or ".npz")
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    snippet = json.loads(summary.read_text())["config_snippet"]
    print(f"config for {args.format} (also in {summary.name}):\n{snippet}", file=sys.stderr)
    print(summary)
    return 0


__all__ = [
    "WRITTEN_NAME",
    "FILE_EXTS",
    "FORMATS",
    "H5_NAME",
    "MISSING_NAME",
    "OPENTAD_SUMMARY_NAME",
    "SUMMARY_NAME",
    "TWO_STREAM_SUMMARY_NAME",
    "TSP_SUMMARY_NAME",
    "ExportError",
    "actionformer_snippet",
    "export_actionformer",
    "export_opentad",
    "export_two_stream",
    "export_tsp_h5",
    "main",
    "opentad_snippet",
    "video_id",
]

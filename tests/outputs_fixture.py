"""Synthetic output dirs in the extraction engine's format (npy + sidecar + manifest), for tests.

Files are written with `pipeline.outputs` (atomic npy/JSON writes, manifest appends), names with
`pipeline.naming` and timestamps with `pipeline.sampling`, so they match what a real run leaves behind.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__, naming, outputs, sampling

CHECKPOINT_SHA256 = "ab" * 32


def default_settings(**overrides: Any) -> dict[str, Any]:
    """Extraction settings as the engine records them (SlowFast-like, 32 frames, stride 16 at 30 fps)."""
    settings: dict[str, Any] = {
        "model": "slowfast_r50",
        "feature_layer": "head.projection",
        "checkpoint_sha256": CHECKPOINT_SHA256,
        "random_weights": False,
        "fps": 30.0,
        "num_frames": 32,
        "sampling_rate": 1,
        "stride": 16,
        "window": "sliding",
        "pad": "zero",
        "resize": {"mode": "square", "size": [256, 256], "short_side": 256, "crop": 256, "backend": "torch"},
        "crops": 1,
        "crop_reduce": "stack",
        "dtype": "float32",
        "channel_order": "rgb",
        "mean": [0.45, 0.45, 0.45],
        "std": [0.225, 0.225, 0.225],
        "precision": "fp32",
    }
    for name, value in overrides.items():
        settings[name] = value
    return settings


def synthetic_features(key: str, rows: int, dim: int, crops: int | None, dtype: str) -> np.ndarray:
    """Deterministic random features for one video (seeded by its key)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    shape = (rows, dim) if crops is None else (rows, crops, dim)
    return rng.standard_normal(shape).astype(dtype)


def video_timestamps(rows: int, settings: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """(rows, 3) start/end/centre seconds of a video with `rows` clips, and its frame count."""
    spec = sampling.WindowSpec(
        num_frames=settings["num_frames"],
        sampling_rate=settings["sampling_rate"],
        stride=settings["stride"],
        window=settings["window"],
        pad=settings["pad"],
    )
    frames = rows * spec.stride
    fps = float(settings["fps"])
    windows = sampling.clip_windows(frames, spec)
    assert windows.shape[0] == rows, (windows.shape, rows)
    if rows == 0:
        return np.zeros((0, 3)), 0
    return sampling.clip_timestamps(windows, np.arange(frames) / fps, 1.0 / fps, frames), frames


def make_output_dir(
    root: Path,
    videos: Mapping[str, int],
    dim: int = 8,
    *,
    crops: int | None = None,
    failed: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    dtype: str = "float32",
    num_shards: int = 1,
    logits: Iterable[str] = (),
    store: str = "files",
    hour: int = 0,
) -> Path:
    """Write an output dir under `root` with one feature file per `videos` key (value: rows) and
    failure records for the `failed` keys; `arrays` replaces the features of some keys; `logits` names
    the logit heads to save (e.g. ["logits"]); `store` "packed" appends them to packed parts instead,
    as a packed run does; `hour` dates the records (a later hour: a later run). Returns root."""
    settings = copy.deepcopy(dict(settings or default_settings(dtype=dtype)))
    if crops is not None:
        settings["crops"] = crops
    arrays = dict(arrays or {})
    num_frames = settings["num_frames"]
    fps = float(settings["fps"])
    config = {"model": {"name": settings["model"]}, "data": {"root": "/data/videos"}, "output_dir": str(root)}
    (root / "runs").mkdir(parents=True, exist_ok=True)
    outputs.save_json(
        root / "runs" / "20250101-000000.json", {"started": outputs.now_iso(), "config": config}
    )
    packed: dict[int, outputs.PackedStore] = {}
    latest, _ = outputs.latest_records(root)  # a packed store keeps what the manifests name
    for number, (key, rows) in enumerate(sorted(videos.items())):
        array = arrays.get(key)
        if array is None:
            array = synthetic_features(key, rows, dim, crops, dtype)
        rows = array.shape[0]
        stamps, frames = video_timestamps(rows, settings)
        npy_rel = naming.feature_relpath(key, num_frames)
        heads, head_arrays = {}, {}
        for number_head, head in enumerate(logits):  # named like the engine: <key>_<T>.<head>.npy
            heads[head] = npy_rel[: -len(".npy")] + f".{head}.npy"
            head_arrays[head] = np.full((rows, 5), number_head, np.float32)
        if store == "files":
            outputs.save_array(root / npy_rel, array)
            for head, values in head_arrays.items():
                outputs.save_array(root / heads[head], values)
        video_rel = f"{key}.mp4"
        sidecar = {
            "video": video_rel,
            "key": key,
            "source": f"/data/videos/{video_rel}",
            "kind": "video",
            "shape": list(array.shape),
            "rows": rows,
            "dim": array.shape[-1],
            "dtype": str(array.dtype),
            "timestamps": stamps.tolist(),
            "fps": fps,
            "native_fps": 29.97,
            "frames": frames,
            "duration": frames / fps,
            "decode_seconds": 0.5,
            "seconds": 1.0,
            "settings": settings,
            "model": settings["model"],
            "checkpoint": {
                "path": "/ckpt/model.pyth",
                "sha256": settings["checkpoint_sha256"],
                "random": False,
            },
            "logits": heads or None,
            "package_version": __version__,
            "config": config,
            "created": outputs.now_iso(),
        }
        shard = number % num_shards
        if store == "packed":
            if shard not in packed:
                header = {"settings": settings, "config": config}
                packed[shard] = outputs.PackedStore(
                    root, shard, num_shards, header, outputs.part_extents(latest), outputs.part_counts(latest)
                )
            sidecar["logits"] = None
            stored = packed[shard].write(
                key, outputs.VideoArrays(array, stamps, head_arrays), outputs.Sidecar.from_json(sidecar)
            )
            where = stored.fields()
        else:
            outputs.save_json(root / naming.sidecar_relpath(key, num_frames), sidecar)
            where = {
                "output": npy_rel,
                "sha256": outputs.file_sha256(root / npy_rel),
                "size": (root / npy_rel).stat().st_size,
            }
        record = {
            "key": key,
            "path": video_rel,
            "status": "ok",
            "outcome": "ok",
            "rows": rows,
            "dim": array.shape[-1],
            "seconds": 1.0,
            "frames": frames,
            **where,
            "error": None,
            "settings": settings,
            "time": f"2025-01-01T{hour:02d}:00:{number % 60:02d}+00:00",
        }
        outputs.append_record(root / naming.manifest_relpath(shard, num_shards), record)
    for key in failed:
        record = {
            "key": key,
            "path": f"{key}.mp4",
            "status": "failed",
            "outcome": "failed",
            "rows": None,
            "dim": None,
            "seconds": 0.1,
            "frames": None,
            "output": None,
            "sha256": None,
            "size": None,
            "error": f"DecodeError: {key}.mp4: moov atom not found",
            "settings": settings,
            "time": f"2025-01-01T{hour:02d}:01:00+00:00",
        }
        outputs.append_record(root / naming.manifest_relpath(0, num_shards), record)
    return root

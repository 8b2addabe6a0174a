"""Output names: the one place where paths inside a run directory are decided.

Used by the writer, resume, consolidation and inspection alike. All paths are relative posix strings.
A video's key is its path relative to the data root minus one known video extension; outputs keep the
key's folders, so "P01/P01_01.MP4" writes "features/P01/P01_01_32.npy".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ts",
    ".mts",
)  # compared case-insensitively

OUTPUTS_ROOT = "outputs"  # default parent of run directories, relative to the working directory
FEATURES_DIR = "features"
PACKED_DIR = "packed"  # output.store=packed: packed/shard-<i>-of-<N>/part-<k>.npk
MANIFESTS_DIR = "manifests"
LOCKS_DIR = "locks"
RUNS_DIR = "runs"
SHARD_PLAN = "shards.json"
JOB_LOGS_DIR = "slurm_logs"  # submitit job logs (local and Slurm launchers), unless hardware.log_dir
HDF5_NAME = "features.h5"
MANIFEST_GLOB = f"{MANIFESTS_DIR}/shard-*-of-*.jsonl"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_SUFFIX = 48


def has_video_extension(name: str) -> bool:
    """True if name ends with one of VIDEO_EXTENSIONS (case-insensitive)."""
    return name.lower().endswith(VIDEO_EXTENSIONS)


def video_key(rel: str) -> str:
    """Identity of a video: its relative posix path minus ONE known video extension.

    "a/b.c.mp4" -> "a/b.c", "x.MKV" -> "x", frame folder "a/" -> "a". A name that is only an extension
    (".mp4") is kept whole.
    """
    key = rel.rstrip("/")
    if not key:
        raise ValueError(f"video path is empty: {rel!r}")
    lower = key.lower()
    for ext in VIDEO_EXTENSIONS:
        if lower.endswith(ext):
            stem = key[: -len(ext)]
            if stem and not stem.endswith("/"):
                return stem
            break
    return key


def _check_key(key: str) -> None:
    """Reject keys that would escape or break the output tree."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"invalid video key {key!r}: must be a relative path without empty, '.' or '..' parts"
        )


def _check_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")


def feature_relpath(key: str, num_frames: int) -> str:
    """Feature file of a video: "features/<key>_<T>.npy" (seed naming; a.b.mp4 -> features/a.b_32.npy)."""
    _check_key(key)
    _check_frames(num_frames)
    return f"{FEATURES_DIR}/{key}_{num_frames}.npy"


def sidecar_relpath(key: str, num_frames: int) -> str:
    """Metadata sidecar of a video's feature file: same stem, ".json"."""
    return sidecar_of_feature(feature_relpath(key, num_frames))


def logits_relpath(key: str, num_frames: int, head: str) -> str:
    """Logits of one classifier head: the feature file's stem + ".<head>.npy"."""
    return feature_relpath(key, num_frames)[: -len(".npy")] + f".{head}.npy"


def sidecar_of_feature(feature: str) -> str:
    """The sidecar of a feature file (the same stem, ".json"); works on paths too."""
    if not feature.endswith(".npy"):
        raise ValueError(f"not a feature file name: {feature!r}")
    return feature[: -len(".npy")] + ".json"


def feature_of_sidecar(sidecar: str) -> str:
    """The feature file a sidecar describes (the same stem, ".npy"); works on paths too."""
    if not sidecar.endswith(".json"):
        raise ValueError(f"not a sidecar name: {sidecar!r}")
    return sidecar[: -len(".json")] + ".npy"


def run_record_relpath(stamp: str, pid: int) -> str:
    """Record of one invocation: "runs/<stamp>-<pid>.json" (the stamp made file-name safe)."""
    return f"{RUNS_DIR}/{stamp.replace(':', '-')}-{pid}.json"


def _shard_name(shard_index: int, num_shards: int) -> str:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index must be in [0, {num_shards}) with num_shards >= 1, got {shard_index}")
    return f"shard-{shard_index}-of-{num_shards}"


def manifest_relpath(shard_index: int, num_shards: int) -> str:
    """Per-shard manifest (JSON lines): "manifests/shard-{i}-of-{N}.jsonl", i counted from 0."""
    return f"{MANIFESTS_DIR}/{_shard_name(shard_index, num_shards)}.jsonl"


def packed_shard_relpath(shard_index: int, num_shards: int) -> str:
    """A shard's folder of packed parts: "packed/shard-{i}-of-{N}"."""
    return f"{PACKED_DIR}/{_shard_name(shard_index, num_shards)}"


def packed_part_relpath(shard_index: int, num_shards: int, part: int) -> str:
    """One packed part of a shard: "packed/shard-{i}-of-{N}/part-{k:05d}.npk", k counted from 0."""
    if part < 0:
        raise ValueError(f"part must be >= 0, got {part}")
    return f"{packed_shard_relpath(shard_index, num_shards)}/part-{part:05d}.npk"


def lock_relpath(shard_index: int, num_shards: int) -> str:
    """Per-shard lock file: "locks/shard-{i}-of-{N}.lock", i counted from 0."""
    return f"{LOCKS_DIR}/{_shard_name(shard_index, num_shards)}.lock"


def hdf5_logits_name(head: str) -> str:
    """Dataset of a head's logits in a video's HDF5 group: "logits", or "logits_<head>" for other heads."""
    return "logits" if head == "logits" else f"logits_{head}"


def head_of_logits_name(name: str) -> str:
    """The head whose logits a dataset name holds: hdf5_logits_name's inverse."""
    return "logits" if name == "logits" else name.removeprefix("logits_")


def hdf5_group_name(key: str) -> str:
    """HDF5 path of a video in a consolidated file: the key itself, its slashes kept as nested groups.

    "P01/videos/P01_01" is dataset "P01_01" inside group "P01/videos"; keys are unique within a run
    (videolist refuses collisions), so group names are too.
    """
    _check_key(key)
    return key


def _safe(text: str) -> str:
    """Text reduced to a file-name-safe token (runs of other characters become "-")."""
    return _UNSAFE.sub("-", text).strip("-") or "x"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def run_dir_name(
    data_name: str,
    model_name: str,
    num_frames: int,
    sampling_rate: int,
    stride: int,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Run directory, relative to the output root: "<data>/<model>_<T>x<tau>_s<stride>[_<extras>]".

    `extra` holds only settings that differ from their defaults; each adds "_<key><value>" in key order
    (e.g. {"fps": 30} -> "_fps30", floats as %g, True -> "_<key>", None/False skipped). Names are made
    file-name safe. When the extras would exceed 48 characters they become "_x" + a 10-hex digest.
    """
    for name, value in (("num_frames", num_frames), ("sampling_rate", sampling_rate), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    extras = dict(extra or {})
    base = f"{_safe(data_name)}/{_safe(model_name)}_{num_frames}x{sampling_rate}_s{stride}"
    parts = []
    for key in sorted(extras):
        value = extras[key]
        if value is None or value is False:
            continue
        parts.append(_safe(str(key)) if value is True else _safe(f"{key}{_format_value(value)}"))
    suffix = "".join(f"_{p}" for p in parts)
    if len(suffix) > _MAX_SUFFIX:
        canonical = json.dumps(extras, sort_keys=True, default=str)
        suffix = "_x" + hashlib.sha1(canonical.encode()).hexdigest()[:10]
    return base + suffix

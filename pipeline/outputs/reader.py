"""The one reader of output dirs: every usable video of one or more output dirs, whatever store holds it
(a feature file and its sidecar, or a record in a packed part), checked and described the same way for
consolidation, export, inspection and comparison.

A video counts when its newest manifest record is ok; a sidecar with no manifest record is taken as it
is (an output dir assembled by hand); one left by an earlier run of a video that failed since, or
superseded by another file, is skipped. Reading touches only metadata (sidecars, packed records' meta and
headers); the arrays are read when asked (`StoredVideo.load`), and a packed record's bytes are checked
against its manifest's sha256 when loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import naming
from pipeline.errors import PipelineError
from pipeline.outputs.manifest import latest_records
from pipeline.outputs.npyfile import npy_data_offset
from pipeline.outputs.records import FAILED, OK, ManifestRecord, Sidecar, iter_sidecars, read_sidecar
from pipeline.outputs.store import ArrayRef, read_packed, read_record

log = logging.getLogger(__name__)

FEATURE_DTYPES = ("float32", "float16")
RECOMPUTE_HINT = "a rerun of the extraction with output.verify=full recomputes it"


class ReadError(PipelineError, ValueError):
    """An output dir that cannot be read as one set of videos (a broken file, mixed settings...)."""


def record_identity(record: ManifestRecord) -> str:
    """A recorded output's identity: its place and sha256 (what consolidation and export compare)."""
    return f"{record.output}@{record.offset}:{record.sha256}"


@dataclass(frozen=True)
class StoredVideo:
    """One finished video of an output dir: its metadata, and where its arrays are."""

    key: str
    output_dir: Path
    sidecar: Sidecar
    features: ArrayRef
    logits: dict[str, ArrayRef]  # HDF5 dataset name ("logits", "logits_<head>") -> the array
    where: Path  # the sidecar (files store) or the part (packed), for messages
    record: ManifestRecord | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.features.shape

    @property
    def dtype(self) -> str:
        return self.features.dtype.name

    @property
    def timestamps(self) -> np.ndarray:
        """(rows, 3) start, end, centre seconds."""
        return np.asarray(self.sidecar.timestamps, dtype=np.float64).reshape(-1, 3)

    @property
    def identity(self) -> str:
        """What the video's output is, in one string: its manifest record's place and sha256 (a sidecar
        without a record: its feature file's name, size and mtime). Equal identity, same features."""
        record = self.record
        if record is not None and record.sha256:
            return record_identity(record)
        stat = self.features.path.stat()
        return f"{self.features.path.name}:{stat.st_size}:{stat.st_mtime_ns}"

    def verify(self) -> None:
        """A packed record's bytes against its manifest's sha256 (ReadError naming the way out); a feature
        file's were checked by resume when it changed."""
        self._verified_record()

    def _verified_record(self) -> bytes | None:
        """A packed record's bytes, checked against its manifest's sha256 (None without such a record)."""
        record = self.record
        if record is None or not record.packed or record.sha256 is None:
            return None
        try:
            data = read_record(self.where, int(record.offset or 0), int(record.size or 0))
        except (OSError, ValueError) as error:
            raise ReadError(f"{self.where}: {self.key}: {error}; {RECOMPUTE_HINT}") from error
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise ReadError(
                f"{self.where}: {self.key}'s record differs from its manifest (sha256); {RECOMPUTE_HINT}"
            )
        return data

    def load(self) -> np.ndarray:
        """The features, verified first (`verify`: a packed record is read once, its features taken from
        the bytes it checked); ReadError when they cannot be read as recorded."""
        data = self._verified_record()
        ref = self.features
        try:
            if data is None:
                return ref.load()
            assert self.record is not None  # the bytes are its record's; the features lie inside them
            start = ref.offset - int(self.record.offset or 0)
            count = ref.nbytes // ref.dtype.itemsize
            return np.frombuffer(data, ref.dtype, count, start).reshape(ref.shape).copy()
        except (OSError, ValueError) as error:
            raise ReadError(f"{self.key}: {error}") from error


@dataclass(frozen=True)
class FailedVideo:
    """A video whose newest manifest record says it failed."""

    key: str
    path: str
    error: str
    output_dir: str


@dataclass
class Scan:
    """What an output dir set holds: usable videos, failures and what they share."""

    videos: list[StoredVideo] = field(default_factory=list)
    failed: list[FailedVideo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # only filled when not strict
    settings: dict[str, Any] | None = None
    reference: Path | None = None  # where `settings` comes from
    model: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_random: bool | None = None
    package_versions: set[str] = field(default_factory=set)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by JSON digest, first seen first


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with dotted names: {"resize": {"mode": m}} -> {"resize.mode": m}."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between a and b, each with both values."""
    fa, fb = flatten(a), flatten(b)

    def show(flat: dict[str, Any], name: str) -> str:
        return repr(flat[name]) if name in flat else "absent"

    return [
        f"{name} ({show(fa, name)} vs {show(fb, name)})"
        for name in sorted(set(fa) | set(fb))
        if name not in fa or name not in fb or fa[name] != fb[name]
    ]


def _check_shape(where: Path, shape: tuple[int, ...], dtype: np.dtype, sidecar: Sidecar) -> None:
    if dtype.name not in FEATURE_DTYPES or len(shape) not in (2, 3):
        raise ReadError(
            f"{where}: expected float32/float16 (rows, dim) or (rows, crops, dim), found {dtype.name} {shape}"
        )
    rows = sidecar.rows if sidecar.rows is not None else shape[0]
    if rows != shape[0] or len(sidecar.timestamps) != shape[0]:
        raise ReadError(
            f"{where}: {shape[0]} rows but its sidecar says rows={rows} with {len(sidecar.timestamps)} "
            "timestamps"
        )


def file_video(
    sidecar_path: Path, data: Mapping[str, Any], output_dir: Path, record: ManifestRecord | None = None
) -> StoredVideo:
    """A files-store video from its sidecar: the sidecar and its .npy checked (header, size, rows,
    timestamps, logits files); ReadError names the file."""
    try:
        sidecar = Sidecar.from_json(data)
    except ValueError as error:
        raise ReadError(f"{sidecar_path}: {error}") from error
    features = Path(naming.feature_of_sidecar(str(sidecar_path)))
    if not features.is_file():
        raise ReadError(f"{features}: feature file missing (its sidecar exists)")
    try:
        offset, shape, dtype = npy_data_offset(features)
    except ValueError as error:
        raise ReadError(str(error)) from error
    except OSError as error:
        raise ReadError(f"{features}: unreadable .npy ({error})") from error
    _check_shape(features, shape, dtype, sidecar)
    logits = {}
    for head, rel in (sidecar.logits or {}).items():
        path = output_dir / rel
        if not path.is_file():
            raise ReadError(f"{path}: logits file missing (listed in {sidecar_path.name})")
        try:
            head_offset, head_shape, head_dtype = npy_data_offset(path)
        except (OSError, ValueError) as error:
            raise ReadError(f"{path}: {error}") from error
        logits[naming.hdf5_logits_name(head)] = ArrayRef(path, head_offset, head_shape, head_dtype)
    features_ref = ArrayRef(features, offset, shape, dtype)
    return StoredVideo(sidecar.key, output_dir, sidecar, features_ref, logits, sidecar_path, record)


def packed_video(record: ManifestRecord, output_dir: Path) -> StoredVideo:
    """A packed video from its manifest record: its record's meta and arrays (ReadError when the part does
    not hold it as recorded)."""
    part = output_dir / str(record.output)
    try:
        found = read_packed(part, int(record.offset or 0), record.size)
    except (OSError, ValueError) as error:
        raise ReadError(f"{record.key}: {error}; {RECOMPUTE_HINT}") from error
    if found.sidecar.key != record.key:
        raise ReadError(
            f"{part}: the record at byte {record.offset} is {found.sidecar.key!r}, not {record.key!r} (the "
            f"manifest disagrees with the part); {RECOMPUTE_HINT}"
        )
    arrays = dict(found.arrays)
    if "features" not in arrays:
        raise ReadError(f"{part}: the record of {record.key!r} has no features")
    features = arrays.pop("features")
    _check_shape(part, features.shape, features.dtype, found.sidecar)
    return StoredVideo(record.key, output_dir, found.sidecar, features, arrays, part, record)


def _note_shared(result: Scan, video: StoredVideo, strict: bool) -> None:
    """Record run-wide metadata and refuse settings that differ from the first video's (precision too:
    fp32 and bf16 features never share a file)."""
    sidecar = video.sidecar
    settings = sidecar.effective_settings
    if result.settings is None:
        result.settings, result.reference = settings, video.where
        result.model = sidecar.model or settings.get("model")
        result.checkpoint_sha256 = sidecar.checkpoint.sha256 or settings.get("checkpoint_sha256")
        named = sidecar.checkpoint.sha256 is not None or sidecar.checkpoint.random
        result.checkpoint_random = sidecar.checkpoint.random if named else settings.get("random_weights")
    elif settings != result.settings:
        message = (
            f"{video.where}: extraction settings differ from {result.reference}: "
            f"{'; '.join(settings_differences(result.settings, settings))}"
        )
        if strict:
            raise ReadError(message)
        result.problems.append(message)
    if sidecar.package_version:
        result.package_versions.add(str(sidecar.package_version))
    if sidecar.config is not None:
        digest = hashlib.sha256(json.dumps(sidecar.config, sort_keys=True, default=str).encode()).hexdigest()
        result.configs.setdefault(digest, sidecar.config)


def _add(result: Scan, seen: dict[str, Path], video: StoredVideo, strict: bool) -> None:
    if video.key in seen:
        raise ReadError(f"video key {video.key!r} appears twice: {seen[video.key]} and {video.where}")
    if result.videos and video.shape[1:] != result.videos[0].shape[1:]:
        first = result.videos[0]
        raise ReadError(f"{video.where}: shape {video.shape} does not match {first.where} {first.shape}")
    _note_shared(result, video, strict)
    seen[video.key] = video.where
    result.videos.append(video)


def sidecar_video(path: Path, output_dir: Path, latest: Mapping[str, ManifestRecord]) -> StoredVideo | None:
    """The video a sidecar describes; None (logged) when its newest record says it failed since, or that
    another file superseded it."""
    data = read_sidecar(path)
    if not isinstance(data, dict) or "key" not in data:
        raise ReadError(f"{path}: not a feature sidecar (no 'key')")
    record = latest.get(str(data["key"]))
    if record is not None and record.final_outcome != OK:
        log.info("skipping %s: the video's newest record is %s", path, record.final_outcome)
        return None
    relative = naming.feature_of_sidecar(path.relative_to(output_dir).as_posix())
    if record is not None and record.output and record.output != relative:
        log.info("skipping %s: superseded by %s", path, record.output)
        return None
    return file_video(path, data, output_dir, record)


def scan(output_dirs: Sequence[Path], *, strict: bool = True) -> Scan:
    """Find and check every usable video of the output dirs (metadata only, no features).

    strict: raise ReadError on the first problem; otherwise list it in `problems` and skip the video
    (differing settings are listed but the video is kept).
    """
    result = Scan()
    seen: dict[str, Path] = {}

    def take(where: Path, read: Callable[[], StoredVideo | None]) -> None:
        try:
            video = read()
            if video is not None:
                _add(result, seen, video, strict)
        except json.JSONDecodeError as error:
            if strict:
                raise ReadError(f"{where}: not JSON ({error.msg})") from error
            result.problems.append(f"{where}: not JSON ({error.msg})")
        except ReadError as error:
            if strict:
                raise
            result.problems.append(str(error))

    for output_dir in map(Path, output_dirs):
        if not any((output_dir / name).is_dir() for name in (naming.FEATURES_DIR, naming.MANIFESTS_DIR)):
            raise ReadError(f"{output_dir}: not an output dir (no features/ or manifests/ folder)")
        latest, bad_lines = latest_records(output_dir)
        for bad in bad_lines:
            log.warning("%s line %d: %s", bad.path, bad.line, bad.reason)
        for path in iter_sidecars(output_dir):
            take(path, partial(sidecar_video, path, output_dir, latest))
        for record in latest.values():
            if record.packed and record.final_outcome == OK:
                take(output_dir / str(record.output), partial(packed_video, record, output_dir))
        present = {v.key for v in result.videos if v.output_dir == output_dir}
        for key, record in sorted(latest.items()):
            if record.final_outcome == FAILED:
                result.failed.append(FailedVideo(key, str(record.path), str(record.error), str(output_dir)))
            elif record.final_outcome == OK and key not in present:
                log.warning("%s: manifest says %r is done but %s is missing", output_dir, key, record.output)
    return result


def open_record(record: ManifestRecord, output_dir: Path) -> StoredVideo:
    """The video a manifest record names, in either store (ReadError when it is not there as recorded)."""
    if record.packed:
        return packed_video(record, output_dir)
    sidecar_path = output_dir / naming.sidecar_of_feature(str(record.output))
    try:
        data = read_sidecar(sidecar_path)
    except (OSError, ValueError) as error:
        raise ReadError(f"{sidecar_path}: {error}") from error
    return file_video(sidecar_path, data, output_dir, record)


__all__ = [
    "FEATURE_DTYPES",
    "FailedVideo",
    "ReadError",
    "Scan",
    "StoredVideo",
    "file_video",
    "flatten",
    "open_record",
    "packed_video",
    "scan",
    "settings_differences",
]

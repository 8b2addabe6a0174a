"""Where a run keeps each finished video (`output.store`):

- `files` (the default): per video a feature file, a sidecar and a file per classifier head under
  `features/` (`features/<key>_<T>.npy`, `.json`, `.<head>.npy`), each written atomically.
- `packed`: each shard appends its videos to part files, `packed/shard-<i>-of-<N>/part-<k>.npk`, a new
  part every PART_VIDEOS videos or PART_BYTES bytes: a million videos are about a thousand files.

A part is a plain sequence of `.npy` arrays, so numpy reads it without this package: first the part's
header, a uint8 array of UTF-8 JSON (`{"format", "settings", "config"}`); then per video its meta, the same
kind of JSON array (`{"key", "sidecar", "arrays": [{"name", "offset", "data_offset", "shape", "dtype"}]}`,
offsets counted from the end of the meta array), followed by its arrays (`features`, `timestamps`,
`logits` or `logits.<head>`):

    with open(part, "rb") as f:
        header = json.loads(np.load(f).tobytes())
        while f.read(1):
            f.seek(-1, 1)
            meta = json.loads(np.load(f).tobytes())
            arrays = {a["name"]: np.load(f) for a in meta["arrays"]}

A video's bytes are appended and fsynced before its manifest record (part, offset, size, sha256) is
appended: a kill loses at most the video in flight. Bytes after a part's last recorded video (a video
killed mid-write, or written but not recorded) are cut when its shard appends to it again; a record whose
bytes are missing or differ is recomputed (pipeline.outputs.resume).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline import naming
from pipeline.outputs.atomic import OutputError, file_sha256, output_error, save_array
from pipeline.outputs.records import ManifestRecord, Sidecar, read_sidecar, save_sidecar

log = logging.getLogger(__name__)

STORES = ("files", "packed")
PART_SUFFIX = ".npk"
PART_FORMAT = "slowfast-feature-extractor packed part, version 1"
PART_VIDEOS = 1000  # a new part after this many videos ...
PART_BYTES = 4 << 30  # ... or this many bytes
SIDECAR_IN_HEADER = ("settings", "config")  # the same for every video of a run: once per part
SIDECAR_AS_ARRAY = ("timestamps",)  # kept as the record's array, exactly


@dataclass(frozen=True)
class ArrayRef:
    """An array inside a file: the data section at `offset` (a .npy's, or one inside a packed part)."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        """The array, read from its file (ValueError when the file ends before it does)."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.nbytes)
        if len(data) != self.nbytes:
            raise ValueError(f"{self.path}: ends before the array at {self.offset} ({self.nbytes} bytes)")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape).copy()


@dataclass(frozen=True)
class Stored:
    """Where a store put one video: the manifest record's output fields."""

    output: str
    size: int
    sha256: str
    offset: int | None = None
    mtime_ns: int | None = None
    inode: int | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "size": self.size,
            "sha256": self.sha256,
            "offset": self.offset,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
        }


@dataclass(frozen=True)
class VideoArrays:
    """A finished video's arrays, as a store writes them."""

    features: np.ndarray
    timestamps: np.ndarray  # (rows, 3) float64
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (rows, [crops,] classes)


class VideoStore(Protocol):
    """Writes finished videos into an output dir."""

    name: str

    def write(self, key: str, arrays: VideoArrays, sidecar: Sidecar) -> Stored: ...

    def forget(self, key: str) -> None:
        """The video's recomputation failed: nothing stale of it may count as done."""


# --- the files store --------------------------------------------------------------------------------


class FilesStore:
    """A feature file, a sidecar and logits files per video under features/ (each written atomically).

    durable=False skips the fsyncs (safe against a killed process, not a machine crash): for bulk
    fabrication in benchmarks and tests, whose caller syncs at the end.
    """

    name = "files"

    def __init__(self, output_dir: Path, num_frames: int, durable: bool = True) -> None:
        self.output_dir, self.num_frames, self.durable = output_dir, num_frames, durable

    def write(self, key: str, arrays: VideoArrays, sidecar: Sidecar) -> Stored:
        T = self.num_frames
        rel = naming.feature_relpath(key, T)
        npy = self.output_dir / rel
        save_array(npy, arrays.features, self.durable)
        logits = {}
        for head, values in arrays.logits.items():
            logits[head] = naming.logits_relpath(key, T, head)
            save_array(self.output_dir / logits[head], values, self.durable)
        sidecar = dataclasses.replace(sidecar, logits=logits or None)  # the sidecar names the logits files
        save_sidecar(self.output_dir / naming.sidecar_relpath(key, T), sidecar, self.durable)
        stat = npy.stat()
        return Stored(rel, stat.st_size, file_sha256(npy), None, stat.st_mtime_ns, stat.st_ino)

    def forget(self, key: str) -> None:
        """Delete the video's files (its sidecar names its logits files)."""
        sidecar = self.output_dir / naming.sidecar_relpath(key, self.num_frames)
        extra: list[str] = []
        if sidecar.is_file():
            try:
                extra = list((read_sidecar(sidecar).get("logits") or {}).values())
            except (OSError, ValueError):
                extra = []
        for rel in (naming.feature_relpath(key, self.num_frames), *extra):
            (self.output_dir / rel).unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)


# --- the packed store -------------------------------------------------------------------------------


def npy_header(array: np.ndarray) -> bytes:
    """The .npy header numpy writes for `array` (format 1.0, or 2.0 when the header needs it)."""
    buffer = io.BytesIO()
    data = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(buffer, data)
    except ValueError:  # a header beyond 64 KiB
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, data)
    return buffer.getvalue()


def json_array(data: Any) -> np.ndarray:
    """UTF-8 JSON as a uint8 array (a part's header and each video's meta)."""
    return np.frombuffer(json.dumps(data, sort_keys=True, allow_nan=False, default=str).encode(), np.uint8)


def npy_record(named: list[tuple[str, np.ndarray]], meta: dict[str, Any]) -> bytes:
    """The bytes of one video in a part: its meta .npy (with the offsets of the arrays after it), then
    each array as a .npy."""
    blobs, entries, position = [], [], 0
    for name, array in named:
        array = np.ascontiguousarray(array)
        header = npy_header(array)
        entries.append(
            {
                "name": name,
                "offset": position,
                "data_offset": position + len(header),
                "shape": list(array.shape),
                "dtype": array.dtype.str,
            }
        )
        blobs += [header, array.tobytes()]
        position += len(header) + array.nbytes
    meta_array = json_array({**meta, "arrays": entries})
    return b"".join([npy_header(meta_array), meta_array.tobytes(), *blobs])


def _write_all(f: Any, data: bytes) -> None:
    """Write all of `data` to an unbuffered file (a raw write may take part of it)."""
    rest = memoryview(data)
    while rest:
        rest = rest[f.write(rest) :]


def _load_npy(f: Any) -> np.ndarray:
    return np.lib.format.read_array(f, allow_pickle=False)


@lru_cache(maxsize=64)
def _part_header(path: str, mtime_ns: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        return json.loads(_load_npy(f).tobytes())


def part_header(path: Path) -> dict[str, Any]:
    """A part's header JSON (cached while the part is unchanged); ValueError for a file that is no part."""
    try:
        header = _part_header(str(path), path.stat().st_mtime_ns)
    except (OSError, EOFError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a packed part ({error})") from error
    if not isinstance(header, dict) or header.get("format") != PART_FORMAT:
        raise ValueError(f"{path}: not a packed part of this format")
    return header


@dataclass(frozen=True)
class PackedVideo:
    """One video's record read from a part: its sidecar (with the part's settings and config, and its
    timestamps) and where its other arrays are (features, logits)."""

    sidecar: Sidecar
    arrays: dict[str, ArrayRef]


def read_packed(part: Path, offset: int, size: int | None = None, sha256: str | None = None) -> PackedVideo:
    """The video whose record starts at `offset` of `part`; ValueError when the part is not that long, the
    bytes do not parse, or (given) their size or sha256 differ from the manifest's."""
    header = part_header(part)
    with open(part, "rb") as f:
        f.seek(offset)
        try:
            meta = json.loads(_load_npy(f).tobytes())
        except (EOFError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(f"{part}: no video record at byte {offset} ({error})") from error
        start = f.tell()
        arrays = {
            a["name"]: ArrayRef(part, start + int(a["data_offset"]), tuple(a["shape"]), np.dtype(a["dtype"]))
            for a in meta.get("arrays", [])
        }
        end = max((ref.offset + ref.nbytes for ref in arrays.values()), default=start)
        if size is not None and end - offset != size:
            raise ValueError(
                f"{part}: the record at {offset} is {end - offset} bytes, the manifest says {size}"
            )
        if f.seek(0, os.SEEK_END) < end:
            raise ValueError(f"{part}: ends inside the record at byte {offset} (truncated)")
        if sha256 is not None:
            f.seek(offset)
            if hashlib.sha256(f.read(end - offset)).hexdigest() != sha256:
                raise ValueError(f"{part}: the record at byte {offset} differs from its manifest (sha256)")
    if "timestamps" not in arrays:
        raise ValueError(f"{part}: the record at byte {offset} has no timestamps")
    sidecar = {**meta.get("sidecar", {}), **{k: header.get(k) for k in SIDECAR_IN_HEADER}}
    sidecar["timestamps"] = arrays.pop("timestamps").load().tolist()
    return PackedVideo(Sidecar.from_json(sidecar), arrays)


def read_record(part: Path, offset: int, size: int) -> bytes:
    """A record's bytes (ValueError when the part ends before it)."""
    with open(part, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{part}: ends inside the record at byte {offset} (truncated)")
    return data


def record_sha256(part: Path, offset: int, size: int) -> str:
    """sha256 of a record's bytes (ValueError when the part ends before it)."""
    return hashlib.sha256(read_record(part, offset, size)).hexdigest()


def part_extents(records: Mapping[str, ManifestRecord]) -> dict[str, tuple[int, int | None]]:
    """Per part (relative path), the end of its last record that is some video's newest (what the part
    must keep) and the part's mtime that record saw after its write."""
    ends: dict[str, tuple[int, int | None]] = {}
    for record in records.values():
        if record.packed and record.output and record.size is not None and record.offset is not None:
            end = record.offset + record.size
            if end > ends.get(record.output, (0, None))[0]:
                ends[record.output] = (end, record.mtime_ns)
    return ends


def part_counts(records: Mapping[str, ManifestRecord]) -> dict[str, int]:
    """Per part, how many videos' newest records it holds."""
    counts: dict[str, int] = {}
    for record in records.values():
        if record.packed and record.output:
            counts[record.output] = counts.get(record.output, 0) + 1
    return counts


class PackedStore:
    """Appends one shard's videos to its parts (this shard's lock held: it is their only writer).

    Each video's bytes are fsynced before `write` returns (before its manifest line is appended);
    durable=False skips that (see FilesStore).
    """

    name = "packed"

    def __init__(
        self,
        output_dir: Path,
        shard_index: int,
        num_shards: int,
        header: Mapping[str, Any],
        extents: Mapping[str, tuple[int, int | None]],
        counts: Mapping[str, int],
        durable: bool = True,
    ) -> None:
        self.output_dir, self.durable = output_dir, durable
        self.shard = (shard_index, num_shards)
        self.header = {"format": PART_FORMAT, **header}
        folder = output_dir / naming.packed_shard_relpath(shard_index, num_shards)
        parts = sorted(folder.glob(f"part-*{PART_SUFFIX}")) if folder.is_dir() else []
        for part in parts:
            self._cut(part, *extents.get(part.relative_to(output_dir).as_posix(), (0, None)))
        self.part = len(parts) - 1 if parts else 0
        self.videos = counts.get(naming.packed_part_relpath(*self.shard, self.part), 0) if parts else 0
        if parts and (self._full(parts[-1]) or not self._same_header(parts[-1])):
            self.part, self.videos = self.part + 1, 0

    def _same_header(self, part: Path) -> bool:
        """Whether a part was begun with this run's settings and config (else a new part begins)."""
        try:
            header = dict(part_header(part))
        except ValueError:
            return False
        header.pop("part", None)
        return header == json.loads(json_array(self.header).tobytes())

    @staticmethod
    def _cut(part: Path, keep: int, mtime_ns: int | None) -> None:
        """Cut a part after its last recorded video (a torn or unrecorded tail); a part with no recorded
        video keeps its header (none, when the header itself was torn). The part's mtime goes back to what
        its last record saw (its records were hashed when the resume decisions found it changed), so that
        a later rerun takes it as unchanged again."""
        if keep == 0:
            try:
                with open(part, "rb") as f:
                    _load_npy(f)
                    keep = f.tell()
            except (OSError, EOFError, ValueError):
                keep = 0
        if part.stat().st_size > keep:
            log.info("%s: cutting %d bytes after its last recorded video", part, part.stat().st_size - keep)
            with open(part, "rb+") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            if mtime_ns is not None:
                os.utime(part, ns=(time.time_ns(), mtime_ns))

    def _full(self, part: Path) -> bool:
        return self.videos >= PART_VIDEOS or part.stat().st_size >= PART_BYTES

    def write(self, key: str, arrays: VideoArrays, sidecar: Sidecar) -> Stored:
        rel = naming.packed_part_relpath(*self.shard, self.part)
        path = self.output_dir / rel
        named = [("features", arrays.features), ("timestamps", arrays.timestamps)]
        named += [(naming.hdf5_logits_name(head), values) for head, values in arrays.logits.items()]
        left_out = (*SIDECAR_IN_HEADER, *SIDECAR_AS_ARRAY)
        sidecar = dataclasses.replace(sidecar, logits=None)  # the record holds the logits as arrays, no files
        meta_sidecar = {k: v for k, v in sidecar.as_json().items() if k not in left_out}
        record = npy_record(named, {"key": key, "sidecar": meta_sidecar})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab", buffering=0) as f:  # unbuffered: a failed write is cut off here
                start = f.seek(0, os.SEEK_END)
                try:
                    if start == 0:
                        header = json_array({**self.header, "part": rel})
                        _write_all(f, npy_header(header) + header.tobytes())
                    offset = f.seek(0, os.SEEK_END)
                    _write_all(f, record)
                    if self.durable:
                        os.fsync(f.fileno())
                except OSError:
                    os.ftruncate(f.fileno(), start)  # no half video for the next append to follow
                    raise
        except OSError as error:
            translated = output_error(error, path, None)
            if translated is not None:
                raise translated from error
            raise
        stat = path.stat()  # what the part looks like after this write: resume's unchanged_parts
        self.videos += 1
        if self._full(path):
            self.part, self.videos = self.part + 1, 0
        return Stored(
            rel, len(record), hashlib.sha256(record).hexdigest(), offset, stat.st_mtime_ns, stat.st_ino
        )

    def forget(self, key: str) -> None:
        """Nothing to delete: a failed record supersedes the video's earlier one."""


__all__ = [
    "PART_BYTES",
    "PART_VIDEOS",
    "STORES",
    "ArrayRef",
    "FilesStore",
    "OutputError",
    "PackedStore",
    "PackedVideo",
    "Stored",
    "VideoArrays",
    "VideoStore",
    "part_counts",
    "part_extents",
    "part_header",
    "read_packed",
    "record_sha256",
]

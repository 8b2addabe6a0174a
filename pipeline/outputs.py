"""Everything the output dir holds: atomic feature files, sidecars, manifests, locks and resume decisions.

Layout of an output dir (names come from `pipeline.naming`):
    features/<key>_<T>.npy     float32/16 (rows, dim) or (rows, crops, dim)
    features/<key>_<T>.json    sidecar: timestamps + metadata + settings + resolved config
    manifests/shard-{i}-of-{N}.jsonl   one record per video and run, appended when the video ends
    locks/shard-{i}-of-{N}.lock        fcntl lock held while a shard runs
    runs/<timestamp>.json              one per invocation
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline import naming
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
# A temp file of another host (a Slurm node) is left alone until it is this old: its writer may be alive.
FOREIGN_TEMP_MAX_AGE_S = 3600.0


class OutputError(PipelineError, OSError):
    """A write to the output dir failed (disk full, read-only): the run cannot usefully go on."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # "cannot write <file>: <why>", without "[Errno N]"


class LockError(PipelineError, RuntimeError):
    """Another process holds this shard's lock."""


def now_iso() -> str:
    """Local time, ISO 8601 with offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed; remembered while the file's inode, size and mtime stay the same."""
    stat = os.stat(path)
    return _sha256_of(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# numpy's `tofile` (np.save on a real file) reports a short write without an errno, counting items
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
_HDF5_ERRNO = re.compile(r"errno = (\d+)")  # h5py raises RuntimeError/OSError with HDF5's text
_STOPPING_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG, errno.EIO)


def _free_bytes(directory: Path) -> int:
    """Bytes this process may still write on the filesystem of `directory` (0 when unknown)."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _output_error(error: OSError | RuntimeError, path: Path, temp: Path | None) -> OutputError | None:
    """The one-line OutputError for a write that cannot succeed on a rerun alone, or None."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (hdf5 := _HDF5_ERRNO.search(str(error))):
        code = int(hdf5.group(1))
    detail = ""
    short = _SHORT_WRITE.search(str(error)) if code is None else None
    if short:
        unwritten = int(short.group(1)) - int(short.group(2))  # items: at most the bytes missing
        code = errno.ENOSPC if _free_bytes((temp or path).parent) < unwritten else errno.EIO
        detail = f" (short write: {short.group(0)})"
    if code not in _STOPPING_ERRNOS:
        return None
    return OutputError(code, f"cannot write {path}: {os.strerror(code)}{detail}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temp path beside `path` to write; on success it is fsynced and renamed over `path`.

    On any failure the temp file is removed and `path` keeps its old content; a full disk, a quota,
    a read-only or unwritable folder raise OutputError naming `path` (numpy's errno-less short write
    and h5py's errno-in-text included). The one atomic-write routine: every output file goes through it.
    """
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}{temp_owner()}", dir=path.parent)
        os.close(fd)
        temp = Path(temp_name)
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        translated = None
        if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, OutputError):
            translated = _output_error(error, path, temp)  # before the unlink: it looks at the free space
        if temp is not None:
            temp.unlink(missing_ok=True)
        if translated is not None:
            raise translated from error
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over `path`."""
    with atomic_file(path) as temp, open(temp, "wb") as f:
        write(f)


def save_array(path: Path, array: np.ndarray) -> None:
    """Save one .npy atomically."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def save_json(path: Path, data: Any) -> None:
    """Save JSON atomically (UTF-8, sorted keys, no NaN)."""
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False, default=str)
    atomic_write(path, lambda f: f.write(text.encode()))


def temp_owner() -> str:
    """The part of a temp file's name after the target's name: TEMP_MARK, this host and pid."""
    return f"{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(temp: Path, host: str, now: float) -> bool:
    """Whether a temp file's writer is gone: a dead pid on this host, an hour old from another host, or
    a name without an owner (left by an older version)."""
    owner = temp.name.rsplit(TEMP_MARK, 1)[-1].rsplit("-", 2)
    if len(owner) != 3 or not owner[1].isdigit():
        return True
    if owner[0] == host:
        return not _pid_alive(int(owner[1]))
    return now - temp.stat().st_mtime > FOREIGN_TEMP_MAX_AGE_S


def clean_stale_temps(output_dir: Path) -> int:
    """Remove temp files left by killed processes; returns how many. Shards running beside this one
    (other processes, other nodes) keep their temp files."""
    removed = 0
    host, now = socket.gethostname(), time.time()
    for sub in (naming.FEATURES_DIR, naming.MANIFESTS_DIR, naming.RUNS_DIR, ""):
        base = output_dir / sub
        if not base.is_dir():
            continue
        pattern = "**/.*" if sub else ".*"
        for temp in base.glob(pattern):
            try:
                if TEMP_MARK in temp.name and temp.is_file() and is_stale_temp(temp, host, now):
                    temp.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
    if removed:
        log.info("removed %d stale temp file(s) under %s", removed, output_dir)
    return removed


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Byte offset of the data section of a .npy file, with its shape and dtype (checks the size)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        # format 3.0 differs from 2.0 only in the header's text encoding (utf-8), same layout
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(f"{path}: truncated .npy ({actual} bytes, header says {expected})")
    return offset, tuple(shape), dtype


# --- manifests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestProblem:
    """A manifest line that could not be used."""

    path: Path
    line: int
    reason: str


def append_record(manifest: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it; a failed append (disk full) is cut off again, leaving no half line."""
    line = json.dumps(record, sort_keys=True, allow_nan=False, default=str) + "\n"
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line.encode("utf-8"))
                while rest:
                    rest = rest[f.write(rest) :]
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)  # the next record must not run into a half line
                raise
    except OSError as error:
        raise OutputError(error.errno or 0, f"cannot append to {manifest}: {error.strerror}") from error


REQUIRED_FIELDS = ("key", "path", "status")


def read_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[ManifestProblem]]:
    """All usable records of one manifest, in order, and the problems of the others (with line numbers)."""
    records: list[dict[str, Any]] = []
    problems: list[ManifestProblem] = []
    if not manifest.exists():
        return records, problems
    with open(manifest, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(ManifestProblem(manifest, number, f"not JSON ({error.msg})"))
                continue
            if not isinstance(record, dict) or any(k not in record for k in REQUIRED_FIELDS):
                problems.append(
                    ManifestProblem(manifest, number, "not a manifest record (needs key, path, status)")
                )
                continue
            records.append(record)
    return records, problems


def manifest_files(output_dir: Path) -> list[Path]:
    """Every shard manifest of an output dir, sorted."""
    return sorted(output_dir.glob(naming.MANIFEST_GLOB))


def latest_records(output_dir: Path) -> tuple[dict[str, dict[str, Any]], list[ManifestProblem]]:
    """The newest record per video key over all shard manifests (a rerun may use other shards)."""
    latest: dict[str, dict[str, Any]] = {}
    problems: list[ManifestProblem] = []
    for manifest in manifest_files(output_dir):
        records, bad = read_manifest(manifest)
        problems.extend(bad)
        for record in records:
            previous = latest.get(record["key"])
            if previous is None or str(record.get("time", "")) >= str(previous.get("time", "")):
                latest[record["key"]] = record
    return latest, problems


# --- resume -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeDecision:
    """Whether a video is run again, and the one-line reason."""

    run: bool
    reason: str
    record: dict[str, Any] | None = None


def decide_resume(
    record: dict[str, Any] | None,
    output_dir: Path,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    retry_failed: bool,
    verify_hash: bool = True,
) -> ResumeDecision:
    """Decide from the newest manifest record whether a video's output can be kept."""
    if overwrite:
        return ResumeDecision(True, "output.overwrite=true")
    if record is None:
        return ResumeDecision(True, "new")
    outcome = record.get("outcome", record["status"])
    if outcome == "failed":
        if retry_failed:
            return ResumeDecision(True, f"retrying failed video ({record.get('error')})")
        return ResumeDecision(False, "failed before; output.retry_failed=false", record)
    if outcome != "ok":
        return ResumeDecision(True, f"unknown outcome {outcome!r} in manifest")
    recorded = record.get("settings") or {}
    if "precision" in settings and "precision" not in recorded:
        recorded = legacy_settings(recorded, output_dir, record)
    if recorded != settings:
        return ResumeDecision(True, f"settings changed: {changed_settings(recorded, settings)}")
    output = output_dir / str(record.get("output"))
    if not output.is_file():
        return ResumeDecision(True, f"output missing: {record.get('output')}")
    if output.stat().st_size != record.get("size"):
        return ResumeDecision(True, "output size differs from the manifest")
    if verify_hash and file_sha256(output) != record.get("sha256"):
        return ResumeDecision(True, "output sha256 differs from the manifest")
    return ResumeDecision(False, "done", record)


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ, each with its old and new value: "precision ('fp32' -> 'bf16')"."""
    absent = "absent"
    return ", ".join(
        f"{k} ({before.get(k, absent)!r} -> {now.get(k, absent)!r})"
        for k in sorted(set(before) | set(now))
        if before.get(k, absent) != now.get(k, absent)
    )


def settings_of_sidecar(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A sidecar's extraction settings; one written before `precision` was a setting takes it from its
    resolved config (`hardware.precision`), so older fp32 work is neither lost nor mixed with bf16."""
    settings = dict(sidecar.get("settings") or {})
    config = sidecar.get("config")
    hardware = config.get("hardware") if isinstance(config, dict) else None
    if "precision" not in settings and isinstance(hardware, dict) and "precision" in hardware:
        settings["precision"] = hardware["precision"]
    return settings


def legacy_settings(recorded: dict[str, Any], output_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A manifest record's settings from before `precision` was one, completed from its video's sidecar
    (unchanged, so compared as different, when the sidecar is unreadable)."""
    sidecar = output_dir / str(record.get("output", ""))
    try:
        data = read_sidecar(sidecar.with_suffix(".json"))
    except (OSError, ValueError):
        return recorded
    return settings_of_sidecar({**data, "settings": recorded})


# --- locks --------------------------------------------------------------------------------------


class ShardLock:
    """An exclusive `fcntl.flock` on a lock file; dies with its holder (no stale pid files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: io.TextIOWrapper | None = None

    def acquire(self) -> ShardLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        except OSError as error:
            raise OutputError(error.errno or 0, f"cannot write {self.path}: {error.strerror}") from error
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LockError(
                f"{self.path} is held by {holder}: another extraction is writing this shard"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename} since {now_iso()}\n")
            f.flush()
        except OSError as error:  # a full disk: give the lock up with the file
            with contextlib.suppress(OSError):
                f.close()
            raise OutputError(error.errno or 0, f"cannot write {self.path}: {error.strerror}") from error
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def iter_sidecars(output_dir: Path) -> Iterator[Path]:
    """Every sidecar JSON under features/, sorted."""
    yield from sorted(
        p for p in (output_dir / naming.FEATURES_DIR).rglob("*.json") if TEMP_MARK not in p.name
    )


def read_sidecar(path: Path) -> dict[str, Any]:
    """Load one sidecar JSON."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)

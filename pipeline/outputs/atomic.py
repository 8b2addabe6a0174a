"""Atomic writes into an output dir (the one routine every output file goes through), the temp files
they leave when killed and how those are cleaned, and file hashes.

A write goes to a temp file beside its target (named after this host and pid), is fsynced and renamed over
the target: a reader sees the old file or the new one, never half of one. A full disk, a quota or a
read-only folder raise `OutputError` naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
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


def now_iso(timespec: str = "seconds") -> str:
    """Local time, ISO 8601 with offset, to the second (or `timespec`, e.g. "microseconds": manifest
    records, whose order decides which record of a video is the newest)."""
    return _dt.datetime.now().astimezone().isoformat(timespec=timespec)


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


def output_error(error: OSError | RuntimeError, path: Path, temp: Path | None) -> OutputError | None:
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
def atomic_file(path: Path, durable: bool = True) -> Iterator[Path]:
    """A temp path beside `path` to write; on success it is fsynced and renamed over `path` (durable=False:
    renamed without fsync, safe against a killed process but not a machine crash: for files that can be
    made again, such as exports).

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
        if durable:
            _fsync_file(temp)
        os.replace(temp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as error:
        translated = None
        if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, OutputError):
            translated = output_error(error, path, temp)  # before the unlink: it looks at the free space
        if temp is not None:
            temp.unlink(missing_ok=True)
        if translated is not None:
            raise translated from error
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], durable: bool = True) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over `path`."""
    with atomic_file(path, durable) as temp, open(temp, "wb") as f:
        write(f)


def save_array(path: Path, array: np.ndarray, durable: bool = True) -> None:
    """Save one .npy atomically."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), durable)


def save_json(path: Path, data: Any, durable: bool = True) -> None:
    """Save JSON atomically (UTF-8, sorted keys, no NaN)."""
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False, default=str)
    atomic_write(path, lambda f: f.write(text.encode()), durable)


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

"""Shard locks: one process writes a shard at a time; the lock dies with its holder."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.outputs.atomic import OutputError, now_iso


class LockError(PipelineError, RuntimeError):
    """Another process holds this shard's lock."""


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

"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def run_extract(
    cwd: Path, *overrides: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the Hydra app like a user would, in `cwd`; returns the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.extract", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "256k") -> Iterator[Path]:
    """A real tmpfs of `size` mounted on `folder` (root only); pytest.skip where mounting is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, timeout=30)
    except OSError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill_filesystem(folder: Path, leave: int) -> Path:
    """Write a ballast file that leaves about `leave` bytes free on the filesystem of `folder`."""
    stat = os.statvfs(folder)
    ballast = folder / "ballast"
    ballast.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


def run_config(cfg: Any) -> Any:
    """Plan a run from a config (DictConfig or ExtractConfig) and run its one shard in this process, as
    `python -m pipeline.extract` does for hardware=cpu; returns the shard's summary."""
    from pipeline.assemble import as_object
    from pipeline.run import plan_run, run_shard

    (shard,) = plan_run(as_object(cfg)).shards
    return run_shard(shard)

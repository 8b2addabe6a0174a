"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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

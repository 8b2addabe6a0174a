"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


REAL_CLIP = Path(__file__).parent / "data" / "big_buck_bunny_720p_16f.mp4"  # real footage, see data/README.md
"""16 frames of Big Buck Bunny at 1280x720: fidelity on textured footage (synthetic patterns hide resize and
rounding errors)."""


def clips_of(
    rows: int = 2, T: int = 8, size: int = 64, seed: int = 3, padded: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 clips (rows, T, size, size, 3) and their valid mask, the last `padded` frames of the
    last clip marked as zero padding."""
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (rows, T, size, size, 3), dtype=np.uint8)
    valid = np.ones((rows, T), dtype=bool)
    if padded:
        valid[-1, -padded:] = False
    return clips, valid


def tiny_clip_model(name: str = "slowfast_tiny", **kwargs: Any) -> Any:
    """A registry test model (random weights, seed 0) as a TorchClipModel on the CPU, Kinetics mean/std."""
    import torch

    from pipeline.inference import TorchClipModel
    from pipeline.models.registry import build_model

    torch.manual_seed(0)
    options = {"device": torch.device("cpu"), "mean": [0.45] * 3, "std": [0.225] * 3, **kwargs}
    return TorchClipModel(build_model(name), **options)


def check_model_input(cfg: Any) -> None:
    """The start-up checks of a composed config: its values (validate), then the model against the data
    (a fixed-input model refuses other clip sizes), as `pipeline.run.plan_run` does first."""
    from pipeline.assemble import as_object
    from pipeline.config import validate
    from pipeline.inference import check_model_config

    validate(cfg)
    typed = as_object(cfg)
    check_model_config(typed.model, typed.data)

"""Feature sequences that look like real ones, for the `pipeline.compare` tests.

Real clip features change little from one row to the next and jump at scene changes: each "video" here
is a run of scenes (4 to 25 rows each) with a random centre, a slow random walk inside the scene and
a little noise. `fine` sequences are generated at twice the row density; our features are every other
row of them, so that a "denser release" (half our stride) exists exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from tests.outputs_fixture import make_output_dir

DIM = 16


def scenes(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, dim) float64: scenes of 4-25 rows, a random walk inside each, a little noise."""
    out: list[np.ndarray] = []
    while sum(len(x) for x in out) < rows:
        length = int(rng.integers(4, 26))
        centre = rng.standard_normal(dim) * 2
        out.append(centre + np.cumsum(rng.standard_normal((length, dim)) * 0.15, axis=0))
    return np.concatenate(out)[:rows] + rng.standard_normal((rows, dim)) * 0.1


def fine_videos(seed: int = 0, lengths: tuple[int, ...] = (220, 260, 300)) -> dict[str, np.ndarray]:
    """Key -> fine (double density) float32 sequence; keys have folders so ids differ from keys."""
    rng = np.random.default_rng(seed)
    return {f"part{i}/vid{i}": scenes(n, DIM, rng).astype(np.float32) for i, n in enumerate(lengths)}


def ours_dir(root: Path, fine: Mapping[str, np.ndarray], crops: int | None = None) -> Path:
    """An output dir whose features are every other fine row (stride 16 at 30 fps in the sidecars)."""
    arrays = {k: v[::2] for k, v in fine.items()}
    if crops is not None:
        rng = np.random.default_rng(1)
        arrays = {
            k: np.stack([v + 0.3 * rng.standard_normal(v.shape) for _ in range(crops)], axis=1).astype(
                np.float32
            )
            for k, v in arrays.items()
        }
    return make_output_dir(root, {k: len(v) for k, v in arrays.items()}, arrays=arrays, crops=crops)


def video_id(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def write_release(
    folder: Path,
    arrays: Mapping[str, np.ndarray],
    layout: str = "npz",
    prefix: str = "",
) -> Path:
    """Write one array per video id the way the trainers' loaders read them; returns the path to give."""
    folder.mkdir(parents=True, exist_ok=True)
    named = {prefix + video_id(k): v for k, v in arrays.items()}
    if layout == "npz":
        for name, value in named.items():
            np.savez(folder / f"{name}.npz", feats=value)
    elif layout == "npy":
        for name, value in named.items():
            np.save(folder / f"{name}.npy", value)
    elif layout == "pt":
        import torch

        for name, value in named.items():
            torch.save(torch.from_numpy(np.ascontiguousarray(value)), folder / f"{name}.pt")
    elif layout == "h5":
        import h5py

        path = folder / "features.h5"
        with h5py.File(path, "w") as h5:
            for name, value in named.items():
                h5.create_dataset(name, data=value)
        return path
    elif layout.startswith("pickle"):
        import pickle

        protocol = int(layout.rsplit("-", 1)[-1]) if "-" in layout else pickle.DEFAULT_PROTOCOL
        path = folder / "features.pkl"
        path.write_bytes(pickle.dumps(dict(named), protocol=protocol))
        return path
    else:
        raise ValueError(layout)
    return folder


def compare(ours: Path, theirs: Path, *args: str) -> tuple[int, dict]:
    """Run `python -m pipeline.compare ... --json` in-process; (exit status, parsed report)."""
    import contextlib
    import io

    from pipeline.compare.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([str(ours), str(theirs), "--json", *args])
    text = out.getvalue()
    return status, json.loads(text) if text.strip() else {}


def compare_cli(ours: Path, theirs: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command as a user would (a subprocess)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.compare", str(ours), str(theirs), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def keys(report: dict) -> set[str]:
    """The finding keys of the summary."""
    return {f["key"] for f in report["summary"]}


def each(arrays: Mapping[str, np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    return {k: fn(v) for k, v in arrays.items()}

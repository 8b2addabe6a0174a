"""Shared fixtures: generated videos (PyAV), the real clip the tests ship, a tiny model.

Plain helpers (running the extractor, random clips, the real clip's path) are in tests/helpers.py, stand-in
videos and models in tests/fakes.py, reference loaders in tests/reference.py; test folders: unit/ (one
module or part at a time), reference/ (against PySlowFast, pytorchvideo and the other references),
e2e/ (whole runs), bench/ (the measurement tools), slurm/ (a real local Slurm cluster).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline import synth
from tests.helpers import REAL_CLIP, tiny_clip_model

# One compute thread per test process: OpenMP threads spin badly when the two cores are shared with the
# pytest process or a Slurm job, and tests check numbers, not speed (benchmarks measure speed).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def video_root(tmp_path_factory) -> Path:
    """A small collection: several codecs, containers, sizes and rates, a frame folder, and bad files."""
    root = tmp_path_factory.mktemp("videos")
    synth.write_video(root / "a.b.mp4", codec="libx264", size=(96, 64), fps=30, seconds=2.0)
    synth.write_video(root / "sub" / "vp9.webm", codec="libvpx-vp9", size=(80, 60), fps=25, seconds=1.6)
    synth.write_video(root / "sub" / "old.avi", codec="mpeg4", size=(64, 48), fps=15, seconds=1.0)
    synth.write_video(root / "short.mkv", codec="mjpeg", size=(64, 48), fps=30, seconds=0.2)
    synth.write_frame_folder(root / "frames_clip", 20, pattern="frame_{:010d}.jpg", size=(64, 48))
    synth.write_random_bytes(root / "broken.mp4", 4096)
    (root / "video_list.csv").write_text(
        "path\r\na.b.mp4\r\nsub/vp9.webm\r\n\r\nsub/old\r\n  short.mkv  \r\nframes_clip\r\nbroken.mp4\r\na.b.mp4\r\n"
    )
    return root


@pytest.fixture(scope="session")
def real_clip() -> Path:
    """16 frames of Big Buck Bunny, 1280x720 (tests/data/README.md)."""
    assert REAL_CLIP.is_file(), f"the real test clip is missing: {REAL_CLIP}"
    return REAL_CLIP


@pytest.fixture(scope="module")
def tiny_model():
    """slowfast_tiny (random weights, seed 0) as a TorchClipModel on the CPU."""
    return tiny_clip_model()

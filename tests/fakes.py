"""Stand-ins for the engine's tests: picklable fake videos (with misdeeds: a worker that segfaults, is
killed, exits, hangs or raises), fake models that echo pixels or pids, and the rows they must give."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.engine import Engine, VideoJob
from pipeline.io import Frame, SourceInfo
from pipeline.sampling import WindowSpec, clip_windows, resolve_padding
from pipeline.transforms import FrameTransform

SIZE = 64  # slowfast_tiny's input size
SPEC = WindowSpec(8, 1, 4, "sliding", "zero")
SQUARE = FrameTransform(mode="square", size=(SIZE, SIZE))  # frames are already 64x64: adds the crop axis


def frame_pixels(video: int, index: int, size: int = SIZE) -> np.ndarray:
    """A deterministic random frame of one video (the same in every process)."""
    return np.random.default_rng(1000 * video + index).integers(0, 256, (size, size, 3), dtype=np.uint8)


class FakeSource:
    """A picklable stand-in video: `n` frames at 10 fps, with an optional misdeed at frame `at`.

    misdeeds: "segv"/"kill" (the worker process signals itself), "exit" (os._exit(3)), "hang" (sleeps an
    hour), "pidfile" (writes the pid to `arg` then sleeps), "raise"; `pid=True` stamps the worker pid.
    """

    def __init__(self, video: int, n: int, misdeed: str | None, at: int, arg: str, pid: bool) -> None:
        self.video, self.n, self.misdeed, self.at, self.arg, self.pid = video, n, misdeed, at, arg, pid
        self.info = SourceInfo(Path(f"v{video}.mp4"), "video", SIZE, SIZE, 10.0, n / 10, n, "fake")

    def __enter__(self) -> FakeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self):
        for i in range(self.n):
            if i == self.at:
                self._misbehave()
            image = frame_pixels(self.video, i)
            if self.pid:
                image[0, :4, 0] = np.frombuffer(np.uint32(os.getpid()).tobytes(), np.uint8)
            yield Frame(image, i / 10, i)

    def _misbehave(self) -> None:
        if self.misdeed == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif self.misdeed == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.misdeed == "exit":
            os._exit(3)
        elif self.misdeed == "hang":
            time.sleep(3600)
        elif self.misdeed == "pidfile":
            Path(self.arg).write_text(str(os.getpid()))
            time.sleep(3600)
        elif self.misdeed == "raise":
            raise ValueError(f"bad frame {self.at}")


@dataclass(frozen=True)
class FakeOpener:
    """Picklable `open_video`: job key `v<number>` -> that video's length and misdeed."""

    lengths: tuple[int, ...]
    misdeeds: tuple[tuple[int, str, int], ...] = ()  # (video, misdeed, frame)
    arg: str = ""
    pid: bool = False

    def __call__(self, job: VideoJob) -> FakeSource:
        video = int(job.key[1:])
        misdeed, at = next(((m, a) for v, m, a in self.misdeeds if v == video), (None, -1))
        return FakeSource(video, self.lengths[video], misdeed, at, self.arg, self.pid)


class PixelModel:
    """Stand-in model: the feature of a clip = pixel (0, 0, 0) of each frame (0 where padded)."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.batch_sizes: list[int] = []

    def __call__(self, clips: np.ndarray, valid: np.ndarray):
        self.batch_sizes.append(len(clips))
        time.sleep(self.sleep_s)
        return clips[:, :, 0, 0, 0].astype(np.float32) * valid, None


class PidModel:
    """Stand-in model: the feature of a clip = the pid stamped into its first frame."""

    def __call__(self, clips: np.ndarray, valid: np.ndarray):
        pids = np.ascontiguousarray(clips[:, 0, 0, :4, 0]).view(np.uint32)
        return pids.astype(np.float64), None


def jobs(count: int) -> list[VideoJob]:
    return [VideoJob(f"v{i}", Path(f"v{i}.mp4"), f"v{i}.mp4") for i in range(count)]


def expected_pixels(video: int, n: int) -> np.ndarray:
    """What PixelModel must give for a video: rows from clip_windows, not from the engine."""
    windows = clip_windows(n, SPEC)
    values = np.array([frame_pixels(video, i)[0, 0, 0] for i in range(n)], dtype=np.float32)
    indices, valid = resolve_padding(windows, n, SPEC.pad)
    return values[indices] * valid


def engine(model, opener, **kwargs) -> Engine:
    return Engine(model, opener, SQUARE, SPEC, fps=10.0, **kwargs)

"""The streaming engine: decoder threads -> bounded clip queue -> batched model -> rows reassembled per video.

It knows nothing of Hydra or of output files: it takes jobs and yields one `VideoResult` per video as
soon as that video's last row is back. Memory is bounded by the queue size, not by video length.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.io import DecodeError, FrameSource, SourceInfo
from pipeline.sampling import ClipStream, ReadyClip, WindowSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """One video to extract: its output key, its source path and its listed relative path."""

    key: str
    path: Path
    rel: str


@dataclass
class VideoResult:
    """Everything known about one finished (or failed) video."""

    job: VideoJob
    features: np.ndarray | None = None  # (rows, dim) or (rows, crops, dim)
    logits: dict[str, np.ndarray] | None = None  # head name -> (rows, classes) or (rows, crops, classes)
    timestamps: np.ndarray | None = None  # (rows, 3) start, end, centre seconds
    info: SourceInfo | None = None
    frames: int = 0  # frames the model saw (after fps resampling)
    frame_duration: float = 0.0
    decode_seconds: float = 0.0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ClipModel(Protocol):
    """Anything that maps uint8 clips (B, T, H, W, 3) plus valid masks (B, T) to features (B, dim)."""

    def __call__(self, clips: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray] | None]: ...


@dataclass
class _Clip:
    video: int
    row: int
    pixels: np.ndarray  # (crops, T, H, W, 3) uint8
    valid: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (3,)


@dataclass
class _VideoEnd:
    video: int
    rows: int
    frames: int
    frame_duration: float
    info: SourceInfo
    decode_seconds: float


@dataclass
class _VideoFailed:
    video: int
    error: str


@dataclass
class _WorkerDone:
    worker: int


@dataclass
class _Pending:
    job: VideoJob
    started: float
    rows: dict[int, tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]] = field(default_factory=dict)
    end: _VideoEnd | None = None


def describe_error(error: BaseException) -> str:
    """One line naming the error class and its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def stack_clip(clip: ReadyClip) -> np.ndarray:
    """Build a (crops, T, H, W, 3) uint8 array from the clip's frame payloads (None = zero padding)."""
    first = next(frame for frame in clip.frames if frame is not None)
    pixels = np.zeros((first.shape[0], len(clip.frames), *first.shape[1:]), dtype=np.uint8)
    for t, frame in enumerate(clip.frames):
        if frame is not None:
            pixels[:, t] = frame
    return pixels


class Engine:
    """Runs videos through decoder threads and one batched model, yielding results per video."""

    def __init__(
        self,
        model: ClipModel,
        open_video: Callable[[VideoJob], FrameSource],
        transform: Callable[[np.ndarray], np.ndarray],
        window: WindowSpec,
        *,
        fps: float | None,
        batch_size: int = 4,
        queue_size: int = 16,
        decode_workers: int = 1,
        crop_reduce: str = "stack",
    ) -> None:
        self.model = model
        self.open_video = open_video
        self.transform = transform
        self.window = window
        self.fps = fps
        self.batch_size = batch_size
        self.queue_size = max(queue_size, batch_size)
        self.decode_workers = decode_workers
        self.crop_reduce = crop_reduce

    # --- decoding side (worker threads) --------------------------------------------------------

    def _put(self, clips: queue.Queue, item: Any, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                clips.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self, number: int, job: VideoJob, clips: queue.Queue, stop: threading.Event) -> None:
        started = time.perf_counter()
        rows = frames = 0
        try:
            with self.open_video(job) as source:
                frame_duration = 1.0 / (self.fps or source.info.native_fps or 30.0)
                stream = ClipStream(self.window, frame_duration)

                def emit(ready: list[ReadyClip]) -> bool:
                    nonlocal rows
                    for clip in ready:
                        item = _Clip(number, clip.index, stack_clip(clip), clip.valid, clip.timestamps)
                        if not self._put(clips, item, stop):
                            return False
                        rows += 1
                    return True

                for frame in source:
                    frames += 1
                    if not emit(stream.push(self.transform(frame.image), frame.time)):
                        return
                if frames == 0:
                    raise DecodeError(job.path, "zero decodable frames")
                if not emit(stream.finish()):
                    return
                info = source.info
            end = _VideoEnd(number, rows, frames, frame_duration, info, time.perf_counter() - started)
            self._put(clips, end, stop)
        except Exception as error:  # every failure is data: one record for this video
            self._put(clips, _VideoFailed(number, describe_error(error)), stop)

    def _worker(self, worker: int, jobs: Iterator[tuple[int, VideoJob]], lock: threading.Lock,
                clips: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                with lock:
                    nxt = next(jobs, None)
                if nxt is None:
                    break
                self._decode(nxt[0], nxt[1], clips, stop)
        finally:
            self._put(clips, _WorkerDone(worker), stop)

    # --- model side (the calling thread) -------------------------------------------------------

    def _run_batch(self, batch: list[_Clip], pending: dict[int, _Pending]) -> None:
        crops = batch[0].pixels.shape[0]
        pixels = np.concatenate([clip.pixels for clip in batch])  # (B*crops, T, H, W, 3)
        valid = np.repeat(np.stack([clip.valid for clip in batch]), crops, axis=0)
        features, logits = self.model(pixels, valid)
        features = features.reshape(len(batch), crops, *features.shape[1:])
        logits = {k: v.reshape(len(batch), crops, *v.shape[1:]) for k, v in logits.items()} if logits else None
        for i, clip in enumerate(batch):
            state = pending.get(clip.video)
            if state is None:  # the video failed meanwhile
                continue
            row_logits = {k: self._reduce(v[i]) for k, v in logits.items()} if logits else None
            state.rows[clip.row] = (self._reduce(features[i]), row_logits, clip.timestamps)

    def _reduce(self, per_crop: np.ndarray) -> np.ndarray:
        """(crops, dim) -> (dim,) for one crop or `mean`; else kept as (crops, dim)."""
        if per_crop.shape[0] == 1:
            return per_crop[0]
        return per_crop.mean(axis=0) if self.crop_reduce == "mean" else per_crop

    def _finish(self, state: _Pending) -> VideoResult:
        end = state.end
        assert end is not None
        order = sorted(state.rows)
        if order:
            features = np.stack([state.rows[r][0] for r in order])
            timestamps = np.stack([state.rows[r][2] for r in order])
            first_logits = state.rows[order[0]][1]
            logits = ({k: np.stack([state.rows[r][1][k] for r in order]) for k in first_logits}
                      if first_logits else None)
        else:
            features, timestamps, logits = None, np.zeros((0, 3)), None
        return VideoResult(state.job, features, logits, timestamps, end.info, end.frames, end.frame_duration,
                           end.decode_seconds, time.perf_counter() - state.started)

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[VideoResult]:
        """Yield one result per job, each as soon as its video is complete (not in list order)."""
        numbered = list(enumerate(jobs))
        if not numbered:
            return
        job_iter = iter(numbered)
        clips: queue.Queue = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()
        lock = threading.Lock()
        workers = [threading.Thread(target=self._worker, args=(w, job_iter, lock, clips, stop),
                                    name=f"decode-{w}", daemon=True)
                   for w in range(min(self.decode_workers, len(numbered)))]
        started: dict[int, float] = {}
        pending: dict[int, _Pending] = {}
        jobs_by_number = dict(numbered)
        alive = len(workers)
        batch: list[_Clip] = []

        def state_of(number: int) -> _Pending:
            if number not in pending:
                pending[number] = _Pending(jobs_by_number[number], started.setdefault(number, time.perf_counter()))
            return pending[number]

        for thread in workers:
            thread.start()
        try:
            while alive or batch or pending:
                try:
                    item = clips.get(timeout=None if not batch else 0.0) if alive or not clips.empty() else None
                except queue.Empty:
                    item = None
                if isinstance(item, _Clip):
                    state_of(item.video)
                    batch.append(item)
                elif isinstance(item, _VideoEnd):
                    state_of(item.video).end = item
                elif isinstance(item, _VideoFailed):
                    state = state_of(item.video)
                    del pending[item.video]
                    yield VideoResult(state.job, error=item.error, seconds=time.perf_counter() - state.started)
                elif isinstance(item, _WorkerDone):
                    alive -= 1
                if batch and (len(batch) >= self.batch_size or item is None or clips.empty()):
                    live = [clip for clip in batch if clip.video in pending]
                    batch = []
                    if live:
                        self._run_batch(live, pending)
                for number in [n for n, s in pending.items() if s.end and len(s.rows) == s.end.rows]:
                    yield self._finish(pending.pop(number))
                if item is None and not batch and not alive and pending:
                    # nothing more can arrive: videos still pending lost their end marker
                    for number in list(pending):
                        state = pending.pop(number)
                        yield VideoResult(state.job, error="internal: video ended without all rows",
                                          seconds=time.perf_counter() - state.started)
        finally:
            stop.set()
            for thread in workers:
                thread.join(timeout=5)


def count_clips(results: Iterable[VideoResult]) -> int:
    """Total rows over results (for throughput figures)."""
    return sum(len(r.features) for r in results if r.features is not None)


__all__ = ["ClipModel", "Engine", "VideoJob", "VideoResult", "count_clips", "describe_error", "stack_clip"]

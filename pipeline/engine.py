"""The streaming engine: clips of many videos batched through one model, rows reassembled per video.

`Engine.run(jobs)` yields one `VideoResult` per video as soon as its last row is back; clips of several
videos share a batch. The decoding happens in a `pipeline.decode` pool that lives for the whole
run; the model runs in the calling thread. Memory is bounded by the pool's slots (about `queue_size`
clips in all), never by video length. Nothing here knows of Hydra or output files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.decode import (
    DECODE_BACKENDS,
    START_METHODS,
    DecodedClip,
    DecodePool,
    DecodePoolError,
    DecodeSpec,
    PoolFailed,
    PoolItem,
    VideoDecoded,
    VideoFailed,
    VideoJob,
    open_pool,
)
from pipeline.hardware import usable_cpus  # unlike the model's threads, not limited by OMP_NUM_THREADS
from pipeline.io import FrameSource, SourceInfo
from pipeline.sampling import WindowSpec

log = logging.getLogger(__name__)

LINGER_S = 0.01  # how long a partial batch waits for one more clip before the model runs it

Row = tuple[np.ndarray, dict[str, np.ndarray] | None, np.ndarray]
"""One finished row: features, logits per head (or None), timestamps."""


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

    def __call__(
        self, clips: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]: ...


@dataclass
class _Pending:
    """A video with rows on their way: those back from the model, and its end once decoded."""

    job: VideoJob
    started: float
    rows: dict[int, Row] = field(default_factory=dict)
    end: VideoDecoded | None = None

    @property
    def complete(self) -> bool:
        return self.end is not None and len(self.rows) == self.end.rows


class Engine:
    """Runs videos through decode workers and one batched model, yielding results per video."""

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
        decode_backend: str = "process",
        decode_timeout: float | None = None,
        start_method: str = "fork",
    ) -> None:
        if decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"decode_backend must be one of {DECODE_BACKENDS} (got {decode_backend!r})")
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS} (got {start_method!r})")
        if decode_timeout is not None and not decode_timeout > 0:
            raise ValueError(f"decode_timeout must be > 0 seconds or None (got {decode_timeout})")
        self.model = model
        self.spec = DecodeSpec(open_video, transform, window, fps)
        self.window = window
        self.fps = fps
        self.batch_size = batch_size
        self.queue_size = max(queue_size, batch_size)
        self.decode_workers = self._clamp_workers(decode_workers)
        self.crop_reduce = crop_reduce
        self.decode_backend = decode_backend
        self.decode_timeout = decode_timeout
        self.start_method = start_method
        self.last_pool: DecodePool[Any] | None = None  # the latest run's pool (for tests and benchmarks)

    @staticmethod
    def _clamp_workers(decode_workers: int) -> int:
        """Decode workers within the CPUs this process may use; 0 means one per usable CPU."""
        cpus = usable_cpus()
        if decode_workers == 0:  # one per CPU this process may use (Slurm's cpus_per_task on a cluster)
            decode_workers = cpus
            log.info("hardware.decode_workers=0: %d decode workers, one per usable CPU", cpus)
        elif decode_workers > cpus:
            log.warning(
                "hardware.decode_workers=%d is more than the %d CPUs this process may use: using %d",
                decode_workers,
                cpus,
                cpus,
            )
        return max(1, min(decode_workers, cpus))

    # --- decoding side ---------------------------------------------------------------------------

    def _pool(self, jobs: int) -> DecodePool[Any]:
        workers = min(self.decode_workers, jobs)
        slots = max(2, -(-self.queue_size // workers))
        return open_pool(
            self.spec,
            backend=self.decode_backend,
            workers=workers,
            slots=slots,
            timeout=self.decode_timeout,
            start_method=self.start_method,
        )

    @staticmethod
    def _next_item(pool: DecodePool[Any], wait: bool) -> PoolItem | None:
        """The next decode item; with a partial batch (not `wait`), None after a short linger."""
        while True:
            item = pool.next_item(1.0 if wait else LINGER_S)
            if item is None:
                if not wait:
                    return None
                if pool.exhausted():
                    raise RuntimeError(
                        "internal: the decode pool stopped before every video was accounted for"
                    )
                continue
            if isinstance(item, PoolFailed):
                raise DecodePoolError(item.error)
            return item

    # --- model side --------------------------------------------------------------------------------

    def _run_batch(self, batch: list[DecodedClip], pending: dict[int, _Pending]) -> None:
        """Run the model on a batch of clips and file each row under its video."""
        live = [clip for clip in batch if clip.number in pending]  # a video may have failed meanwhile
        try:
            if live:
                crops = live[0].pixels.shape[0]
                pixels = np.concatenate([clip.pixels for clip in live])  # (B*crops, T, H, W, 3), a copy
                valid = np.repeat(np.stack([clip.valid for clip in live]), crops, axis=0)
        finally:
            for clip in batch:  # slots go back before the model runs: workers decode meanwhile
                clip.release()
        if not live:
            return
        features, logits = self.model(pixels, valid)
        features = features.reshape(len(live), crops, *features.shape[1:])
        logits = {k: v.reshape(len(live), crops, *v.shape[1:]) for k, v in logits.items()} if logits else None
        for i, clip in enumerate(live):
            row_logits = {k: self._reduce(v[i]) for k, v in logits.items()} if logits else None
            pending[clip.number].rows[clip.row] = (self._reduce(features[i]), row_logits, clip.timestamps)

    def _reduce(self, per_crop: np.ndarray) -> np.ndarray:
        """(crops, dim) -> (dim,) for one crop or `mean`; else kept as (crops, dim)."""
        if per_crop.shape[0] == 1:
            return per_crop[0]
        return per_crop.mean(axis=0) if self.crop_reduce == "mean" else per_crop

    @staticmethod
    def _finish(state: _Pending) -> VideoResult:
        """A complete video's rows, in order, as one result."""
        end = state.end
        assert end is not None
        order = sorted(state.rows)
        features: np.ndarray | None = None
        logits: dict[str, np.ndarray] | None = None
        timestamps = np.zeros((0, 3))
        if order:
            features = np.stack([state.rows[r][0] for r in order])
            timestamps = np.stack([state.rows[r][2] for r in order])
            heads = [head for r in order if (head := state.rows[r][1])]  # every row or none has logits
            if heads:
                logits = {k: np.stack([head[k] for head in heads]) for k in heads[0]}
        return VideoResult(
            state.job,
            features,
            logits,
            timestamps,
            end.info,
            end.frames,
            end.frame_duration,
            end.decode_seconds,
            time.perf_counter() - state.started,
        )

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[VideoResult]:
        """Yield one result per job, each as soon as its video is complete (not in list order)."""
        numbered = list(enumerate(jobs))
        if not numbered:
            return
        pool = self.last_pool = self._pool(len(numbered))
        jobs_by_number = dict(numbered)
        pending: dict[int, _Pending] = {}
        failed: set[int] = set()
        remaining = len(numbered)  # videos whose end (or failure) has not arrived
        batch: list[DecodedClip] = []

        def state_of(number: int) -> _Pending:
            if number not in pending:
                pending[number] = _Pending(jobs_by_number[number], time.perf_counter())
            return pending[number]

        pool.start(numbered)
        try:
            while remaining or batch:
                item = self._next_item(pool, wait=not batch)
                if isinstance(item, DecodedClip):
                    if item.number in failed:
                        item.release()
                    else:
                        state_of(item.number)
                        batch.append(item)
                elif isinstance(item, VideoDecoded):
                    remaining -= 1
                    state_of(item.number).end = item
                elif isinstance(item, VideoFailed):
                    remaining -= 1
                    failed.add(item.number)
                    state = pending.pop(item.number, None) or _Pending(
                        jobs_by_number[item.number], time.perf_counter()
                    )
                    yield VideoResult(
                        state.job, error=item.error, seconds=time.perf_counter() - state.started
                    )
                if batch and (len(batch) >= self.batch_size or item is None):
                    current, batch = batch, []
                    self._run_batch(current, pending)
                for number in [n for n, s in pending.items() if s.complete]:
                    yield self._finish(pending.pop(number))
            for number in list(pending):  # cannot happen: every end follows its video's clips
                state = pending.pop(number)
                yield VideoResult(
                    state.job,
                    error="internal: video ended without all rows",
                    seconds=time.perf_counter() - state.started,
                )
        finally:
            for clip in batch:
                clip.release()
            pool.close()


def count_clips(results: Iterable[VideoResult]) -> int:
    """Total rows over results (for throughput figures)."""
    return sum(len(r.features) for r in results if r.features is not None)


__all__ = ["ClipModel", "Engine", "VideoJob", "VideoResult", "count_clips"]

"""Measuring primitives: medians of repeated timings, CPU seconds (ours and the machine's), memory (RSS,
PSS of a process and its decode workers), random clips."""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine import Engine

MB = 1024 * 1024


def median_rate(count: float, seconds: list[float]) -> float:
    """count per second at the median time."""
    return count / statistics.median(seconds)


def time_call(function: Any, *args: Any) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def random_clips(batch: int, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (batch, num_frames, size, size, 3), dtype=np.uint8),
        np.ones((batch, num_frames), dtype=bool),
    )


class CpuMeter:
    """CPU seconds over a span: this process plus its finished children, and the whole machine.

    `foreign_share` is the fraction of the machine's CPU time others used meanwhile: a measurement taken
    while other jobs ran is flagged instead of silently trusted.
    """

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
        return ours, (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz

    @property
    def ours(self) -> float:
        return self.end[0] - self.start[0]

    @property
    def foreign_share(self) -> float:
        busy, total = self.end[1] - self.start[1], self.end[2] - self.start[2]
        return max(0.0, (busy - self.ours) / total) if total > 0 else 0.0


class MemorySampler:
    """Samples this process's RSS, the PSS of it plus its decode workers, and the largest decode worker's
    PSS (its share of the clip slots included) while a run goes on."""

    def __init__(self, engine: Engine, every_s: float = 1.0) -> None:
        self.engine, self.every_s = engine, every_s
        self.peak_rss = self.peak_pss = self.peak_worker_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every_s):
                return

    def sample(self) -> None:
        """Take one sample now (also every `every_s` while the sampler runs)."""
        pool = self.engine.last_pool
        workers = list(pool.workers.values()) if pool else []
        pids = [w.handle.pid for w in workers if hasattr(w.handle, "pid")]
        self.peak_rss = max(self.peak_rss, proc_kb(os.getpid(), "VmRSS") * 1024)
        worker_pss = [pss_bytes(pid) for pid in pids]
        self.peak_pss = max(self.peak_pss, pss_bytes(os.getpid()) + sum(worker_pss))
        self.peak_worker_pss = max(self.peak_worker_pss, *worker_pss, 0)


def proc_kb(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process (shared pages split among their users); 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

"""How launched jobs end: one outcome per shard (its result, or why not, with its logs), the launch's result,
the error a launch stops with, and the progress line over shards."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths, pickle_load

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20


class LaunchError(PipelineError, RuntimeError):
    """A launch that cannot go on (no sbatch, a rejected submission, failed shards): one clear line."""


def name_of(value: Enum | str) -> str:
    """The plain string of an enum member or a string."""
    return str(value.value if isinstance(value, Enum) else value)


def one_line(text: str) -> str:
    """Join the non-empty lines of a (multi-line) message into one line."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


# --- outcomes -----------------------------------------------------------------------------------


@dataclass
class ShardOutcome:
    """How one shard's job ended: its result, or why not, with the paths of its logs."""

    shard: int
    job_id: str
    state: str
    ok: bool
    result: Any = None
    error: str | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    stderr_tail: str = ""

    def describe(self) -> str:
        """A multi-line failure report: shard, job id, state, error, log paths and the stderr tail."""
        lines = [
            f"shard {self.shard} FAILED (job {self.job_id}, state {self.state}): {self.error}",
            f"  stdout: {self.stdout}",
            f"  stderr: {self.stderr}",
        ]
        if self.stderr_tail:
            lines.append(f"  last {STDERR_TAIL_LINES} lines of stderr:")
            lines.extend(f"    {line}" for line in self.stderr_tail.splitlines())
        return "\n".join(lines)


@dataclass
class LaunchResult:
    """Submitted jobs and, when waited for, one outcome per shard (in shard order)."""

    launcher: str
    folder: Path
    job_ids: dict[int, str] = field(default_factory=dict)
    outcomes: list[ShardOutcome] = field(default_factory=list)
    consolidate_job_id: str | None = None
    waited: bool = True

    @property
    def array_id(self) -> str | None:
        """The Slurm array (or single job) id of the shards; None for other launchers or no jobs."""
        if self.launcher != "slurm" or not self.job_ids:
            return None
        return next(iter(self.job_ids.values())).split("_")[0]

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def results(self) -> dict[int, Any]:
        """Shard index -> the run function's return value, for the shards that finished."""
        return {o.shard: o.result for o in self.outcomes if o.ok}


def tail_lines(path: Path | None, count: int = STDERR_TAIL_LINES) -> str:
    """The last `count` lines of a text file ('' when it does not exist)."""
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        data = f.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-count:])


def collect_outcome(shard: int, job_id: str, folder: Path, state: str, grace_s: float = 0.0) -> ShardOutcome:
    """Read an ended job's result pickle (waiting up to `grace_s` for it to appear) into a ShardOutcome."""
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    deadline = time.monotonic() + grace_s
    while not paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    outcome = ShardOutcome(shard, job_id, state, ok=False, stdout=paths.stdout, stderr=paths.stderr)
    if paths.result_pickle.exists():
        try:
            kind, payload = pickle_load(paths.result_pickle)
        except Exception as error:  # noqa: BLE001 - an unreadable result is a failed shard, not a crash
            outcome.error = f"unreadable result {paths.result_pickle}: {error}"
        else:
            if kind == "success":
                outcome.ok, outcome.result = True, payload
            else:
                lines = [line for line in str(payload).splitlines() if line.strip()]
                outcome.error = lines[-1].strip() if lines else "the job raised an exception"
    else:
        outcome.error = f"the job ended ({state}) without a result"
    if not outcome.ok:
        outcome.stderr_tail = tail_lines(paths.stderr)
    return outcome


def report_failures(outcomes: Sequence[ShardOutcome]) -> None:
    """Log every failed shard with its job id, logs and stderr tail."""
    for outcome in outcomes:
        if not outcome.ok:
            log.error("%s", outcome.describe())


# --- progress -----------------------------------------------------------------------------------


class ShardProgress:
    """finished/running/pending/failed over shards: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, total: int, every_s: float = 60.0) -> None:
        self.total, self.every_s = total, every_s
        self.counts = {"finished": 0, "running": 0, "pending": total, "failed": 0}
        self.last_log = float("-inf")
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="shard", dynamic_ncols=True)

    def update(self, finished: int, running: int, pending: int, failed: int) -> None:
        counts = {"finished": finished, "running": running, "pending": pending, "failed": failed}
        changed = counts != self.counts
        done_before = self.counts["finished"] + self.counts["failed"]
        self.counts = counts
        if self.bar is not None:
            self.bar.set_postfix(running=running, pending=pending, failed=failed, refresh=False)
            self.bar.update(finished + failed - done_before)
        elif changed or time.monotonic() - self.last_log >= self.every_s:
            self.last_log = time.monotonic()
            log.info(
                "shards: %d/%d finished, %d running, %d pending, %d failed",
                finished,
                self.total,
                running,
                pending,
                failed,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

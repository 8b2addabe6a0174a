"""Small helpers shared by the Slurm tests (polling with a deadline, sacct look-ups)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable

import pytest


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.5) -> None:
    """Poll `predicate` until it is true; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def sacct_state(job_id: str) -> str:
    """The accounting state of one job (or array task), e.g. COMPLETED, CANCELLED; '' if unknown yet."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid == job_id:
            return state.split()[0] if state else ""
    return ""


def wait_for_sacct(job_ids: str | Iterable[str], state: str, timeout_s: float = 60) -> None:
    """Poll sacct until every job reads `state` (accounting lags behind the jobs); fail naming the last states."""
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    last: dict[str, str] = {}

    def reached() -> bool:
        last.update({job_id: sacct_state(job_id) for job_id in ids})
        return all(last[job_id] == state for job_id in ids)

    deadline = time.monotonic() + timeout_s
    while not reached():
        if time.monotonic() > deadline:
            pytest.fail(f"sacct did not record {state} within {timeout_s:.0f} s; last states: {last}")
        time.sleep(1.0)

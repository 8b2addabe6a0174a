"""Small helpers shared by the Slurm tests (polling with a deadline, sacct look-ups)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

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
